"""Reading image files into numpy arrays, with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

_16BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file completely.

    Returns uint8 (H, W) or (H, W, 3) for 8-bit grey / palette / RGB(A) images
    (alpha dropped, palette images give their indices, as label PNGs need) and uint16
    (H, W) for 16-bit grey images.

    Raises:
        FileNotFoundError: the file does not exist (names it).
        ValueError: the file is unreadable, corrupt or truncated, or has an unsupported
            pixel format (names the file and what was expected).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGBA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            elif mode == "LA" or mode == "1":
                img = img.convert("L")
            arr = np.array(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot decode image ({err}); expected a readable PNG/JPEG") from err
    if mode in _16BIT_MODES:
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise ValueError(f"{path}: 32-bit image with values outside 0..65535; expected 16-bit data")
            arr = arr.astype(np.uint16)
        return arr
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"{path}: unsupported pixel format {mode!r}; expected 8-bit grey/RGB or 16-bit grey")
    return arr


def image_size(arr: np.ndarray) -> tuple[int, int]:
    """(height, width) of an array from :func:`read_image`."""
    return int(arr.shape[0]), int(arr.shape[1])
