"""Training, evaluation and checkpoints of CEN models (segmentation first)."""
