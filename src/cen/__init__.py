"""cen: multimodal fusion by channel exchanging (Wang et al., NeurIPS 2020).

Modalities travel stacked in the batch, sample-major: ``(B*M, C, H, W)`` with
row ``b*M + m`` holding modality ``m`` of sample ``b``. Shared layers run once
on that batch; private norms are one norm over the free ``(B, M*C, H, W)``
view; channel exchange is one ``torch.where``.
"""

__version__ = "0.1.0"

from cen import nn
from cen.core.context import present_modalities
from cen.core.convert import convert, exchange_point, register_exchange_point
from cen.core.ensemble import Ensemble
from cen.core.fusions import fusion_names, register_fusion
from cen.core.multimodal import MultiModal
from cen.core.norms import convert_sync_batchnorm
from cen.core.sparsity import sparsity_loss, sparsity_shrink_
from cen.core.spec import FusionSpec
from cen.core.stacking import stack, unstack
from cen.core.stats import exchange_stats

__all__ = [
    "Ensemble",
    "FusionSpec",
    "MultiModal",
    "__version__",
    "convert",
    "convert_sync_batchnorm",
    "exchange_point",
    "exchange_stats",
    "fusion_names",
    "load_model",
    "nn",
    "present_modalities",
    "register_exchange_point",
    "register_fusion",
    "sparsity_loss",
    "sparsity_shrink_",
    "stack",
    "unstack",
]


def __getattr__(name: str):
    # ``cen.load_model`` imports the training engine (configs, tasks) only when first used.
    if name == "load_model":
        from cen.train.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'cen' has no attribute {name!r}")
