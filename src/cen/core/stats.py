"""What the fusion points do now (the paper's Figure A), with one definition of "exchanged".

A channel ``c`` of modality ``m`` at a fusion point is **exchanged** when the strategy replaces
it at this moment: for ``exchange``, when ``|gamma[m, c]| < theta`` (Eq. 6), whether or not the
sparsity penalty acts on it; for ``fixed`` / ``random``, when it is in the replaced set;
``discard`` counts the channels it zeroes. :func:`exchange_stats` gives the share of each
modality's channels exchanged; :func:`exchange_split` splits it by where the channel lies: in
the modality's **penalised** group (the channels the disjoint ℓ1 pushes to zero for that
modality, :func:`cen.core.groups.disjoint_groups`) or outside it (**unpenalised**: a γ that fell
under θ without the penalty pushing it). The two parts add up to :func:`exchange_stats`.
"""

from __future__ import annotations

from torch import nn

from cen.core.groups import disjoint_groups
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


def exchange_split(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """Per fusion point that replaces whole channels, ``{"penalised": [...], "unpenalised": [...]}``: the share of
    each modality's channels that are exchanged and lie in its penalised group, and those outside it (see the
    module docstring). Their sum per modality is :func:`exchange_stats`'s fraction."""
    out = {}
    for name, norm in fusion_points(model):
        replaced = norm.fusion.replaced(norm.gamma, norm.threshold)
        if replaced is None or norm.num_modalities < 2:
            continue
        groups = disjoint_groups(norm.num_modalities, norm.num_features, replaced.device)
        channels = norm.num_features
        out[name] = {
            "penalised": ((replaced & groups).sum(dim=1).float() / channels).tolist(),
            "unpenalised": ((replaced & ~groups).sum(dim=1).float() / channels).tolist(),
        }
    return out
