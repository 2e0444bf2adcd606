"""Reading image files into tensors with ``torchvision.io``, with errors that name the file.

:func:`read_image_tensor` gives the pixel values of :func:`cen.data.images.read_image` as a
(C, H, W) tensor, decoded by libpng through ``torchvision.io.decode_png`` (faster than PIL
plus a numpy copy). PNGs that torchvision would decode differently from PIL (palette
indices, transparency chunks, bit depths other than 8 or 16-bit grey) and other formats
(JPEG, ...) are read by :func:`~cen.data.images.read_image` instead, so both readers
give the same values for every file.

torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec, which needs
FFmpeg libraries that a plain ``pip install`` does not bring; the project caps torchvision at
0.29.x, and a torchvision without ``decode_png`` makes every file go through PIL (the same
values, slower).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:
    from torchvision.io import ImageReadMode, decode_png, read_file
except ImportError:  # pragma: no cover -- a torchvision that dropped its decoders
    decode_png = None

from cen.data.images import read_image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> channels kept (alpha dropped, as read_image does), for 8-bit files.
_COLOUR_TYPES_8BIT = {0: 1, 2: 3, 4: 1, 6: 3}  # grey, RGB, grey + alpha, RGBA
_GREY = 0


def chw(arr: np.ndarray) -> torch.Tensor:
    """A (H, W) or (H, W, C) array of :func:`~cen.data.images.read_image` as a (C, H, W)
    tensor view (no copy; memory stays channels-last)."""
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def _png_layout(data: np.ndarray) -> tuple[int, int, int, int] | None:
    """(height, width, bit depth, colour type) of a PNG that libpng and PIL decode to the same
    values, or None (not a PNG, a transparency chunk before the image data, truncated header)."""
    if data[:8].tobytes() != _PNG_SIGNATURE or len(data) < 33 or data[12:16].tobytes() != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26].tobytes())
    pos = 33  # after IHDR: 8 signature + 4 length + 4 type + 13 data + 4 crc
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8].tobytes())
        if kind == b"IDAT":
            return height, width, depth, colour
        if kind == b"tRNS":
            return None
        pos += 12 + length
    return None


def read_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file completely into a (C, H, W) tensor.

    Returns uint8 with C = 1 (grey, palette indices) or 3 (RGB; alpha dropped) for 8-bit
    images and uint16 with C = 1 for 16-bit grey images: exactly the values of
    :func:`cen.data.images.read_image`, in (C, H, W) order, and its errors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if decode_png is None:
        return chw(read_image(path))
    try:
        data = read_file(str(path))
    except RuntimeError:  # an empty file: PIL says so in the words of read_image
        return chw(read_image(path))
    layout = _png_layout(data.numpy())
    if layout is None:
        return chw(read_image(path))
    height, width, depth, colour = layout
    too_big = Image.MAX_IMAGE_PIXELS is not None and height * width > 2 * Image.MAX_IMAGE_PIXELS
    fast = (depth == 8 and colour in _COLOUR_TYPES_8BIT) or (depth == 16 and colour == _GREY)
    if too_big or not fast:
        return chw(read_image(path))  # PIL's refusal (decompression bomb) or its conversion of this format
    try:
        img = decode_png(data, ImageReadMode.UNCHANGED)
    except RuntimeError as err:
        reason = " ".join(str(err).split())  # torchvision's message may span lines
        raise ValueError(f"{path}: cannot decode image ({reason}); expected a readable PNG/JPEG") from err
    return img[: _COLOUR_TYPES_8BIT.get(colour, 1)]


def read_all_channels(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file into a (C, H, W) tensor keeping every channel, the fourth too.

    :func:`read_image_tensor` drops alpha, as PIL's RGB conversion does; a file that packs four
    modalities' channels into RGBA (MFNet: R, G, B, thermal) needs them all. 8-bit grey, RGB and
    4-channel PNGs keep their channels; other files give what :func:`read_image_tensor` gives,
    and its errors (naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if decode_png is not None:
        try:
            data = read_file(str(path))
        except RuntimeError:
            return read_image_tensor(path)
        layout = _png_layout(data.numpy())
        if layout is not None and layout[2] == 8 and layout[3] == 6:  # 8-bit RGBA: libpng keeps all four
            try:
                return decode_png(data, ImageReadMode.UNCHANGED)
            except RuntimeError as err:
                reason = " ".join(str(err).split())
                raise ValueError(f"{path}: cannot decode image ({reason}); expected a readable PNG") from err
        return read_image_tensor(path)
    try:  # pragma: no cover -- a torchvision without decode_png
        with Image.open(path) as img:
            if img.mode == "RGBA":
                return chw(np.array(img))
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot decode image ({err}); expected a readable PNG") from err
    return read_image_tensor(path)  # pragma: no cover
