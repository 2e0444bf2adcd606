"""Modality-aware layers: ``M`` private norms in one module (optionally a fusion point), private convs."""

from cen.core.fusions import Fusion
from cen.core.norms import (
    ModalityBatchNorm1d,
    ModalityBatchNorm2d,
    ModalityInstanceNorm2d,
)
from cen.core.unshared import ModalityConv2d, ModalityLinear

__all__ = [
    "Fusion",
    "ModalityBatchNorm1d",
    "ModalityBatchNorm2d",
    "ModalityConv2d",
    "ModalityInstanceNorm2d",
    "ModalityLinear",
]
