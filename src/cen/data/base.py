"""The dataset class every layout builds on: a list of entries and one decoder per role."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from cen.core.stacking import check_names
from cen.data.images import image_size, read_image
from cen.data.lists import Entry
from cen.data.tvtensors import unwrap_sample, wrap

Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def modality_names(value: str | Sequence[str], dataset: str, known: Sequence[str] | None = None) -> tuple[str, ...]:
    """The modalities a data set was asked for, as a tuple: one name or several, each once, none of
    them ``mask`` (the labels' role), all in ``known`` when it is given.

    Raises ValueError (TypeError for a name that is not a string) naming ``dataset``, the value
    and what was expected."""
    names = (value,) if isinstance(value, str) else tuple(value)
    if "mask" in names:
        raise ValueError(f"{dataset}: modalities {list(names)} include 'mask', the labels' role, not a modality")
    unknown = [n for n in names if known is not None and n not in known]
    if unknown:
        raise ValueError(f"{dataset} has the modalities {list(known)}; got {list(names)} ({unknown} unknown)")
    return check_names(names, f"{dataset}: modalities")


def load_entry(
    entry: Entry,
    decoders: Mapping[str, Callable],
    *,
    read: Callable[[Any], Any] = read_image,
    size_of: Callable[[Any], tuple[int, int]] = image_size,
    decode: Callable[[Any, Any, Any], torch.Tensor] = lambda decoder, pixels, path: decoder(pixels, path),
    expected_size: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Read and decode every file of ``entry`` (plain tensors, masks uint8).

    ``read(path)`` gives a file's pixels (default: numpy arrays), ``size_of(pixels)`` their
    (H, W) and ``decode(decoder, pixels, path)`` the role's tensor. ``expected_size``: the
    (H, W) every file must have (``data.image_size``), or None.

    Raises FileNotFoundError / ValueError naming the file and the list line, including
    when two files of the sample differ in size (names both and their sizes) or a file is not
    ``expected_size`` (names it, its size and the expected one)."""
    sample: dict[str, torch.Tensor] = {}
    first: tuple[str, tuple[int, int]] | None = None
    for role, decoder in decoders.items():
        path = entry.files[role]
        try:
            arr = read(path)
            size = size_of(arr)
            if expected_size is not None and tuple(size) != tuple(expected_size):
                raise ValueError(
                    f"{path} is {size[0]}x{size[1]} (HxW); expected {expected_size[0]}x{expected_size[1]} "
                    "(data.image_size); images are not resized on loading"
                )
            if first is None:
                first = (str(path), size)
            elif size != first[1]:
                raise ValueError(
                    f"{path} is {size[0]}x{size[1]} (HxW) but {first[0]} is {first[1][0]}x{first[1][1]}; "
                    "all modalities of a sample must have the same size"
                )
            sample[role] = decode(decoder, arr, path)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{err} [sample {entry.where()}]") from err
    return sample


class MultiModalDataset(Dataset):
    """Samples of aligned modalities read from a list of :class:`~cen.data.lists.Entry`.

    ``decoders`` maps each role (modality name, ``"mask"`` or ``"target"``) to a decoder
    from :mod:`cen.data.decode`. ``__getitem__`` returns a dict of plain tensors: float
    (C, H, W) per modality and int64 (H, W) ``"mask"``. When ``transform`` is given, it
    receives the sample as tv_tensors (``Image``, :class:`~cen.data.tvtensors.Depth`,
    :class:`~cen.data.tvtensors.NormalMap`, ``Mask``) so torchvision v2 transforms apply
    the same random parameters to every modality and the mask.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        decoders: Mapping[str, Callable],
        transform: Transform | None = None,
        roles: Mapping[str, str] | None = None,
    ) -> None:
        self.entries = list(entries)
        self.decoders = dict(decoders)
        self.transform = transform
        # roles: file role -> key in the sample (e.g. the target domain -> "target")
        self.roles = dict(roles or {})

    def __len__(self) -> int:
        return len(self.entries)

    def files(self, index: int) -> dict[str, str]:
        """Paths of the files of sample ``index``, by sample key."""
        entry = self.entries[index]
        return {self.roles.get(r, r): str(entry.files[r]) for r in self.decoders}

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        raw = load_entry(entry, self.decoders)
        sample = {self.roles.get(r, r): wrap(t, self.decoders[r].kind) for r, t in raw.items()}
        if self.transform is not None:
            sample = self.transform(sample)
        return unwrap_sample(sample)
