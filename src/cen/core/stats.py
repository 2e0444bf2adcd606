"""What the fusion points do now (the paper's Figure A)."""

from __future__ import annotations

from torch import nn

from cen.core.sparsity import fusion_points


def exchange_stats(model: nn.Module) -> dict[str, list[float]]:
    """For every fusion point that gives channels up, by qualified name, the fraction each modality gives up.

    Returns ``{name: [fraction of modality 0, ..., fraction of modality M-1]}``,
    fractions in ``[0, 1]``: the channels replaced now (``exchange``: ``|gamma| < theta``;
    ``fixed``; ``random``: the evaluation set) or zeroed (``discard``); for ``token``, the
    share of the modality's tokens replaced in the latest forward pass (over the batch
    and the positions). Strategies that give nothing up (``sum``, ``gated_sum``,
    ``conditional_norm``, ``none``) and norms of a single modality are not listed.
    """
    stats = {}
    for name, norm in fusion_points(model):
        share = norm.fusion.replaced_share(norm.gamma, norm.threshold)
        if share is not None and norm.num_modalities > 1:
            stats[name] = share.tolist()
    return stats
