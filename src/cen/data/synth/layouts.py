"""Writing rendered samples in the NYUDv2 and Taskonomy on-disk layouts.

NYUDv2 layout (at the data set root)::

    rgb/000007.png      8-bit RGB
    depth/000007.png    16-bit depth in units of 1/5000 m (NYUDv2's), 0 = hole
    masks/000007.png    8-bit class ids
    normal/000007.png   8-bit RGB normals, (n + 1) / 2 * 255, camera frame x right, y up, z towards the camera
    shading/000007.png  8-bit grey shading of rgb/ (ambient + Lambertian) in [0, 1]
    texture/000007.png  16-bit grey Sobel magnitude of the albedo luminance (unit step = 65535)
    train.txt           lines "rgb/000007.png<TAB>masks/000007.png<TAB>depth/000007.png"
    camera.json         depth scale and per-image intrinsics (fx, fy, cx, cy) for ``cen data hha``

The extra modalities (``normal``, ``shading``, ``texture``) are computed from the render
buffers without drawing random numbers, so ``rgb``, ``depth``, ``masks`` and the lists
keep the bytes of generator version 2.

Taskonomy layout (under ``taskonomy/``)::

    <domain>/point_7_view_0_domain_<domain>.png
    train.txt           lines "{domain}/point_7_view_0_domain_{domain}.png"

The Taskonomy layout shows the same scenes (geometry, materials, labels) under another
light: mostly directional (ambient share :data:`TASKONOMY_AMBIENT`) at a fixed exposure,
where the NYUDv2 layout's light is mostly ambient. Its ``rgb`` is albedo x that shading,
``reshading`` that shading (geometry and light, no albedo) and ``edge_texture`` the
albedo's luminance edges (materials, posters and rugs, no shading): each input carries
what the other lacks. Under the NYUDv2 layout's faint shading RGB hardly depends on
shading, so shading + texture edges -> RGB could not show fusion (see docs/data.md).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cen.data.constants import REFERENCE_DEPTH_SCALE
from cen.data.synth import sensor
from cen.data.synth.render import render
from cen.data.synth.scene import sample_scene

NYUDV2_DIRS: tuple[str, ...] = ("rgb", "depth", "masks")
#: Extra modality folders of the NYUDv2 layout, beside ``rgb`` and ``depth`` (generator version 3).
NYUDV2_EXTRA: tuple[str, ...] = ("normal", "shading", "texture")
#: Depth scale of the generated NYUDv2 layout (raw -> metres, NYUDv2's 1/5000), written to camera.json.
DEPTH_SCALE = REFERENCE_DEPTH_SCALE
TASKONOMY_DIR = "taskonomy"
#: The Taskonomy domains the generator writes (a subset of :data:`cen.data.TASKONOMY_DOMAINS`).
GENERATED_DOMAINS: tuple[str, ...] = ("rgb", "depth_zbuffer", "normal", "reshading", "edge_texture")
#: Range of the ambient share of the Taskonomy layout's light (NYUDv2 layout: 0.7-0.85).
TASKONOMY_AMBIENT: tuple[float, float] = (0.2, 0.4)
PNG_COMPRESS_LEVEL = 1
#: zlib run-length strategy: faster than the default and smaller on noisy sensor images.
PNG_COMPRESS_TYPE = zlib.Z_RLE


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index``: independent of every other sample, so
    samples can be generated in any order or in parallel with identical results."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def taskonomy_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of the Taskonomy layout's light and noise of sample ``index``,
    separate from :func:`sample_rng` so that the NYUDv2 layout does not depend on it."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 1]))


def relight(shading: np.ndarray, ambient: float, new_ambient: float) -> np.ndarray:
    """Shading ``ambient + (1 - ambient) * lambert`` (H, W) recomputed with another
    ambient share: ``new_ambient + (1 - new_ambient) * lambert``."""
    lambert = (shading - ambient) / (1.0 - ambient)
    return (new_ambient + (1.0 - new_ambient) * np.clip(lambert, 0.0, 1.0)).astype(shading.dtype)


def render_sample(seed: int, index: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Render sample ``index`` and encode every modality as written to disk.

    Returns uint8 ``rgb`` (H, W, 3, NYUDv2 layout), ``mask`` (H, W), ``shading`` (H, W, the
    NYUDv2 layout's), ``taskonomy_rgb`` (H, W, 3), ``normal`` (H, W, 3), ``reshading`` (H, W);
    uint16 ``depth`` (H, W, 1/5000 m, 0 = hole), ``depth_zbuffer`` (H, W, 1/512 m, 65535 invalid),
    ``edge_texture`` (H, W); float64 ``intrinsics`` (4,): fx, fy, cx, cy in pixels (pixel
    ``(u, v)`` of 0-based indices looks along ``((u - cx) / fx, (v - cy) / fy, 1)``, y down)."""
    rng = sample_rng(seed, index)
    scene = sample_scene(rng, height, width)
    buf = render(scene)
    noisy, valid = sensor.sensor_depth(buf["depth"], rng)
    rgb = sensor.sensor_rgb(buf["albedo"], buf["shading"], scene.exposure, rng)
    t_rng = taskonomy_rng(seed, index)
    t_shading = relight(buf["shading"], scene.ambient, float(t_rng.uniform(*TASKONOMY_AMBIENT)))
    return {
        "rgb": rgb,
        "mask": buf["label"],
        "depth": sensor.encode_depth_nyudv2(noisy, valid),
        "taskonomy_rgb": sensor.sensor_rgb(buf["albedo"], t_shading, 1.0, t_rng),
        "depth_zbuffer": sensor.encode_depth_taskonomy(noisy, valid),
        "normal": sensor.encode_normal(buf["normal"]),
        "reshading": sensor.encode_unit(t_shading),
        "edge_texture": sensor.texture_edges(buf["albedo"]),
        "shading": sensor.encode_unit(buf["shading"]),
        "intrinsics": camera_intrinsics(scene.camera),
    }


def camera_intrinsics(camera) -> np.ndarray:
    """(fx, fy, cx, cy) in pixels of a :class:`~cen.data.synth.scene.Camera`; its rays pass
    through pixel centres, ``x = (u + 0.5 - W / 2) / f``, so ``cx = W / 2 - 0.5``."""
    return np.array([camera.focal, camera.focal, camera.width / 2 - 0.5, camera.height / 2 - 0.5])


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
    for d in NYUDV2_DIRS + NYUDV2_EXTRA:
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in GENERATED_DOMAINS:
        (root / TASKONOMY_DIR / d).mkdir(parents=True, exist_ok=True)


def write_sample(root: Path, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one rendered sample in both layouts (directories must exist)."""
    name = nyudv2_name(index)
    rgb = _png_bytes(arrays["rgb"])
    (root / "rgb" / name).write_bytes(rgb)
    (root / "depth" / name).write_bytes(_png_bytes(arrays["depth"]))
    (root / "masks" / name).write_bytes(_png_bytes(arrays["mask"]))
    normal = _png_bytes(arrays["normal"])
    texture = _png_bytes(arrays["edge_texture"])
    (root / "normal" / name).write_bytes(normal)
    (root / "shading" / name).write_bytes(_png_bytes(arrays["shading"]))
    (root / "texture" / name).write_bytes(texture)
    tdir = root / TASKONOMY_DIR
    encoded = {"normal": normal, "edge_texture": texture}
    for domain in GENERATED_DOMAINS:
        data = encoded.get(domain) or _png_bytes(arrays["taskonomy_rgb" if domain == "rgb" else domain])
        path = tdir / taskonomy_template(index).format(domain=domain)
        path.write_bytes(data)


def write_lists(root: Path, splits: dict[str, range]) -> None:
    """Write ``<split>.txt`` in both layouts for every non-empty split (a range of indices)."""
    for split, indices in splits.items():
        if len(indices) == 0:
            continue
        (root / f"{split}.txt").write_text("".join(nyudv2_line(i) + "\n" for i in indices))
        (root / TASKONOMY_DIR / f"{split}.txt").write_text("".join(taskonomy_template(i) + "\n" for i in indices))
