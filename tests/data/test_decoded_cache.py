"""The decoded-pixel cache (``cache_dir`` / ``data.cache_dir``) gives the samples of the uncached
loaders bit for bit, decodes each file once, and recovers from edited sources and damaged entries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import cen.data.decoded_cache as decoded_cache
from cen.data import NYUDv2
from cen.data.decoded_cache import CacheDirError, DecodedCache
from cen.data.synth import NUM_CLASSES, generate
from cen.data.tensor_images import read_image_tensor
from cen.data.transforms import segmentation_train
from cen.tasks.datasets import build_splits
from cen.train.config import load_config
from tests.data.conftest import make_folder, write_png

MODALITIES = ("rgb", "depth", "normal")  # 8-bit RGB, 16-bit grey, 8-bit RGB of another kind; masks 8-bit grey


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Generated scenes at 48x64 in the NYUDv2 layout (rgb, depth, masks, normal, ...)."""
    root = tmp_path_factory.mktemp("scenes")
    generate(root, 4, height=48, width=64, seed=3, splits=(1.0, 0.0, 0.0), progress=False)
    return root


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The paths the cache decodes (its calls of read_image_tensor), in order."""
    seen: list[str] = []

    def counting(path):
        seen.append(str(path))
        return read_image_tensor(path)

    monkeypatch.setattr(decoded_cache, "read_image_tensor", counting)
    return seen


def train_set(root: Path, cache_dir: Path | None) -> NYUDv2:
    transform = segmentation_train(44, scale_range=(0.5, 2.0), shorter_side=40)
    return NYUDv2(
        root, "train.txt", modalities=MODALITIES, num_classes=NUM_CLASSES, transform=transform, cache_dir=cache_dir
    )


def draw(dataset, index: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dataset[index]


def test_cached_samples_equal_uncached_bit_for_bit(scenes, tmp_path):
    plain, cached = train_set(scenes, None), train_set(scenes, tmp_path / "cache")
    for epoch in range(2):  # the pass that fills the cache, then the one that reads it
        for i in range(len(plain)):
            want, got = draw(plain, i, 10 * epoch + i), draw(cached, i, 10 * epoch + i)
            assert want.keys() == got.keys() == {*MODALITIES, "mask"}
            for key in want:
                assert want[key].dtype == got[key].dtype, (epoch, i, key)
                assert torch.equal(want[key], got[key]), (epoch, i, key)
    untransformed = NYUDv2(scenes, "train.txt", modalities=MODALITIES, num_classes=NUM_CLASSES)
    cached.transform = None
    for key, value in untransformed[1].items():
        assert torch.equal(value, cached[1][key]), key


def test_cache_returns_what_the_decoder_returns(scenes, tmp_path):
    cache = DecodedCache(tmp_path / "cache")
    for name in ("rgb", "depth", "masks"):
        path = scenes / name / "000000.png"
        want = read_image_tensor(path)
        for _ in range(2):
            got = cache.read(path)
            assert (got.dtype, got.shape, got.stride()) == (want.dtype, want.shape, want.stride()), name
            assert torch.equal(got, want), name
    assert {p.parent.name for p in cache.directory.rglob("*.npy")} <= {f"{i:02x}" for i in range(256)}


def test_second_pass_does_not_decode(scenes, tmp_path, decodes):
    ds = train_set(scenes, tmp_path / "cache")
    files = {f for i in range(len(ds)) for f in ds.files(i).values()}
    for i in range(len(ds)):
        ds[i]
    assert sorted(decodes) == sorted(files)  # each file decoded exactly once
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(files)
    for i in range(len(ds)):
        ds[i]
    again = train_set(scenes, tmp_path / "cache")  # another data set (a worker, a later run) on the same folder
    again[0]
    assert len(decodes) == len(files)


def test_edited_source_is_decoded_again(nyu_root, tmp_path, decodes):
    cache = DecodedCache(tmp_path / "cache")
    path = nyu_root / "rgb" / "000001.png"
    old = cache.read(path)
    new_pixels = 255 - old.permute(1, 2, 0).numpy()
    stamp = os.stat(path).st_mtime_ns
    write_png(path, np.ascontiguousarray(new_pixels))
    os.utime(path, ns=(stamp + 2_000_000_000, stamp + 2_000_000_000))
    got = cache.read(path)
    assert torch.equal(got, torch.from_numpy(new_pixels).permute(2, 0, 1))
    assert not torch.equal(got, old)
    assert len(decodes) == 2
    assert torch.equal(cache.read(path), got) and len(decodes) == 2


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _garbage(file: Path) -> None:
    file.write_bytes(b"not a numpy file")


def _float_pixels(file: Path) -> None:
    np.save(file, np.zeros((12, 16, 3), np.float32))


def _wrong_channels(file: Path) -> None:
    np.save(file, np.zeros((12, 16, 4), np.uint8))


@pytest.mark.parametrize("damage", [_truncate, _garbage, _float_pixels, _wrong_channels])
def test_damaged_entry_is_decoded_again_and_rewritten(nyu_root, tmp_path, decodes, damage):
    cache = DecodedCache(tmp_path / "cache")
    path = nyu_root / "rgb" / "000002.png"
    want = cache.read(path)
    entry = cache.entry(path)
    good = entry.read_bytes()
    damage(entry)
    assert torch.equal(cache.read(path), want)
    assert len(decodes) == 2
    assert entry.read_bytes() == good  # rewritten
    assert torch.equal(cache.read(path), want) and len(decodes) == 2


def test_unwritable_cache_dir_names_it_and_the_key(nyu_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError) as info:
        NYUDv2(nyu_root, "train.txt", cache_dir=blocker / "cache")
    assert info.type is CacheDirError
    message = str(info.value)
    assert str(blocker / "cache") in message and "data.cache_dir" in message and "\n" not in message


def test_entry_that_cannot_be_written_names_the_cache_dir(nyu_root, tmp_path):
    cache = DecodedCache(tmp_path / "cache")
    path = nyu_root / "depth" / "000001.png"
    cache.entry(path).parent.write_text("")  # a file where the entry's subfolder should be
    with pytest.raises(CacheDirError, match="data.cache_dir") as info:
        cache.read(path)
    assert str(cache.directory) in str(info.value)


def test_bad_source_files_give_the_decoders_errors(nyu_root, tmp_path):
    (nyu_root / "rgb" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    errors = []
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(ValueError) as info:
            NYUDv2(nyu_root, "train.txt", cache_dir=cache_dir)[1]
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "000002.png" in errors[1]
    missing = nyu_root / "rgb" / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png: no such file"):
        DecodedCache(tmp_path / "cache").read(missing)
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing stored for files that failed


@pytest.mark.parametrize("dataset", ["nyudv2", "sunrgbd", "folder"])
def test_config_key_reaches_the_data_set(scenes, tmp_path, monkeypatch, dataset, decodes):
    if dataset == "folder":
        root, lists = make_folder(tmp_path / "own"), ["data.train_list=split.txt"]
    else:
        root, lists = scenes, []
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"data.dataset={dataset}",
        f"data.root={root}",
        f"data.num_classes={NUM_CLASSES}",
        "modalities=[rgb, depth]",
        "data.val_list=null",
        *lists,
    ]
    assert load_config(None, overrides).data.cache_dir is None  # off by default
    cfg = load_config(None, [*overrides, "data.cache_dir=relative/cache"])  # relative to the working directory
    assert cfg.data.cache_dir == "relative/cache"
    splits = build_splits(cfg, "segmentation", {"train": None, "eval": None}, splits=("train",))
    train = splits["train"]
    train[0]
    train[0]
    assert train.dataset.cache.directory == tmp_path / "relative" / "cache"
    assert len(list((tmp_path / "relative" / "cache").rglob("*.npy"))) == len(decodes) == 3
