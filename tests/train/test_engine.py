"""The engine runs any task: a toy task with two models and two optimisers (a GAN's shape) trains,
selects best.pt by a lower-is-better score, resumes exactly with every model and optimiser,
and loads back with cen.load_model. Plus the registries' errors and the frozen-statistics guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

import cen
from cen.tasks import DATASETS, TASKS, RegistryError, Task, build_task
from cen.tasks.base import Score
from cen.train.config import ConfigError, load_config
from cen.train.runlog import read_metrics
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


class Pairs(Dataset):
    """``{"rgb": x, "target": 0.5 * x}`` with torch-noise augmentation (the engine seeds it per sample)."""

    def __init__(self, n, seed, augment=False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 4, 4, generator=g)
        self.augment = augment

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + (0.1 * torch.randn(3, 4, 4) if self.augment else 0)
        return {"rgb": x, "target": 0.5 * x}


class L1Metric:
    """Mean absolute error per branch (the toy task's metric accumulator)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, branch, prediction, target):
        self.sums[branch] = self.sums.get(branch, 0.0) + float((prediction - target).abs().sum())
        self.counts[branch] = self.counts.get(branch, 0) + target.numel()

    def compute(self):
        return {b: {"l1": self.sums[b] / self.counts[b]} for b in self.sums}


class TwoModelTask(Task):
    """A generator trained against a critic, each with its own optimiser, stepped by the task."""

    name = "two_models"
    primary = "generator"
    target_key = "target"
    scores = (Score("l1", "L1", higher_is_better=False),)

    def build_models(self):
        return {"generator": nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout(0.2)), "critic": nn.Conv2d(3, 1, 1)}

    def outputs(self, model):
        return ["generator"]

    def configure_optimizers(self, models):
        return {
            "generator": torch.optim.Adam([{"params": models["generator"].parameters(), "name": "decoder"}]),
            "critic": torch.optim.SGD(
                [{"params": models["critic"].parameters(), "name": "decoder"}], lr=0.1, momentum=0.9
            ),
        }

    def training_step(self, batch, models, nets, optimizers):
        x, y = batch["rgb"], batch["target"]
        fake = nets["generator"](x)
        critic = (nets["critic"](fake.detach()) - nets["critic"](y)).mean()
        self.optimize(critic, optimizers["critic"])
        loss = (fake - y).abs().mean() - 0.01 * nets["critic"](fake).mean()
        self.optimize(loss, optimizers["generator"])
        return {"loss": loss.detach(), "critic": critic.detach()}

    def eval_step(self, batch, models, *, device, modalities, **options):
        return {"generator": models["generator"](batch["rgb"].to(device))}

    def make_metrics(self, branches, device):
        return L1Metric()

    def summary(self, models):
        return {}


if TwoModelTask.name not in TASKS:
    TASKS.register(TwoModelTask.name)(TwoModelTask)

STAGES = (
    "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.01}, {epochs: 1, encoder_lr: 0.01, decoder_lr: 0.002}]"
)


def _cfg(tmp_path, *extra):
    common = ["task=two_models", "modalities=[rgb]", "train.batch_size=4", "train.progress=false",
              "train.device=cpu", "train.log_every=1", "eval.num_images=0", f"run.dir={tmp_path}", "run.name=run"]  # fmt: skip
    return load_config(None, [*common, STAGES, *extra])


def _data():
    return {"train": Pairs(8, 1, augment=True), "val": Pairs(4, 2), "test": Pairs(4, 3)}


def test_a_second_task_trains_resumes_exactly_and_loads(tmp_path, capsys):
    out = Trainer(_cfg(tmp_path, "run.name=full"), datasets=_data()).fit()
    Trainer(_cfg(tmp_path, "run.name=part", "train.max_steps=3"), datasets=_data()).fit()
    Trainer(_cfg(tmp_path, "run.name=part"), datasets=_data(), resume=True).fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert set(a["models"]) == set(a["optimizers"]) == {"generator", "critic"}
    for name in a["models"]:
        for key, value in a["models"][name].items():
            assert torch.equal(value, b["models"][name][key]), (name, key)
    momentum = a["optimizers"]["critic"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, b["optimizers"]["critic"]["state"][0]["momentum_buffer"])
    # best.pt by the lowest validation l1
    val = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "val"]
    scores = [r["scores"]["generator"]["l1"] for r in val]
    assert out["best_epoch"] == 1 + min(range(len(scores)), key=scores.__getitem__)
    assert out["best_val_l1"] == pytest.approx(min(scores)) and math.isfinite(out["test"]["generator"]["l1"])
    train = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    assert {"critic", "lr/generator/decoder", "lr/critic/decoder"} <= set(train[0])
    assert train[-1]["lr/generator/decoder"] == 0.002  # the stage schedule reached every optimiser
    out_text = capsys.readouterr().out
    assert "branch            L1" in out_text and "generator     0." in out_text  # the generic table of its Score
    generator = cen.load_model(tmp_path / "full" / "best.pt")
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["models"]["generator"]
    assert all(torch.equal(generator.state_dict()[k], best[k]) for k in best)


def test_the_engine_batches_with_the_task_collate(tmp_path):
    batches = []

    def collate(samples):  # default batching, plus a record of the batch sizes it formed
        batches.append(len(samples))
        return default_collate(samples)

    cfg = _cfg(tmp_path, "run.name=collate", "train.max_steps=2", "eval.test=false")
    task = TwoModelTask(cfg)
    task.collate_fn = collate
    Trainer(cfg, datasets=_data(), task=task).fit()
    train_batch = cfg.train.batch_size
    assert batches[:2] == [train_batch, train_batch]  # the two training steps
    assert len(batches) > 2 and max(batches[2:]) <= cfg.eval.batch_size  # then the validation loader


def test_registries_name_the_known_entries(tmp_path):
    cfg = load_config(None, ["model.name=tiny"])
    cfg.task = "detection"
    with pytest.raises(RegistryError, match="unknown task 'detection'; known: segmentation"):
        build_task(cfg)
    with pytest.raises(ValueError, match="no data for task 'translation'; for translation use one of: .*taskonomy"):
        DATASETS.get("nyudv2").reader("nyudv2", "translation")
    assert {"nyudv2", "sunrgbd", "scenes", "taskonomy", "folder"} <= set(DATASETS.names())


def test_frozen_statistics_without_weights_are_refused(tmp_path, capsys):
    # the trap of configs/nyudv2_r101.yaml model.pretrained=null: norms at mean 0 / variance 1
    cfg = load_config(None, tiny_overrides(tmp_path, "model.name=refinenet", "model.bn_stats=frozen"))
    with pytest.raises(
        ConfigError, match="model.bn_stats=frozen .* model.pretrained is null: set model.bn_stats=train"
    ):
        Trainer(cfg, datasets=fake_datasets())
    from cen.cli.main import main

    configs = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"
    assert main(["train", str(configs / "nyudv2_r101.yaml"), "model.pretrained=null", f"run.dir={tmp_path}"]) == 2
    assert "model.bn_stats=train" in capsys.readouterr().err
    build_task(load_config(configs / "nyudv2_r101.yaml")).check_training_config()  # with the weights: fine
    build_task(
        load_config(configs / "nyudv2_r101.yaml", ["model.pretrained=null", "model.bn_stats=train"])
    ).check_training_config()
