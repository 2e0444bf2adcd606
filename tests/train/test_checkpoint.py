import random

import numpy as np
import pytest
import torch

from cen.atomic import atomic_torch_save as atomic_save
from cen.tasks.segmentation import TinySegNet
from cen.train.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    rng_state,
    set_rng_state,
)


def _ckpt(model):
    return {"format": FORMAT, "version": 1, "model": model.state_dict(), "progress": {"epoch": 0}, "rng": rng_state()}


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(2)}, path)
    atomic_save({"a": torch.zeros(2)}, path)
    assert torch.load(path)["a"].sum() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def broken(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.load(path)["a"].sum() == 2 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    model = TinySegNet(3, ["rgb", "depth"])
    good = tmp_path / "good.pt"
    atomic_save(_ckpt(model), good)
    assert load_checkpoint(good)["format"] == FORMAT
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt is not a readable checkpoint"):
        load_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare state dict.*convert-checkpoint"):
        load_checkpoint(bare)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_other_architecture_names_the_mismatched_keys(tmp_path):
    two = TinySegNet(3, ["rgb", "depth"])
    one = TinySegNet(3, ["rgb"])
    path = tmp_path / "two.pt"
    atomic_save(_ckpt(two), path)
    state = load_checkpoint(path)["model"]  # a version-1 training checkpoint is still read
    with pytest.raises(CheckpointError) as err:
        load_model_state(one, state, str(path))
    msg = str(err.value)
    assert "ensemble.alpha" in msg and "shape mismatches" in msg and "(16,) vs model (8,)" in msg
    load_model_state(TinySegNet(3, ["rgb", "depth"]), state, str(path))  # the right model loads


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
