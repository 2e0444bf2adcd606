"""Modality-aware layers: ``M`` private norms in one module (optionally a fusion point), private convs."""

from cen.core.fusions import Fusion
from cen.core.layer_norms import ModalityGroupNorm, ModalityLayerNorm, ModalityLayerNorm2d
from cen.core.norms import (
    ModalityBatchNorm1d,
    ModalityBatchNorm2d,
    ModalityInstanceNorm2d,
)
from cen.core.token_fusion import TokenFusion
from cen.core.twins import ModalityBatchNormAct2d, ModalityGroupNormAct, ModalityLayerNormAct, ModalityLayerNormAct2d
from cen.core.unshared import ModalityConv2d, ModalityLinear

__all__ = [
    "Fusion",
    "ModalityBatchNorm1d",
    "ModalityBatchNorm2d",
    "ModalityBatchNormAct2d",
    "ModalityConv2d",
    "ModalityGroupNorm",
    "ModalityGroupNormAct",
    "ModalityInstanceNorm2d",
    "ModalityLayerNorm",
    "ModalityLayerNorm2d",
    "ModalityLayerNormAct",
    "ModalityLayerNormAct2d",
    "ModalityLinear",
    "TokenFusion",
]
