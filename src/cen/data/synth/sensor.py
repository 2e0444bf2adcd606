"""Sensor models and on-disk encodings of the rendered buffers.

Each function maps one float buffer of :func:`cen.data.synth.render.render` to the
array that is written to a PNG (dtype noted per function).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cen.data.constants import REFERENCE_DEPTH_SCALE

#: Depth beyond this range (m) is returned as a hole, like a structured-light sensor.
MAX_RANGE_M = 8.0
#: Taskonomy stores z-buffer depth in units of 1/512 m, 65535 = invalid.
TASKONOMY_DEPTH_UNITS_PER_M = 512.0


def depth_sigma(z: np.ndarray) -> np.ndarray:
    """Axial noise standard deviation (m) at depth ``z`` (m): grows quadratically with
    range, as for Kinect-style sensors (about 2 mm at 1 m, 20 mm at 3.5 m)."""
    return 0.0012 + 0.0019 * (z - 0.4) ** 2


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int = 8) -> np.ndarray:
    """Uniform noise on a coarse grid, bilinearly upsampled to (height, width)."""
    small = rng.random((max(2, height // cell), max(2, width // cell))).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR))


def sensor_depth(depth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy depth with holes.

    ``depth`` (H, W) clean z-buffer (m). Returns ``(noisy, valid)``: noisy depth (m,
    float32, H x W) and a boolean validity map. Holes appear at depth discontinuities
    (randomly, as shadowed pixels), in smooth random blobs (about 2 % of the image) and
    beyond :data:`MAX_RANGE_M`."""
    h, w = depth.shape
    noisy = depth + depth_sigma(depth) * rng.standard_normal(depth.shape, dtype=np.float32)
    jump = np.zeros_like(depth, dtype=bool)
    dz_x = np.abs(np.diff(depth, axis=1)) > 0.05 * depth[:, 1:]
    dz_y = np.abs(np.diff(depth, axis=0)) > 0.05 * depth[1:, :]
    jump[:, 1:] |= dz_x
    jump[:, :-1] |= dz_x
    jump[1:, :] |= dz_y
    jump[:-1, :] |= dz_y
    holes = jump & (rng.random(depth.shape, dtype=np.float32) < 0.6)
    holes |= _smooth_noise(rng, h, w) < 0.04
    holes |= depth > MAX_RANGE_M
    return noisy, ~holes


def encode_depth_nyudv2(noisy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The generated NYUDv2 layout's encoding: uint16 in units of 1/5000 m, 0 = hole.

    The unit of NYUDv2 as distributed with the reference code, so that one depth scale
    (:data:`cen.data.constants.REFERENCE_DEPTH_SCALE`) gives metres for both; 65535 is 13.1 m.
    """
    raw = np.clip(np.rint(noisy / REFERENCE_DEPTH_SCALE), 1, 65535).astype(np.uint16)
    return np.where(valid, raw, 0).astype(np.uint16)


def encode_depth_taskonomy(noisy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Taskonomy ``depth_zbuffer`` encoding: uint16 in 1/512 m, 65535 = invalid."""
    units = np.clip(np.rint(noisy * TASKONOMY_DEPTH_UNITS_PER_M), 1, 65534).astype(np.uint16)
    return np.where(valid, units, 65535).astype(np.uint16)


def sensor_rgb(
    albedo: np.ndarray, shading: np.ndarray, exposure: float, rng: np.random.Generator, noise: float = 0.03
) -> np.ndarray:
    """Camera image: albedo (H, W, 3) x shading (H, W) x exposure + Gaussian noise; uint8."""
    img = albedo * (shading * exposure)[..., None] + noise * rng.standard_normal(albedo.shape, dtype=np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def encode_normal(normal: np.ndarray) -> np.ndarray:
    """Normal map (H, W, 3) with components in [-1, 1] -> uint8 RGB, ``(n + 1) / 2 * 255``."""
    return np.clip(np.rint((normal + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode_unit(x: np.ndarray) -> np.ndarray:
    """A [0, 1] image (H, W) -> uint8 (used for ``reshading``)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def texture_edges(albedo: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the albedo luminance -> uint16 (``edge_texture``).

    A unit luminance step maps to 65535 (the Sobel response of a step is 4)."""
    lum = albedo @ np.array([0.299, 0.587, 0.114], dtype=albedo.dtype)
    p = np.pad(lum, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.hypot(gx, gy) / 4.0
    return np.clip(np.rint(mag * 65535.0), 0, 65535).astype(np.uint16)
