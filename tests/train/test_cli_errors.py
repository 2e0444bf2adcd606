"""Command-line errors: the user's mistakes in one line, bugs with their traceback, ``--debug`` for both."""

from __future__ import annotations

from pathlib import Path

import pytest

from cen.cli.main import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _train(tmp_path, *extra):
    return [
        "train",
        str(CONFIGS / "scenes.yaml"),
        f"run.dir={tmp_path}",
        f"data.root={tmp_path}/none",
        "train.device=cpu",
        *extra,
    ]


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(_train(tmp_path, "task=detection")) == 2
    err = capsys.readouterr().err
    assert err.startswith("cen train: error: task='detection' is not valid; expected one of ['segmentation'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("how", ["flag-first", "flag-after", "env"])
def test_debug_shows_the_traceback_of_user_errors(tmp_path, capsys, monkeypatch, how):
    argv = _train(tmp_path, "task=detection")
    if how == "flag-first":
        argv = ["--debug", *argv]
    elif how == "flag-after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("CEN_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("cen train: error: task='detection'")


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    from cen.train.trainer import Trainer

    def bug(self):
        raise KeyError("an internal key")  # a bug, not the user's input

    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(Trainer, "fit", bug)
    with pytest.raises(KeyError, match="an internal key"):  # not swallowed into one line
        main(_train(tmp_path, "model.name=tiny"))


def test_missing_user_file_and_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "s"), "--splits", "a,b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cen data synth: error: --splits 'a,b'") and "Traceback" not in err
    assert main(["data", "synth", str(tmp_path / "s"), "--num", "0"]) == 2
    assert "num must be >= 1" in capsys.readouterr().err
