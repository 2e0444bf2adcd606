"""Modality-aware layers: ``M`` private norms in one module, with optional channel exchange."""

from cen.core.norms import ModalityBatchNorm1d, ModalityBatchNorm2d, ModalityInstanceNorm2d

__all__ = ["ModalityBatchNorm1d", "ModalityBatchNorm2d", "ModalityInstanceNorm2d"]
