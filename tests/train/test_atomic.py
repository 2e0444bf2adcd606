"""Every file of a run folder is written atomically: an interrupted write keeps the old file."""

from __future__ import annotations

import json
import os

import pytest

import cen.atomic
from cen.atomic import atomic_write_json, atomic_write_text
from cen.train.config import load_config
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


def test_interrupted_text_and_json_writes_keep_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"miou": 0.5})
    real_fsync = os.fsync

    def crash(fd):  # the new bytes are written, then the machine "stops"
        raise OSError("power cut")

    monkeypatch.setattr(cen.atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="power cut"):
        atomic_write_json(path, {"miou": 0.9, "per_class": list(range(1000))})
    with pytest.raises(OSError, match="power cut"):
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    monkeypatch.setattr(cen.atomic.os, "fsync", real_fsync)
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left behind
    with pytest.raises(TypeError):  # not serialisable: fails before the file is touched
        atomic_write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"miou": 0.5}


def test_the_trainer_writes_every_run_file_atomically(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append(os.path.basename(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(cen.atomic.os, "replace", spy)
    cfg = load_config(None, tiny_overrides(tmp_path, "optim.stages=[{epochs: 1, encoder_lr: 0.05, decoder_lr: 0.05}]"))
    Trainer(cfg, datasets=fake_datasets()).fit()
    assert {"config.yaml", "last.pt", "best.pt", "results.json"} <= set(replaced)
