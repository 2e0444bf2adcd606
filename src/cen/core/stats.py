"""What the exchanging norms do now (the paper's Figure A)."""

from __future__ import annotations

from torch import nn

from cen.core.sparsity import exchanging_norms


def exchange_stats(model: nn.Module) -> dict[str, list[float]]:
    """For every exchanging norm, by qualified name, the fraction of channels each modality replaces.

    Returns ``{name: [fraction of modality 0, ..., fraction of modality M-1]}``,
    fractions in ``[0, 1]``.
    """
    return {
        name: norm.exchange_mask().float().mean(dim=1).tolist()
        for name, norm in exchanging_norms(model)
    }
