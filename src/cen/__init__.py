"""cen: multimodal fusion by channel exchanging (Wang et al., NeurIPS 2020).

Modalities travel stacked in the batch, sample-major: ``(B*M, C, H, W)`` with
row ``b*M + m`` holding modality ``m`` of sample ``b``. Shared layers run once
on that batch; private norms are one norm over the free ``(B, M*C, H, W)``
view; channel exchange is one ``torch.where``.
"""

__version__ = "0.1.0"

from cen import nn
from cen.core.convert import convert
from cen.core.ensemble import Ensemble
from cen.core.multimodal import MultiModal
from cen.core.norms import convert_sync_batchnorm
from cen.core.sparsity import sparsity_loss
from cen.core.stacking import stack, unstack
from cen.core.stats import exchange_stats

__all__ = [
    "Ensemble",
    "MultiModal",
    "__version__",
    "convert",
    "convert_sync_batchnorm",
    "exchange_stats",
    "nn",
    "sparsity_loss",
    "stack",
    "unstack",
]
