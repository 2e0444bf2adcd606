"""Writing rendered samples in the NYUDv2 and Taskonomy on-disk layouts.

NYUDv2 layout (at the data set root)::

    rgb/000007.png      8-bit RGB
    depth/000007.png    16-bit depth in mm, 0 = hole
    masks/000007.png    8-bit class ids
    train.txt           lines "rgb/000007.png<TAB>masks/000007.png<TAB>depth/000007.png"

Taskonomy layout (under ``taskonomy/``)::

    <domain>/point_7_view_0_domain_<domain>.png
    train.txt           lines "{domain}/point_7_view_0_domain_{domain}.png"
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cen.data.synth import sensor
from cen.data.synth.render import render
from cen.data.synth.scene import sample_scene

NYUDV2_DIRS: tuple[str, ...] = ("rgb", "depth", "masks")
TASKONOMY_DIR = "taskonomy"
TASKONOMY_DOMAINS: tuple[str, ...] = ("rgb", "depth_zbuffer", "normal", "reshading", "edge_texture")
PNG_COMPRESS_LEVEL = 1
#: zlib run-length strategy: faster than the default and smaller on noisy sensor images.
PNG_COMPRESS_TYPE = zlib.Z_RLE


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index``: independent of every other sample, so
    samples can be generated in any order or in parallel with identical results."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def render_sample(seed: int, index: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Render sample ``index`` and encode every modality as written to disk.

    Returns uint8 ``rgb`` (H, W, 3), ``mask`` (H, W), ``normal`` (H, W, 3),
    ``reshading`` (H, W); uint16 ``depth_mm`` (H, W), ``depth_zbuffer`` (H, W, 1/512 m,
    65535 invalid), ``edge_texture`` (H, W)."""
    rng = sample_rng(seed, index)
    scene = sample_scene(rng, height, width)
    buf = render(scene)
    noisy, valid = sensor.sensor_depth(buf["depth"], rng)
    return {
        "rgb": sensor.sensor_rgb(buf["albedo"], buf["shading"], scene.exposure, rng),
        "mask": buf["label"],
        "depth_mm": sensor.encode_depth_mm(noisy, valid),
        "depth_zbuffer": sensor.encode_depth_taskonomy(noisy, valid),
        "normal": sensor.encode_normal(buf["normal"]),
        "reshading": sensor.encode_unit(buf["shading"]),
        "edge_texture": sensor.texture_edges(buf["albedo"]),
    }


def _png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE)
    return out.getvalue()


def nyudv2_name(index: int) -> str:
    """File name of sample ``index`` in the NYUDv2 layout, e.g. ``000007.png``."""
    return f"{index:06d}.png"


def nyudv2_line(index: int) -> str:
    """List-file line of sample ``index`` (reference order: rgb, mask, depth)."""
    name = nyudv2_name(index)
    return f"rgb/{name}\tmasks/{name}\tdepth/{name}"


def taskonomy_template(index: int) -> str:
    """Taskonomy list-file line of sample ``index`` (one point, view 0)."""
    return f"{{domain}}/point_{index}_view_0_domain_{{domain}}.png"


def make_dirs(root: Path) -> None:
    """Create the directories of both layouts under ``root``."""
    for d in NYUDV2_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in TASKONOMY_DOMAINS:
        (root / TASKONOMY_DIR / d).mkdir(parents=True, exist_ok=True)


def write_sample(root: Path, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one rendered sample in both layouts (directories must exist)."""
    name = nyudv2_name(index)
    rgb = _png_bytes(arrays["rgb"])
    (root / "rgb" / name).write_bytes(rgb)
    (root / "depth" / name).write_bytes(_png_bytes(arrays["depth_mm"]))
    (root / "masks" / name).write_bytes(_png_bytes(arrays["mask"]))
    tdir = root / TASKONOMY_DIR
    for domain in TASKONOMY_DOMAINS:
        data = rgb if domain == "rgb" else _png_bytes(arrays[domain])
        path = tdir / taskonomy_template(index).format(domain=domain)
        path.write_bytes(data)


def write_lists(root: Path, splits: dict[str, range]) -> None:
    """Write ``<split>.txt`` in both layouts for every non-empty split (a range of indices)."""
    for split, indices in splits.items():
        if len(indices) == 0:
            continue
        (root / f"{split}.txt").write_text("".join(nyudv2_line(i) + "\n" for i in indices))
        (root / TASKONOMY_DIR / f"{split}.txt").write_text(
            "".join(taskonomy_template(i) + "\n" for i in indices)
        )
