"""The report's matplotlib figures, from plain data (no run folder, no model).

Every function returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global figure state; the Agg canvas renders it), saved by
:func:`save`. Shares are fractions in ``[0, 1]``; steps are optimiser steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

NOT_EXCHANGED = "not exchanged"
#: Suffix of a modality's bar part of exchanged channels outside its penalised group.
UNPENALISED = " (unpenalised)"
_GREY = "#d9d9d9"


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def short_names(layers: Sequence[str]) -> list[str]:
    """Layer names without their common dotted prefix (``encoder.layer1.0.bn2`` -> ``layer1.0.bn2``)."""
    if len(layers) < 2:
        return [str(n) for n in layers]
    parts = [n.split(".") for n in layers]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def stacked_shares(
    layers: Sequence[str],
    fractions: Mapping[str, Mapping[str, float]],
    modalities: Sequence[str],
    unpenalised: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Figure A's bar heights: of a layer's ``M*C`` (modality, channel) slots, the share each modality exchanges.

    ``fractions[layer][modality]`` is the fraction of that modality's ``C`` channels it
    replaces (:func:`cen.exchange_stats`); the share of all slots is that over ``M``, and
    ``not exchanged`` is the rest. With ``unpenalised`` (the part of each fraction outside the
    modality's penalised group, :func:`cen.core.stats.exchange_split`) that part gets its own
    entry ``"<modality> (unpenalised)"`` and ``"<modality>"`` keeps the penalised part.
    """
    num = max(len(modalities), 1)
    out = {}
    for layer in layers:
        shares = {}
        for m in modalities:
            total = float(fractions.get(layer, {}).get(m, 0.0))
            if unpenalised is None:
                shares[m] = total / num
                continue
            outside = min(total, float(unpenalised.get(layer, {}).get(m, 0.0)))
            shares[m] = (total - outside) / num
            shares[m + UNPENALISED] = outside / num
        out[layer] = {NOT_EXCHANGED: max(0.0, 1.0 - sum(shares.values())), **shares}
    return out


def _bars(ax, layers, shares, modalities, *, labels=True) -> None:
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    keys = [(NOT_EXCHANGED, _GREY, None)]
    for m, colour in zip(modalities, _colours(len(modalities))):
        keys.append((m, colour, None))
        if any(m + UNPENALISED in shares[layer] for layer in layers):
            keys.append((m + UNPENALISED, colour, "///"))
    for key, colour, hatch in keys:
        h = np.array([shares[layer].get(key, 0.0) for layer in layers])
        label = key if key == NOT_EXCHANGED else f"exchanged: {key}"
        ax.bar(x, h, bottom=bottom, color=colour, width=0.85, label=label, hatch=hatch, alpha=0.55 if hatch else 1.0)
        bottom += h
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    if labels:
        ax.set_xticks(x, short_names(layers), rotation=90, fontsize=7 if len(layers) > 12 else 8)
    else:
        ax.set_xticks([])


def figure_a(
    layers: Sequence[str], shares: Mapping[str, Mapping[str, float]], modalities: Sequence[str], title: str
) -> Figure:
    """Stacked bars per exchanging layer, bottom (left) to top (right): not exchanged / exchanged by each modality
    (hatched: channels exchanged outside the modality's penalised group, when ``shares`` has them)."""
    fig = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2.5), 4.2))
    ax = fig.subplots()
    _bars(ax, layers, shares, modalities)
    ax.set_ylabel("share of the layer's modality-channels")
    ax.set_xlabel("exchanging layer (bottom → top)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def figure_a_over_time(
    frames: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]],
    layers: Sequence[str],
    modalities: Sequence[str],
    columns: int = 4,
) -> Figure:
    """Small multiples of :func:`figure_a`, one panel per ``(label, shares)`` frame (e.g. per evaluation)."""
    rows = math.ceil(len(frames) / columns)
    cols = min(columns, len(frames))
    fig = Figure(figsize=(3.0 * cols, 2.2 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax, (label, shares) in zip(axes, frames):
        _bars(ax, layers, shares, modalities, labels=False)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(frames) :]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02)
    )
    fig.supxlabel("exchanging layer, bottom → top", fontsize=8, y=0.04)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    ylabel: str,
    xlabel: str = "step",
    percent: bool = False,
    ax=None,
    styles: Mapping[str, str] | None = None,
) -> Figure:
    """One line per ``name: (x, y)``; ``y`` values of None are gaps. With ``percent`` the y axis shows %."""
    fig = None
    if ax is None:
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.subplots()
    values = []
    for (name, (x, y)), colour in zip(series.items(), _colours(len(series))):
        yv = np.array([np.nan if v is None else v for v in y], dtype=float) * (100 if percent else 1)
        values.append(yv[np.isfinite(yv)])
        ax.plot(
            list(x), yv, (styles or {}).get(name, "-"), color=colour, label=name, marker="." if len(x) < 30 else None
        )
    every = np.concatenate(values) if values else np.array([])
    if every.size and every.min() > 0 and every.max() / every.min() > 100:
        ax.set_yscale("log")  # e.g. losses of runs with very different l1 terms on one panel
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, frameon=False)
    return fig if fig is not None else ax.figure


def panels(
    groups: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    *,
    ylabel: str = "",
    percent_keys: Sequence[str] = (),
    columns: int = 3,
    styles: Mapping[str, str] | None = None,
) -> Figure:
    """Side-by-side :func:`lines` panels, one per ``title: series``."""
    cols = min(columns, max(len(groups), 1))
    rows = math.ceil(max(len(groups), 1) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (title, series) in zip(axes, groups.items()):
        lines(series, title=title, ylabel=ylabel or title, percent=title in percent_keys, ax=ax, styles=styles)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def gamma_histograms(
    gammas: Mapping[str, np.ndarray],
    penalised: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    modalities: Sequence[str],
    title: str,
) -> Figure:
    """Per layer (a panel each, bottom to top), histograms of ``|gamma|`` per modality with ``theta`` marked.

    ``gammas[layer]`` is ``(M, C)``; ``penalised[layer]`` a bool ``(M, C)``: penalised scales are
    drawn filled, the others as outlines.
    """
    layers = list(gammas)
    fig = Figure(figsize=(3.4 * max(len(layers), 1), 3.2))
    axes = np.atleast_1d(fig.subplots(1, max(len(layers), 1), squeeze=False)).ravel()
    for ax, layer, name in zip(axes, layers, short_names(layers)):
        g = np.abs(np.asarray(gammas[layer], dtype=float))
        top = max(float(g.max()) if g.size else 1.0, 2 * thresholds[layer])
        bins = np.linspace(0.0, top * 1.02, 41)
        for m, colour in zip(range(g.shape[0]), _colours(g.shape[0])):
            pen = np.asarray(penalised[layer][m], dtype=bool)
            label = modalities[m] if m < len(modalities) else f"m{m}"
            if pen.any():
                ax.hist(g[m][pen], bins=bins, color=colour, alpha=0.55, label=f"{label} (penalised)")
            if (~pen).any():
                ax.hist(g[m][~pen], bins=bins, color=colour, histtype="step", linewidth=1.2, label=f"{label} (free)")
        ax.axvline(thresholds[layer], color="black", linestyle="--", linewidth=1, label=f"θ = {thresholds[layer]:g}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("|γ|")
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("channels")
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def heatmap(
    matrix: Sequence[Sequence[float | None]], rows: Sequence[str], columns: Sequence[str], *, title: str
) -> Figure:
    """Values in ``[0, 1]`` as a colour map with the % written in each cell; None is blank (class left out)."""
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig = Figure(figsize=(max(4.0, 0.55 * len(columns) + 2.0), 0.45 * len(rows) + 1.6))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(data * 100), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if data.size <= 600:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.isnan(data[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{100 * data[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if data[i, j] < 0.6 else "black",
                    )
    fig.colorbar(im, ax=ax, label="%")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
