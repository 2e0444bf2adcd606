"""``cen train`` / ``cen eval`` end to end on a handful of generated scenes (tiny model, 32x40)."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from cen.cli.main import main
from tests.train.fakes import spy_on_loaded_models

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _args(tmp, *extra):
    return [
        str(CONFIGS / "scenes.yaml"),
        f"data.root={tmp}/scenes",
        "data.generate={num: 20, height: 32, width: 40, workers: 1}",
        "model.name=tiny",
        "train.batch_size=4",
        "train.device=cpu",
        "train.progress=false",
        "eval.num_images=1",
        "optim.stages=[{epochs: 1, encoder_lr: 0.05, decoder_lr: 0.05}]",
        f"run.dir={tmp}/runs",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    assert main(["train", *_args(tmp)]) == 0  # generates the scenes on first use
    return tmp


def test_train_generates_data_trains_and_prints_the_table(trained, capsys):
    run = trained / "runs" / "scenes"
    assert (trained / "scenes" / "train.txt").is_file()
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "results.json"}
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"rgb", "depth", "ensemble"}


def test_eval_multiscale_flip_writes_scores(trained, capsys):
    out = trained / "eval"
    rc = main(
        [
            "eval",
            *_args(trained),
            "--checkpoint",
            str(trained / "runs" / "scenes" / "best.pt"),
            "--scales",
            "0.75",
            "1",
            "--flip",
            "--images",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "scales [0.75, 1.0], flip" in printed and "ensemble" in printed and "mIoU" in printed
    scores = json.loads((out / "scores.json").read_text())
    assert scores["flip"] is True and set(scores["scores"]) == {"rgb", "depth", "ensemble"}
    assert any((out / "images").iterdir())


def test_ctrl_c_saves_last_checkpoint_and_exits_130(trained, monkeypatch, capsys):
    from cen.train.trainer import Trainer

    original = Trainer.train_step

    def interrupted_step(self, batch):
        if self.global_step == 0:
            signal.raise_signal(signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    assert main(["train", *_args(trained, "run.name=ctrlc")]) == 130
    err = capsys.readouterr().err
    assert "SIGINT: finishing this step" in err and "interrupted after step 1" in err and "--resume" in err
    assert torch.load(trained / "runs" / "ctrlc" / "last.pt", weights_only=True)["progress"]["global_step"] == 1
    monkeypatch.undo()
    assert main(["train", *_args(trained, "run.name=ctrlc"), "--resume"]) == 0
    assert (trained / "runs" / "ctrlc" / "results.json").is_file()


def test_resume_flag_and_existing_run(trained, capsys):
    assert main(["train", *_args(trained)]) == 2
    assert "--resume" in capsys.readouterr().err
    # Resuming a finished run changes nothing and still reports the scores.
    before = torch.load(trained / "runs" / "scenes" / "last.pt", weights_only=True)["models"]["model"]
    assert main(["train", *_args(trained), "--resume"]) == 0
    after = torch.load(trained / "runs" / "scenes" / "last.pt", weights_only=True)["models"]["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.nope=1"], "unknown config key 'train.nope'; valid keys under 'train' are"),
        (["data.num_classes=3"], "num_classes"),
        (["run.name=x", "modalities=[rgb,depth,normals]"], "normals"),
    ],
)
def test_train_errors_are_one_clear_line(trained, capsys, extra, message):
    assert main(["train", *_args(trained, "run.name=err", *extra)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cen train: error:") and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_reported(trained, capsys):
    assert main(["train", *_args(trained, "train.device=cuda", "run.name=gpu")]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_missing_modality_folder_is_named(trained, tmp_path, capsys):
    root = tmp_path / "nodepth"
    shutil.copytree(trained / "scenes", root)
    shutil.rmtree(root / "depth")
    assert main(["train", *_args(trained, f"data.root={root}", "run.name=nodepth")]) == 2
    assert "depth" in capsys.readouterr().err


def test_eval_rejects_foreign_and_mismatched_checkpoints(trained, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    assert main(["eval", *_args(trained), "--checkpoint", str(junk)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    best = str(trained / "runs" / "scenes" / "best.pt")
    assert main(["eval", *_args(trained, "modalities=[rgb]"), "--checkpoint", best]) == 2
    assert "modalities: checkpoint ['rgb', 'depth'] vs config ['rgb']" in capsys.readouterr().err


def test_overrides_may_follow_options():
    from cen.cli.main import build_parser

    args = build_parser().parse_args(["train", "scenes", "--resume", "a=1", "b.c=2"])
    assert args.resume and args.overrides == ["a=1", "b.c=2"]
    args = build_parser().parse_args(["eval", "scenes", "x=1", "--checkpoint", "c.pt", "y=2", "--scales", "0.5", "1"])
    assert args.overrides == ["x=1", "y=2"] and args.scales == [0.5, 1.0] and args.checkpoint == "c.pt"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_eval_runs_the_model_in_the_configs_precision_and_layout(trained, monkeypatch, capsys, precision):
    seen = spy_on_loaded_models(monkeypatch)
    checkpoint_path = str(trained / "runs" / "scenes" / "best.pt")
    layout = "train.channels_last=true" if precision == "bf16" else "train.channels_last=false"
    args = ["eval", *_args(trained, f"train.precision={precision}", layout), "--checkpoint", checkpoint_path]
    assert main(args) == 0
    assert seen and set(seen) == {(precision == "bf16", precision == "bf16")}


def test_auto_precision_is_resolved_recorded_and_reused_by_eval(trained, monkeypatch, capsys):
    from cen.train import hardware

    monkeypatch.setattr(hardware, "cpu_choice", lambda: ("bf16", "fake CPU with native bf16"))
    args = _args(trained, "run.name=auto", "train.precision=auto", "train.channels_last=auto")
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    assert "precision bf16, channels-last (fake CPU with native bf16)" in err and "threads" in err
    run = trained / "runs" / "auto"
    saved = (run / "config.yaml").read_text()
    assert "precision: bf16" in saved and "channels_last: true" in saved
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert (start["event"], start["precision"], start["channels_last"]) == ("start", "bf16", True)
    assert start["threads"] == torch.get_num_threads() >= 1
    results = json.loads((run / "results.json").read_text())
    assert (results["precision"], results["channels_last"]) == ("bf16", True)
    # Evaluated on a machine whose probe says fp32: auto takes what the checkpoint recorded.
    monkeypatch.setattr(hardware, "cpu_choice", lambda: ("fp32", "fake CPU without bf16"))
    seen = spy_on_loaded_models(monkeypatch)
    out = trained / "eval_auto"
    assert main(["eval", *args, "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["precision"], scores["channels_last"]) == ("bf16", True)
    assert seen and all(seen_autocast and seen_cl for seen_autocast, seen_cl in seen)
    # An explicit value wins over the checkpoint's.
    seen.clear()
    assert main(["eval", *args, "train.precision=fp32", "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    assert json.loads((out / "scores.json").read_text())["precision"] == "fp32"
    assert seen and not any(autocast for autocast, _ in seen)
