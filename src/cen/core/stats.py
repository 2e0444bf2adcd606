"""What the fusion points do now (the paper's Figure A)."""

from __future__ import annotations

from torch import nn

from cen.core.sparsity import fusion_points


def exchange_stats(model: nn.Module) -> dict[str, list[float]]:
    """For every fusion point that gives channels up, by qualified name, the fraction each modality gives up.

    Returns ``{name: [fraction of modality 0, ..., fraction of modality M-1]}``,
    fractions in ``[0, 1]``: the channels replaced now (``exchange``: ``|gamma| < theta``;
    ``fixed``; ``random``: the evaluation set) or zeroed (``discard``). Strategies
    without such channels (``sum``, ``gated_sum``, ``conditional_norm``, ``none``) and
    norms of a single modality are not listed.
    """
    stats = {}
    for name, norm in fusion_points(model):
        replaced = norm.fusion.replaced(norm.gamma, norm.threshold)
        if replaced is not None and norm.num_modalities > 1:
            stats[name] = replaced.float().mean(dim=1).tolist()
    return stats
