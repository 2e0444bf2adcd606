"""Pictures of predictions: a class palette, colourised label maps, and comparison grids.

Input panels are drawn by the modality's kind (:mod:`cen.data.kinds`): images and HHA
un-normalised with the ImageNet statistics, depth through a colour map, normals as
``(n + 1) / 2``.

The palette is the PASCAL VOC bit-interleaved palette shifted by one: class
``c`` (0..254) gets VOC colour ``c + 1``, so the 255 colours are distinct and
none is black; label 255 (the ignore value) is black.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cen.data.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "colorize",
    "input_panel",
    "palette",
    "prediction_grid",
    "save_prediction_grid",
]

_GAP = 4  # white pixels between panels


def _voc_colour(index: int) -> tuple[int, int, int]:
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((index >> 0) & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


def palette(num_colours: int = 256) -> np.ndarray:
    """``(num_colours, 3)`` uint8 colours; entry 255 (if present) is black, the others distinct and not black."""
    if not 1 <= num_colours <= 256:
        raise ValueError(f"the palette has 1 to 256 colours, got {num_colours}")
    table = np.array([_voc_colour(c + 1) for c in range(255)] + [(0, 0, 0)], dtype=np.uint8)
    return table[:num_colours].copy()


_PALETTE = palette()


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(labels, *, ignore_index: int | None = IGNORE_INDEX, colours: np.ndarray | None = None) -> np.ndarray:
    """Label map ``(H, W)`` (Tensor or array) -> ``(H, W, 3)`` uint8 RGB; ``ignore_index`` is black."""
    lab = _to_numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"colorize takes one (H, W) label map, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    table = _PALETTE if colours is None else np.asarray(colours, dtype=np.uint8)
    lab = lab.astype(np.int64)
    ignored = lab == ignore_index if ignore_index is not None else np.zeros(lab.shape, bool)
    bad = ~ignored & ((lab < 0) | (lab >= len(table)))
    if bad.any():
        raise ValueError(f"label {int(lab[bad][0])} has no colour; the palette has {len(table)} (0..{len(table) - 1})")
    out = table[np.where(ignored, 0, lab)]
    out[ignored] = 0
    return out


def _rgb_panel(rgb, mean, std) -> np.ndarray:
    x = _to_numpy(rgb).astype(np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"rgb must be a normalised (3, H, W) image, got shape {x.shape}")
    x = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def _depth_panel(depth, cmap: str) -> np.ndarray:
    import matplotlib

    d = _to_numpy(depth).astype(np.float32)
    if d.ndim == 3:
        d = d[0]  # replicated channels: any one will do
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), (1, H, W) or (3, H, W), got shape {_to_numpy(depth).shape}")
    valid = np.isfinite(d) & (d > 0)  # 0 = no measurement
    out = np.zeros(d.shape + (3,), np.uint8)
    if valid.any():
        lo, hi = float(d[valid].min()), float(d[valid].max())
        norm = (d - lo) / (hi - lo) if hi > lo else np.full_like(d, 0.5)
        colours = matplotlib.colormaps[cmap](np.clip(norm, 0, 1))[..., :3]
        out[valid] = (colours[valid] * 255 + 0.5).astype(np.uint8)
    return out


def _normal_panel(normal) -> np.ndarray:
    n = _to_numpy(normal).astype(np.float32)
    if n.ndim != 3 or n.shape[0] != 3:
        raise ValueError(f"a normal map must be (3, H, W), got shape {n.shape}")
    return (np.clip((n + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def input_panel(
    x,
    kind: str,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    depth_cmap: str = "viridis",
) -> np.ndarray:
    """One input ``(C, H, W)`` as it is fed to the model -> ``(H, W, 3)`` uint8, by its kind:
    ``image`` / ``hha`` un-normalised with ``mean``/``std`` (grey images are 3 equal channels),
    ``depth`` through ``depth_cmap`` stretched over the valid range (holes black),
    ``normal`` as ``(n + 1) / 2``; the other kinds as :func:`cen.data.kinds.panel_of` says
    (thermal and event as their [0, 1] values, LiDAR like depth)."""
    from cen.data.kinds import panel_of

    panel = panel_of(kind)
    if panel == "picture":
        return _rgb_panel(x, mean, std)
    if panel == "unit":
        return _rgb_panel(x, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if panel == "range":
        return _depth_panel(x, depth_cmap)
    return _normal_panel(x)


def prediction_grid(
    rgb=None,
    depth=None,
    mask=None,
    pred=None,
    *,
    inputs: Mapping | None = None,
    kinds: Mapping[str, str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    depth_cmap: str = "viridis",
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """``input | depth | ground truth | prediction`` side by side as an ``(H, W', 3)`` uint8 array.

    ``rgb`` is ImageNet-normalised ``(3, H, W)`` (un-normalised for display);
    ``depth`` is shown through a matplotlib colour map (holes, i.e. 0, black);
    ``inputs`` (``{modality: (C, H, W)}``, any number) adds one panel per modality, in
    its order, drawn by its kind (``kinds``, else inferred from the name; see
    :func:`input_panel`) after ``rgb`` and ``depth``;
    ``mask`` and ``pred`` are label maps (``pred`` may also be ``(K, h, w)``
    scores, arg-maxed after a bilinear resize). Panels given as ``None`` are
    left out; all panels must have the same size.
    """
    from cen.data.kinds import infer_kind

    panels: list[tuple[str, np.ndarray]] = []
    if rgb is not None:
        panels.append(("rgb", _rgb_panel(rgb, mean, std)))
    if depth is not None:
        panels.append(("depth", _depth_panel(depth, depth_cmap)))
    for name, x in (inputs or {}).items():
        kind = (kinds or {}).get(name) or infer_kind(name)
        panels.append((name, input_panel(x, kind, mean=mean, std=std, depth_cmap=depth_cmap)))
    if mask is not None:
        panels.append(("mask", colorize(mask, ignore_index=ignore_index)))
    if pred is not None:
        if (
            isinstance(pred, Tensor)
            and pred.is_floating_point()
            or isinstance(pred, np.ndarray)
            and pred.dtype.kind == "f"
        ):
            p = torch.as_tensor(pred).float()
            if p.ndim != 3:
                raise ValueError(f"prediction scores must be (K, h, w), got shape {tuple(p.shape)}")
            if panels:
                size = panels[0][1].shape[:2]
                p = torch.nn.functional.interpolate(p[None], size=size, mode="bilinear", align_corners=False)[0]
            pred = p.argmax(0)
        panels.append(("pred", colorize(pred, ignore_index=None)))
    if not panels:
        raise ValueError("nothing to draw: rgb, depth, inputs, mask and pred are all None")
    sizes = {name: img.shape[:2] for name, img in panels}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the panels differ in size (H, W): {sizes}")
    h = panels[0][1].shape[0]
    gap = np.full((h, _GAP, 3), 255, np.uint8)
    row = []
    for k, (_, img) in enumerate(panels):
        if k:
            row.append(gap)
        row.append(img)
    return np.concatenate(row, axis=1)


def save_prediction_grid(path: str | Path, rgb=None, depth=None, mask=None, pred=None, **kwargs) -> Path:
    """Write :func:`prediction_grid` to ``path`` as a PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(prediction_grid(rgb, depth, mask, pred, **kwargs)).save(path)
    return path
