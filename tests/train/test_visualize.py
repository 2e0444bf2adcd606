"""Palette, colorize and the input | depth | ground truth | prediction grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cen.tasks.segmentation.visualize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    colorize,
    palette,
    prediction_grid,
    save_prediction_grid,
)


def test_palette_is_fixed_distinct_and_255_is_black():
    p = palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    assert p[255].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in p[:255]}) == 255
    assert not (p[:255] == 0).all(1).any()
    assert p[:3].tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert np.array_equal(palette(40), p[:40])


def test_colorize_maps_labels_and_ignore():
    lab = torch.tensor([[0, 1], [2, 255]])
    out = colorize(lab)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == palette()[0].tolist()
    assert out[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="label 300 has no colour"):
        colorize(np.array([[300]]))
    with pytest.raises(TypeError, match="integers"):
        colorize(np.zeros((2, 2), np.float32))


def test_grid_undoes_normalisation_and_writes_one_png(tmp_path):
    h, w = 6, 5
    raw = torch.rand(3, h, w)
    rgb = (raw - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    depth = torch.linspace(0.1, 1.0, h * w).view(1, h, w).expand(3, h, w).clone()
    depth[:, 0, 0] = 0  # a hole: drawn black
    mask = torch.randint(0, 5, (h, w))
    pred = torch.randint(0, 5, (h, w))
    path = save_prediction_grid(tmp_path / "sub" / "grid.png", rgb, depth, mask, pred)
    img = np.asarray(Image.open(path))
    assert img.shape == (h, 4 * w + 3 * 4, 3)
    assert np.abs(img[:, :w].astype(int) - (raw.permute(1, 2, 0).numpy() * 255).round()).max() <= 1
    assert img[0, w + 4].tolist() == [0, 0, 0]
    assert np.array_equal(img[:, 2 * (w + 4) : 2 * (w + 4) + w], colorize(mask))
    assert np.array_equal(img[:, 3 * (w + 4) :], colorize(pred))


def test_grid_accepts_scores_and_skips_missing_panels():
    scores = torch.randn(5, 2, 2)
    grid = prediction_grid(None, None, torch.zeros(4, 4, dtype=torch.long), scores)
    assert grid.shape == (4, 4 + 4 + 4, 3)
    with pytest.raises(ValueError, match="differ in size"):
        prediction_grid(None, None, torch.zeros(4, 4, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="nothing to draw"):
        prediction_grid()
