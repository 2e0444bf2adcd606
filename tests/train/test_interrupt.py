"""Ctrl-C (SIGINT) or SIGTERM during training: finish the step, save last.pt, resume exactly."""

import signal

import pytest
import torch

from cen.train.config import load_config
from cen.train.interrupt import StopRequest, TrainingInterrupted
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides

STAGES = (
    "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.05}, {epochs: 1, encoder_lr: 0.01, decoder_lr: 0.02}]"
)


def _signal_during_step(trainer, step, signals):
    """Make ``trainer`` receive ``signals`` in the middle of its step number ``step`` (1-based)."""
    original = trainer.train_step

    def train_step(batch):
        if trainer.global_step + 1 == step:
            for sig in signals:
                signal.raise_signal(sig)
        return original(batch)

    trainer.train_step = train_step


def _params(path):
    return torch.load(path, weights_only=True)["models"]["model"]


@pytest.mark.parametrize("stop_step, sig", [(3, signal.SIGINT), (2, signal.SIGTERM)])
def test_signal_saves_after_the_step_and_resume_is_exact(tmp_path, stop_step, sig):
    # stop_step 2 is the last step of epoch 1: the epoch (and its validation) completes first
    full = load_config(None, tiny_overrides(tmp_path, STAGES, "run.name=full", "eval.test=false"))
    Trainer(full, datasets=fake_datasets()).fit()
    cfg = load_config(None, tiny_overrides(tmp_path, STAGES, "run.name=part", "eval.test=false"))
    trainer = Trainer(cfg, datasets=fake_datasets())
    _signal_during_step(trainer, stop_step, [sig])
    handler_before = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted, match=f"after step {stop_step}.*--resume"):
        trainer.fit()
    assert signal.getsignal(sig) == handler_before
    saved = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["progress"]
    assert saved["global_step"] == stop_step
    Trainer(cfg, datasets=fake_datasets(), resume=True).fit()
    a, b = _params(tmp_path / "full" / "last.pt"), _params(tmp_path / "part" / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_second_ctrl_c_aborts_without_saving(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, "run.name=abort", "eval.test=false"))
    trainer = Trainer(cfg, datasets=fake_datasets())
    _signal_during_step(trainer, 1, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit()
    assert not isinstance(info.value, TrainingInterrupted)
    assert not (tmp_path / "abort" / "last.pt").exists()


def test_stop_request_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        assert not stop.agreed(torch.device("cpu"))
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop.agreed(torch.device("cpu"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
