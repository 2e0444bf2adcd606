"""Two CPU processes (gloo) train exactly what one process trains at the same global batch.

A true comparison needs the per-process batch statistics out of the way: without
SyncBatchNorm (which has no CPU kernel) each process would normalise with the
statistics of its half of the batch. So both runs use ``model.bn_stats=frozen``
(the reference code's mode: norms in eval mode, gamma and beta still trained),
masks without ignored pixels (so the mean of the per-process losses is the loss of
the global batch), and a model without dropout. DDP then averages gradients that
sum to the single-process gradient; the validation scores, from confusion
matrices summed over the processes, must match as well.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from cen.tasks.segmentation import TinySegNet
from cen.train.config import load_config
from cen.train.runlog import read_metrics
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides

OVERRIDES = (
    "model.bn_stats=frozen",
    "eval.test=false",
    "train.batch_size=4",
    "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.05}]",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from cen.train import distributed

    try:
        cfg = load_config(None, tiny_overrides(root, *OVERRIDES, "run.name=ddp"))
        Trainer(cfg, datasets=fake_datasets(n_train=8, n_eval=5)).fit()
    finally:
        distributed.shutdown()


def test_two_gloo_processes_match_one(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, *OVERRIDES, "run.name=single"))
    Trainer(cfg, datasets=fake_datasets(n_train=8, n_eval=5)).fit()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert one["progress"]["global_step"] == two["progress"]["global_step"] == 4
    for key, value in one["models"]["model"].items():
        torch.testing.assert_close(two["models"]["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    torch.manual_seed(cfg.train.seed)
    initial = TinySegNet(3, ["rgb", "depth"]).state_dict()
    assert not torch.allclose(initial["model.1.weight"], one["models"]["model"]["model.1.weight"])  # it did train
    val1 = [r["scores"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "val"]
    val2 = [r["scores"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["kind"] == "val"]
    assert len(val1) == len(val2) == 2
    for a, b in zip(val1, val2):
        for branch in a:
            assert a[branch]["miou"] == pytest.approx(b[branch]["miou"], abs=1e-6)
