"""Tiny data sets written in the exact on-disk layouts, for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

H, W = 12, 16


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def make_nyudv2(root: Path, n: int = 3, num_classes: int = 40, seed: int = 0) -> Path:
    """rgb/ depth/ masks/ + train.txt (all) and test.txt (first), reference format."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        name = f"{i + 1:06d}.png"
        write_png(root / "rgb" / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        depth = rng.integers(500, 10000, (H, W)).astype(np.uint16)
        depth[0, 0] = 0  # a hole
        write_png(root / "depth" / name, depth)
        mask = rng.integers(0, num_classes, (H, W)).astype(np.uint8)
        mask[-1, -1] = 255
        write_png(root / "masks" / name, mask)
        lines.append(f"rgb/{name}\tmasks/{name}\tdepth/{name}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text(lines[0] + "\n")
    return root


def make_taskonomy(root: Path, n: int = 2, seed: int = 0) -> Path:
    """rgb, normal (8-bit RGB), reshading (8-bit grey), depth_zbuffer, edge_texture (16-bit)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        stem = f"point_{40 + i}_view_{i}_domain_{{domain}}.png"

        def path(d: str, stem: str = stem) -> Path:
            return root / d / stem.format(domain=d)

        write_png(path("rgb"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        write_png(path("normal"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        write_png(path("reshading"), rng.integers(0, 256, (H, W), dtype=np.uint8))
        depth = rng.integers(512, 4096, (H, W)).astype(np.uint16)
        depth[0, :3] = 65535
        write_png(path("depth_zbuffer"), depth)
        write_png(path("edge_texture"), rng.integers(0, 65536, (H, W)).astype(np.uint16))
        lines.append("{domain}/" + stem.replace("{domain}", "{domain}"))
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root: Path, stems=("a", "b"), seed: int = 0) -> Path:
    """<root>/{rgb,depth,masks}/<stem>.png + split.txt of stems."""
    rng = np.random.default_rng(seed)
    for s in stems:
        write_png(root / "rgb" / f"{s}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        write_png(root / "depth" / f"{s}.png", rng.integers(0, 9000, (H, W)).astype(np.uint16))
        write_png(root / "masks" / f"{s}.png", rng.integers(0, 5, (H, W)).astype(np.uint8))
    (root / "split.txt").write_text("\n".join(stems) + "\n")
    return root


@pytest.fixture
def nyu_root(tmp_path: Path) -> Path:
    return make_nyudv2(tmp_path / "nyu")


@pytest.fixture
def taskonomy_root(tmp_path: Path) -> Path:
    return make_taskonomy(tmp_path / "taskonomy")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "own")
