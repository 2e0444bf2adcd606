"""Multimodal image-to-image translation (the paper's second task)."""
