"""HHA encoding of depth (Gupta et al., ECCV 2014): horizontal disparity, height above
the floor, angle with gravity, as an 8-bit 3-channel image.

For one depth map ``Z`` (H, W) in metres (0 = hole) and pinhole intrinsics
``(fx, fy, cx, cy)`` in pixels:

1. holes are filled by diffusion from their border: each pass gives every hole pixel
   with a valid 3 x 3 neighbour the mean of those neighbours, until none is left;
2. back-projection to camera coordinates ``P = ((u - cx) Z / fx, (v - cy) Z / fy, Z)``
   (x right, y down, z forward; ``u, v`` 0-based pixel indices);
3. normals ``n = normalise(dP/dv x dP/du)`` of the point map box-filtered over a
   ``window`` x ``window`` neighbourhood, turned towards the camera;
4. gravity: starting from the camera's up axis ``(0, -1, 0)``, the direction ``g`` that
   is most parallel to the normals within ``d`` degrees of it (floors, ceilings, table
   tops) and most perpendicular to those within ``d`` degrees of horizontal (walls):
   the eigenvector of the smallest eigenvalue of ``sum_perp n n^T - sum_par n n^T``,
   re-estimated with ``d`` = 45 degrees, then 15 degrees (5 rounds each);
5. height above the floor ``h = P . g - q``, where ``q`` is the 1st percentile of
   ``P . g`` over the measured pixels (the floor, or the lowest visible surface);
6. angle with gravity ``a = arccos(n . g)`` in degrees: 0 on floors, 90 on walls, 180 on ceilings.

Channels (uint8, rounded, clipped to 0..255): disparity ``127.5 / Z`` (Z in m: 255 at
0.5 m, 25 at 5 m), height ``255 h / 3 m`` (0 at the floor, 255 at 3 m and above), angle
``255 a / 180``. Everything is vectorised with PyTorch on the whole image.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: NYUDv2's Kinect (colour camera, 640 x 480 pixels): fx, fy, cx, cy.
KINECT_INTRINSICS: tuple[float, float, float, float] = (518.857901, 519.469611, 325.582449, 253.736166)
KINECT_SIZE: tuple[int, int] = (480, 640)  # (H, W)
#: Disparity channel: value = DISPARITY_SCALE / depth (m), so 255 at 0.5 m.
DISPARITY_SCALE = 127.5
#: Height channel: 255 at this many metres above the floor (and above).
HEIGHT_MAX_M = 3.0
#: Median depth (m) outside this range means the depth scale is wrong.
PLAUSIBLE_MEDIAN_M: tuple[float, float] = (0.1, 20.0)
#: Gravity estimate: angle tolerances (degrees) and rounds per tolerance.
GRAVITY_TOLERANCES_DEG: tuple[float, ...] = (45.0, 15.0)
GRAVITY_ROUNDS = 5
FLOOR_PERCENTILE = 1.0
CAMERA_FILE = "camera.json"


class HHAError(ValueError):
    """Input HHA cannot be computed from: the message names the file and what was expected."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (0-based pixel indices)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def parse(cls, text: str | Sequence[float]) -> Intrinsics:
        """``"fx,fy,cx,cy"`` or four numbers -> Intrinsics (HHAError otherwise)."""
        try:
            values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0:
            raise HHAError(
                f"intrinsics {text!r}: expected four numbers fx,fy,cx,cy in pixels with fx, fy > 0, "
                f"e.g. NYUDv2's Kinect {','.join(str(v) for v in KINECT_INTRINSICS)}"
            )
        return cls(*values)

    def check(self, size: tuple[int, int], where: str) -> None:
        """HHAError unless the principal point lies inside an image of ``size`` (H, W)."""
        h, w = size
        if not (0 <= self.cx < w and 0 <= self.cy < h):
            raise HHAError(
                f"{where}: the intrinsics' principal point ({self.cx:g}, {self.cy:g}) lies outside the "
                f"{w}x{h} (WxH) image; expected intrinsics of this camera at this image size"
            )


def fill_holes(depth: torch.Tensor) -> torch.Tensor:
    """Depth (H, W) with every 0 replaced by diffusion from the measured pixels (see the
    module docstring); needs at least one measured pixel."""
    valid = (depth > 0).to(depth.dtype)
    z = depth * valid
    ones = torch.ones(1, 1, 3, 3, dtype=depth.dtype, device=depth.device)
    z, valid = z[None, None], valid[None, None]
    while bool((valid == 0).any()):
        total = F.conv2d(z, ones, padding=1)
        count = F.conv2d(valid, ones, padding=1)
        grow = (valid == 0) & (count > 0)
        z = torch.where(grow, total / count.clamp(min=1), z)
        valid = torch.where(grow, torch.ones_like(valid), valid)
    return z[0, 0]


def backproject(depth: torch.Tensor, k: Intrinsics) -> torch.Tensor:
    """Depth (H, W) in metres -> points (3, H, W) in the camera frame (x right, y down, z forward)."""
    h, w = depth.shape
    v, u = torch.meshgrid(
        torch.arange(h, dtype=depth.dtype, device=depth.device),
        torch.arange(w, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    return torch.stack([(u - k.cx) * depth / k.fx, (v - k.cy) * depth / k.fy, depth])


def surface_normals(points: torch.Tensor, window: int) -> torch.Tensor:
    """Unit normals (3, H, W) of a point map (3, H, W), facing the camera: the cross product of
    central differences of the points box-filtered over ``window`` x ``window`` pixels."""
    p = points[None]
    if window > 1:
        p = F.avg_pool2d(F.pad(p, [window // 2, (window - 1) // 2] * 2, mode="replicate"), window, stride=1)
    p = F.pad(p, [1, 1, 1, 1], mode="replicate")[0]
    du = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) / 2
    dv = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) / 2
    n = torch.linalg.cross(dv, du, dim=0)
    n = n / n.norm(dim=0, keepdim=True).clamp(min=1e-12)
    facing = (n * points).sum(0, keepdim=True) > 0  # a visible surface faces the camera: n . P < 0
    return torch.where(facing, -n, n)


def estimate_gravity(normals: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unit up vector (3,) in the camera frame from normals (3, H, W) (see the module docstring);
    ``mask`` (H, W) bool selects the pixels used."""
    n = normals.reshape(3, -1)
    if mask is not None:
        n = n[:, mask.reshape(-1)]
    n = n.double()
    g = torch.tensor([0.0, -1.0, 0.0], dtype=n.dtype, device=n.device)
    for tol in GRAVITY_TOLERANCES_DEG:
        cos_tol, sin_tol = math.cos(math.radians(tol)), math.sin(math.radians(tol))
        for _ in range(GRAVITY_ROUNDS):
            c = (g @ n).abs()
            par, perp = n[:, c > cos_tol], n[:, c < sin_tol]
            if par.shape[1] + perp.shape[1] < 3:
                break
            a = perp @ perp.T - par @ par.T
            new = torch.linalg.eigh(a).eigenvectors[:, 0]
            g = new if float(new @ g) >= 0 else -new
    return g.to(normals.dtype)


@dataclass
class HHA:
    """The geometry behind one HHA image, all (H, W) float (from :func:`compute_hha`)."""

    disparity: torch.Tensor  # 1 / m
    height: torch.Tensor  # m above the floor
    angle: torch.Tensor  # degrees between the normal and up
    gravity: torch.Tensor  # (3,) up in the camera frame

    def encode(self) -> np.ndarray:
        """uint8 (H, W, 3): disparity x 127.5, height x 255 / 3 m, angle x 255 / 180 (rounded, clipped)."""
        channels = torch.stack(
            [self.disparity * DISPARITY_SCALE, self.height * (255.0 / HEIGHT_MAX_M), self.angle * (255.0 / 180.0)],
            dim=-1,
        )
        return channels.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def default_window(size: tuple[int, int]) -> int:
    """Normal-estimation window for an image of ``size`` (H, W): about 1/50 of the shorter side, odd, >= 3."""
    k = max(3, round(min(size) / 50))
    return k if k % 2 else k + 1


def measured_room_depth(z: torch.Tensor, where: str, *, scale: float | None = None, fix: str) -> torch.Tensor:
    """Bool mask of the measured pixels (> 0) of a depth map ``z`` in metres, checked to be a room's.

    Raises :class:`HHAError` (a ``ValueError``) naming ``where`` when no pixel is measured or
    the median lies outside :data:`PLAUSIBLE_MEDIAN_M` (a wrong unit); ``scale`` is the depth
    scale that gave the metres (named in the message if known), ``fix`` says what to change.
    """
    measured = z > 0
    if not bool(measured.any()):
        raise HHAError(f"{where}: no measured pixel (all depth is 0, no valid pixel); expected some depth")
    median = float(z[measured].median())
    lo, hi = PLAUSIBLE_MEDIAN_M
    if not lo <= median <= hi:
        scaled = "after the depth scale" if scale is None else f"with depth scale {scale:g}"
        raise HHAError(
            f"{where}: median depth {median:.4g} m {scaled} is implausible for a room (expected {lo:g}-{hi:g} m): {fix}"
        )
    return measured


def compute_hha(
    depth_m: torch.Tensor | np.ndarray, intrinsics: Intrinsics, window: int | None = None, where: str = "depth"
) -> HHA:
    """HHA geometry of a depth map (H, W) in metres (0 = hole).

    Raises HHAError naming ``where`` for an image without measurements, a median depth
    outside 0.1-20 m (a wrong unit) or intrinsics that do not fit the image."""
    z = torch.as_tensor(np.asarray(depth_m, dtype=np.float32) if isinstance(depth_m, np.ndarray) else depth_m)
    z = z.float()
    if z.ndim != 2:
        raise HHAError(f"{where}: depth has shape {tuple(z.shape)}; expected one (H, W) map")
    measured = measured_room_depth(
        z, where, fix="wrong unit? (--depth-scale: NYUDv2 1/5000 = 0.0002, millimetres 0.001)"
    )
    intrinsics.check(tuple(z.shape), where)
    filled = fill_holes(z)
    points = backproject(filled, intrinsics)
    normals = surface_normals(points, window or default_window(tuple(z.shape)))
    g = estimate_gravity(normals, measured)
    up = (points * g[:, None, None]).sum(0)
    floor = torch.quantile(up[measured].double(), FLOOR_PERCENTILE / 100).float()
    angle = torch.rad2deg(torch.arccos((normals * g[:, None, None]).sum(0).clamp(-1, 1)))
    return HHA(disparity=1.0 / filled, height=up - floor, angle=angle, gravity=g)


# -- a whole data set -----------------------------------------------------------------------
@dataclass(frozen=True)
class CameraSpec:
    """Where the intrinsics and depth scale of a data set come from."""

    depth_scale: float
    intrinsics: Intrinsics | None  # one for every image, or None: per image from ``per_image``
    per_image: dict[str, Intrinsics]
    source: str  # for messages

    def for_image(self, name: str, size: tuple[int, int], where: str) -> Intrinsics:
        if self.intrinsics is not None:
            if self.source == "default" and tuple(size) != KINECT_SIZE:
                raise HHAError(
                    f"{where} is {size[1]}x{size[0]} (WxH) but no intrinsics were given and the default ones are "
                    f"NYUDv2's Kinect at {KINECT_SIZE[1]}x{KINECT_SIZE[0]}; pass --intrinsics fx,fy,cx,cy of this "
                    f"camera (or write them into ROOT/{CAMERA_FILE})"
                )
            return self.intrinsics
        if name not in self.per_image:
            raise HHAError(f"{where}: {self.source} has no intrinsics for {name!r}; pass --intrinsics fx,fy,cx,cy")
        return self.per_image[name]


def camera_spec(root: str | os.PathLike, intrinsics: str | None = None, depth_scale: float | None = None) -> CameraSpec:
    """Intrinsics and depth scale for the data set at ``root``: the arguments if given, else
    ``root/camera.json`` (``{"depth_scale": s, "intrinsics": [fx, fy, cx, cy] or {file: [...]}}``,
    written by the scene generator), else NYUDv2's (Kinect intrinsics, 1/5000 m)."""
    from cen.data.constants import REFERENCE_DEPTH_SCALE

    path = Path(root) / CAMERA_FILE
    meta = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise HHAError(
                f"{path}: not valid JSON ({err}); expected {{'depth_scale': ..., 'intrinsics': ...}}"
            ) from None
    scale = depth_scale if depth_scale is not None else float(meta.get("depth_scale", REFERENCE_DEPTH_SCALE))
    if not (scale > 0 and math.isfinite(scale)):
        raise HHAError(f"depth scale {scale!r}: expected a positive number (raw depth x scale = metres)")
    if intrinsics is not None:
        return CameraSpec(scale, Intrinsics.parse(intrinsics), {}, "--intrinsics")
    given = meta.get("intrinsics")
    if isinstance(given, dict):
        return CameraSpec(scale, None, {k: Intrinsics.parse(v) for k, v in given.items()}, str(path))
    if given is not None:
        return CameraSpec(scale, Intrinsics.parse(given), {}, str(path))
    return CameraSpec(scale, Intrinsics(*KINECT_INTRINSICS), {}, "default")


def write_hha(
    root: str | os.PathLike,
    intrinsics: str | None = None,
    depth_scale: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    window: int | None = None,
) -> dict[str, int]:
    """Compute ``root/hha/<name>.png`` from every ``root/depth/<name>.png``.

    Files already there are kept unless ``overwrite``. Every problem is checked on the
    first depth image before anything is written where possible; errors name the file.
    Returns ``{"written": n, "kept": m}``."""
    from PIL import Image
    from tqdm.auto import tqdm

    from cen.atomic import atomic_write
    from cen.data.images import read_image

    root = Path(root)
    depth_dir = root / "depth"
    files = sorted(depth_dir.glob("*.png")) if depth_dir.is_dir() else []
    if not files:
        raise HHAError(f"{depth_dir}: no depth PNG found; expected ROOT/depth/*.png (16-bit, 0 = hole)")
    spec = camera_spec(root, intrinsics, depth_scale)
    out_dir = root / "hha"
    out_dir.mkdir(exist_ok=True)
    counts = {"written": 0, "kept": 0}
    for path in tqdm(files, desc="hha", unit="image", disable=not progress):
        target = out_dir / path.name
        if target.is_file() and not overwrite:
            counts["kept"] += 1
            continue
        raw = read_image(path)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise HHAError(f"{path}: depth image is {raw.dtype} with shape {raw.shape}; expected a 16-bit grey PNG")
        k = spec.for_image(path.name, raw.shape, str(path))
        hha = compute_hha(raw.astype(np.float32) * spec.depth_scale, k, window, where=str(path))
        image = Image.fromarray(hha.encode())
        atomic_write(target, lambda f, image=image: image.save(f, format="PNG"))
        counts["written"] += 1
    return counts


__all__ = [
    "HHA",
    "KINECT_INTRINSICS",
    "HHAError",
    "Intrinsics",
    "backproject",
    "camera_spec",
    "compute_hha",
    "estimate_gravity",
    "fill_holes",
    "surface_normals",
    "write_hha",
]
