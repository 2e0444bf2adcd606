"""A folder of decoded pixels, so training decodes each PNG once instead of once per epoch.

:class:`DecodedCache` ``.read(path)`` returns what
:func:`~cen.data.tensor_images.read_image_tensor` returns for ``path`` (same dtype, shape,
values and strides). The first read decodes the file and stores the pixels uncompressed as a
``.npy`` file (uint8 or uint16, (H, W, C): H*W*C bytes, twice that for 16-bit); later reads
load that file, many times faster than inflating the PNG (docs/data.md has the measurement;
``np.load`` is used rather than ``torch.load``: it was faster and needs no memory map, which a
file truncated while mapped would turn into a crash).

* **Key**: the source's resolved absolute path, size and modification time (ns), hashed; so an
  edited or replaced image is decoded again (its old entry stays until the folder is deleted).
  Files are spread over 256 subfolders by the first two hex digits of the hash.
* **Writes are atomic** (:func:`cen.atomic.atomic_write`: a temporary file beside the target,
  then ``os.replace``), so DataLoader workers and concurrent runs can share one folder; two
  processes that miss the same file both decode it and one of the identical copies wins.
* **A damaged entry** (truncated, not a ``.npy``, a dtype or shape no image has) is decoded
  again from the source and rewritten.
* Errors for bad source files are those of ``read_image_tensor`` (they name the file); a folder
  that cannot be created or written raises :class:`CacheDirError` naming it and ``data.cache_dir``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import torch

from cen.atomic import atomic_write
from cen.data.tensor_images import read_image_tensor

#: Part of every key: bump it when the stored format changes, so old entries are ignored.
FORMAT = "cen-decoded-v1"
_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_CHANNELS = (1, 3)  # read_image_tensor's; a reader of its own (read=) may give 4 (MFNet's RGB-T PNGs)


class CacheDirError(NotADirectoryError):
    """The cache folder cannot be created or written. A ``NotADirectoryError`` (an unusable
    path), so the command line prints it as one line."""


def _unusable(directory: Path, err: OSError) -> CacheDirError:
    reason = err.strerror or str(err)
    return CacheDirError(
        f"data.cache_dir={str(directory)!r}: cannot create or write the decoded-pixel cache there ({reason}); "
        "expected a writable folder, or null for no cache"
    )


class DecodedCache:
    """Decoded images of any files, stored under ``directory`` (created if missing).

    Args:
        directory: the cache folder; relative paths are relative to the working directory.
            It may be shared by several data sets, workers and runs.
        read: the reader whose pixels are kept (None:
            :func:`~cen.data.tensor_images.read_image_tensor`).
        tag: part of every key, naming ``read`` when it is not the default: readers that give a
            file different pixels (e.g. :func:`~cen.data.tensor_images.read_all_channels`, which
            keeps alpha) must not share entries.

    Raises:
        CacheDirError: ``directory`` cannot be created or written (names it and ``data.cache_dir``).
    """

    def __init__(self, directory: str | os.PathLike, read=None, tag: str = "") -> None:
        self.directory = Path(directory).absolute()
        self._reader = read  # None: this module's read_image_tensor, looked up at each call
        self.tag = tag
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.directory):
                pass
        except OSError as err:
            raise _unusable(self.directory, err) from err

    def entry(self, path: str | os.PathLike, st: os.stat_result | None = None) -> Path:
        """The cache file of ``path`` in its present state (``st``: its ``os.stat``, if known)."""
        st = os.stat(path) if st is None else st
        key = f"{FORMAT}{self.tag}\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return self.directory / digest[:2] / f"{digest[2:]}.npy"

    def read(self, path: str | os.PathLike) -> torch.Tensor:
        """(C, H, W) uint8 (C = 1 or 3) or uint16 (C = 1) pixels of ``path``, as
        :func:`~cen.data.tensor_images.read_image_tensor` gives them, from the cache when it has them.

        Raises what ``read_image_tensor`` raises for a missing or bad file, and
        :class:`CacheDirError` when the entry cannot be written."""
        try:
            st = os.stat(path)
        except OSError:
            return self._read(path)  # its error names the file
        if not stat.S_ISREG(st.st_mode):
            return self._read(path)
        file = self.entry(path, st)
        cached = _load(file, _CHANNELS if self._reader is None else (*_CHANNELS, 4))
        if cached is not None:
            return cached
        img = self._read(path)
        self._store(file, img)
        return img

    def _store(self, file: Path, img: torch.Tensor) -> None:
        # (H, W, C) memory: what decode_png and PIL produce, so loading needs no copy
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        try:
            atomic_write(file, lambda fh: np.save(fh, hwc, allow_pickle=False))
        except OSError as err:
            raise _unusable(self.directory, err) from err

    def _read(self, path: str | os.PathLike) -> torch.Tensor:
        return (self._reader or read_image_tensor)(path)

    def __repr__(self) -> str:
        return f"DecodedCache({str(self.directory)!r})"


def _load(file: Path, channels: tuple[int, ...] = _CHANNELS) -> torch.Tensor | None:
    """The (C, H, W) view of a stored (H, W, C) array; None if missing or damaged (or its channel
    count is not one of ``channels``)."""
    try:
        arr = np.load(file, allow_pickle=False)  # not memory-mapped: torch needs a writable array
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):  # truncated, not a .npy: decoded again and rewritten
        return None
    if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.dtype not in _DTYPES or arr.shape[2] not in channels:
        return None
    return torch.from_numpy(arr).permute(2, 0, 1)
