"""Tiny data sets in the exact layouts of the RGB-X packs, MFNet and DELIVER (32x48 images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 32, 48


def _save(path: Path, arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def make_rgbx(
    root: Path,
    n_train: int = 4,
    n_test: int = 2,
    num_classes: int = 40,
    depth_bits: int = 8,
    labels: str = "Label",
    hha: bool = False,
    seed: int = 0,
) -> Path:
    """RGB/<i>.jpg, Depth/<i>.png (8- or 16-bit, a hole at (0, 0)), [HHA/<i>.png], labels 0..C in
    ``labels``/, train.txt (lines 'RGB/<i>.jpg Label/<i>.png', a second column to ignore) and test.txt."""
    rng = np.random.default_rng(seed)
    names = [str(i) for i in range(1, n_train + n_test + 1)]
    for name in names:
        _save(root / "RGB" / f"{name}.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8), fmt="JPEG")
        if depth_bits == 8:
            depth = rng.integers(1, 256, (H, W)).astype(np.uint8)
        else:
            depth = rng.integers(500, 10000, (H, W)).astype(np.uint16)
        depth[0, 0] = 0
        _save(root / "Depth" / f"{name}.png", depth)
        if hha:
            _save(root / "HHA" / f"{name}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        label = rng.integers(0, num_classes + 1, (H, W)).astype(np.uint8)
        label[0, :3] = (0, 1, num_classes)  # unlabelled, the first and the last class
        _save(root / labels / f"{name}.png", label)
    (root / "train.txt").write_text("".join(f"RGB/{n}.jpg {labels}/{n}.png\n" for n in names[:n_train]))
    (root / "test.txt").write_text("".join(f"RGB/{n}.jpg\n" for n in names[n_train:]))
    return root


def make_mfnet(root: Path, splits: dict[str, int] | None = None, seed: int = 0) -> Path:
    """images/<stem>.png as ONE 4-channel PNG (R, G, B, thermal), labels/<stem>.png 0..8,
    train.txt / val.txt / test.txt of stems (MFNet's day 'D' and night 'N' names)."""
    rng = np.random.default_rng(seed)
    splits = splits or {"train": 4, "val": 2, "test": 2}
    k = 0
    for split, n in splits.items():
        stems = []
        for _ in range(n):
            k += 1
            stem = f"{k:05d}{'D' if k % 2 else 'N'}"
            stems.append(stem)
            rgbt = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
            rgbt[..., 3] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]  # a thermal ramp, never all 255
            _save(root / "images" / f"{stem}.png", rgbt, "RGBA")
            label = rng.integers(0, 9, (H, W)).astype(np.uint8)
            label[0, :2] = (0, 8)
            _save(root / "labels" / f"{stem}.png", label)
        (root / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


DELIVER_SCENES = {
    "train": ("MAP_1_point1", "MAP_2_point7_eventlowres"),
    "val": ("MAP_3_point2",),
    "test": ("MAP_4_point3",),
}


def make_deliver(
    root: Path,
    conditions: tuple[str, ...] = ("cloud", "night"),
    frames: int = 1,
    scenes: dict[str, tuple[str, ...]] | None = None,
    seed: int = 0,
) -> Path:
    """img/ depth/ hha/ event/ lidar/ semantic/ <condition>/<split>/<scene>/<frame>_<word>_front.png:
    RGB, 8-bit depth (a hole), HHA, RGB event frames (half size in an eventlowres scene), grey
    LiDAR (mostly no return), semantic labels 0..25 and 255 in the red channel of an RGB PNG."""
    rng = np.random.default_rng(seed)
    scenes = scenes or DELIVER_SCENES
    k = 0
    for condition in conditions:
        for split, names in scenes.items():
            for scene in names:
                for _ in range(frames):
                    k += 1
                    frame = f"{k * 50:06d}"

                    where = Path(condition) / split / scene

                    def path(folder: str, word: str, where: Path = where, frame: str = frame) -> Path:
                        return root / folder / where / f"{frame}_{word}_front.png"

                    _save(path("img", "rgb"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
                    depth = rng.integers(1, 256, (H, W)).astype(np.uint8)
                    depth[0, 0] = 0
                    _save(path("depth", "depth"), depth)
                    _save(path("hha", "depth"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
                    eh, ew = (H // 2, W // 2) if "eventlowres" in scene else (H, W)
                    event = np.zeros((eh, ew, 3), np.uint8)
                    event[rng.random((eh, ew)) < 0.2] = (255, 0, 0)
                    _save(path("event", "event"), event)
                    lidar = np.where(rng.random((H, W)) < 0.1, rng.integers(1, 256, (H, W)), 0).astype(np.uint8)
                    _save(path("lidar", "lidar"), lidar)
                    label = np.zeros((H, W, 3), np.uint8)
                    label[..., 0] = rng.integers(0, 26, (H, W))
                    label[0, :3, 0] = (0, 1, 25)
                    label[1, 0, 0] = 255
                    _save(path("semantic", "semantic"), label)
    return root
