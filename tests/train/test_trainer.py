import json

import pytest
import torch

from cen.core.norms import _ModalityNorm
from cen.errors import UserError
from cen.tasks.segmentation import SegmentationLoss, TinySegNet, check_labels
from cen.tasks.sparsity import SparsityPenalty
from cen.train.checkpoint import CheckpointError
from cen.train.config import load_config
from cen.train.distributed import DeviceError
from cen.train.loaders import EpochSampler, LoaderSettings, eval_loader, train_loader
from cen.train.runlog import read_metrics
from cen.train.trainer import RunExistsError, Trainer
from tests.train.fakes import FakeScenes, fake_datasets, tiny_overrides


def _params(path):
    return torch.load(path, weights_only=True)["models"]["model"]


def test_run_writes_config_metrics_checkpoints_and_scores(tmp_path, capsys):
    cfg = load_config(None, tiny_overrides(tmp_path, "eval.num_images=1", "eval.scales=[1.0, 0.5]", "eval.flip=true"))
    out = Trainer(cfg, datasets=fake_datasets()).fit()
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "results.json", "figure_a.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir()) and any((run / "images").rglob("*.png"))
    assert load_config(run / "config.yaml").model.name == "tiny"  # the saved config reloads
    records = read_metrics(run / "metrics.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 4 and kinds.count("val") == 2 and kinds[-1] == "test"
    val = [r for r in records if r["kind"] == "val"][-1]
    assert set(val["scores"]) == {"rgb", "depth", "ensemble"} and set(val["alpha"]) == {"rgb", "depth"}
    assert next(iter(val["exchange"].values())).keys() == {"rgb", "depth"}  # fraction per layer and modality
    assert set(out["test"]["ensemble"]) >= {"pixel_acc", "mean_acc", "miou", "per_class_iou"}
    assert json.loads((run / "results.json").read_text())["best_epoch"] in (1, 2)
    table = capsys.readouterr().out
    assert "mIoU" in table and "ensemble" in table and "scales [1.0, 0.5], flip" in table
    with pytest.raises(RunExistsError, match="--resume"):
        Trainer(cfg, datasets=fake_datasets())
    # --overwrite starts afresh: the old run's log, scores and images go, files the user put there stay
    (run / "notes.txt").write_text("mine")
    again = load_config(None, tiny_overrides(tmp_path, "train.max_steps=1", "eval.test=false"))
    Trainer(again, datasets=fake_datasets(), overwrite=True)
    assert not (run / "results.json").exists() and not (run / "images").exists() and not (run / "best.pt").exists()
    assert (run / "notes.txt").read_text() == "mine"
    Trainer(again, datasets=fake_datasets(), overwrite=True).fit()
    assert [r["kind"] for r in read_metrics(run / "metrics.jsonl")].count("info") == 1


def test_resume_after_k_steps_matches_an_uninterrupted_run(tmp_path):
    # 3 epochs of 2 steps in two stages (optimizer reset at the stage change), random augmentation
    # (python and torch RNGs in the data set), stopped mid-epoch after step 3, then resumed.
    stages = "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.05}, {epochs: 1, encoder_lr: 0.01, decoder_lr: 0.02}]"
    full = load_config(None, tiny_overrides(tmp_path, stages, "run.name=full", "eval.test=false"))
    Trainer(full, datasets=fake_datasets()).fit()
    part = load_config(None, tiny_overrides(tmp_path, stages, "run.name=part", "eval.test=false", "train.max_steps=3"))
    Trainer(part, datasets=fake_datasets()).fit()
    stopped = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["progress"]
    assert (stopped["epoch"], stopped["batch"], stopped["global_step"]) == (1, 1, 3)
    resumed = load_config(None, tiny_overrides(tmp_path, stages, "run.name=part", "eval.test=false"))
    Trainer(resumed, datasets=fake_datasets(), resume=True).fit()
    a, b = _params(tmp_path / "full" / "last.pt"), _params(tmp_path / "part" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["progress"]["global_step"] == 6
    other = load_config(None, tiny_overrides(tmp_path, stages, "run.name=part", "train.batch_size=2"))
    with pytest.raises(CheckpointError, match="train.batch_size: checkpoint 4 vs config 2"):
        Trainer(other, datasets=fake_datasets(), resume=True).fit()


def test_sampler_resumes_mid_epoch_and_shards_global_batches():
    whole = list(EpochSampler(10, 4, seed=3))
    assert len(whole) == 8 and len({i for _, i in whole}) == 8
    s = EpochSampler(10, 4, seed=3)
    s.set_epoch(0, start_batch=1)
    assert list(s) == whole[4:]
    r0, r1 = EpochSampler(10, 2, rank=0, world_size=2, seed=3), EpochSampler(10, 2, rank=1, world_size=2, seed=3)
    assert list(r0)[:2] + list(r1)[:2] == whole[:4]  # the two processes split the same global batch


def test_loaders_read_each_process_shard_with_the_runs_settings():
    data = list(range(10))
    shards = [
        [int(i) for batch in eval_loader(data, 3, LoaderSettings(rank=r, world_size=2)) for i in batch] for r in (0, 1)
    ]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]  # every sample evaluated by exactly one process, in order
    pairs = LoaderSettings(collate_fn=lambda items: ("collated", len(items)))
    assert next(iter(eval_loader(data, 4, pairs))) == ("collated", 4)
    assert len(train_loader(data, 4, LoaderSettings(), seed=0)) == 2  # drop_last: 10 samples, 2 full batches
    with pytest.raises(UserError, match="10 samples, fewer than one global batch of 12; lower train.batch_size"):
        train_loader(data, 6, LoaderSettings(rank=0, world_size=2), seed=0)


def test_unimodal_config_trains_on_the_same_path(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, "modalities=[depth]", "eval.test=false"))
    trainer = Trainer(cfg, datasets=fake_datasets())
    assert trainer.task.select == "depth" and trainer.model.ensemble is None
    trainer.fit()
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"][-1]
    assert set(val["scores"]) == {"depth"}


def test_frozen_statistics_keep_running_stats_while_gamma_trains(tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path,
            "model.bn_stats=frozen",
            "eval.test=false",
            "optim.stages=[{epochs: 1, encoder_lr: 0.05, decoder_lr: 0.05}]",
        ),
    )
    trainer = Trainer(cfg, datasets=fake_datasets())
    norms = [m for m in trainer.model.modules() if isinstance(m, _ModalityNorm)]
    assert norms
    before = [(n.running_mean.clone(), n.weight.detach().clone()) for n in norms]
    trainer.fit()
    for n, (mean, gamma) in zip(norms, before):
        assert torch.equal(n.running_mean, mean)
        assert not torch.equal(n.weight.detach(), gamma)


def test_loss_terms_and_options():
    model = TinySegNet(3, ["rgb", "depth"])
    batch = FakeScenes(2)
    x = {k: torch.stack([batch[i][k] for i in range(2)]) for k in ("rgb", "depth")}
    mask = torch.stack([batch[i]["mask"] for i in range(2)])
    out = model(x)
    assert out["rgb"].shape[-2:] == (8, 8) and mask.shape[-2:] == (32, 32)
    ce_total, parts = SegmentationLoss()(out, mask)
    ce = sum(v for k, v in parts.items() if k.startswith("ce/"))
    assert set(parts) == {"ce/rgb", "ce/depth", "ce/ensemble"} and torch.allclose(ce_total, ce)
    once, l1 = SparsityPenalty(weight=0.1).loss(model, len(out))
    thrice, _ = SparsityPenalty(weight=0.1, per_output=True).loss(model, len(out))
    assert l1 > 0 and torch.allclose(once, 0.1 * l1) and torch.allclose(thrice, 0.3 * l1)
    assert SparsityPenalty(mode="none").loss(model, len(out)) == (None, None)
    assert SparsityPenalty(weight=0.1, solver="proximal").loss(model)[0] is None  # solved by its step, not the loss
    small, _ = SegmentationLoss(resize="masks")(out, mask)
    assert torch.isfinite(small) and not torch.allclose(small, ce_total)


def test_bad_inputs_are_reported_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"labels \[7\] outside 0..2 \(data.num_classes=3"):
        check_labels(torch.tensor([[0, 7, 255]]), 3)
    cfg = load_config(None, tiny_overrides(tmp_path))
    with pytest.raises(
        ValueError, match=r"modalities \['depth'\] named in the config are absent .* provides \['rgb'\]"
    ):
        Trainer(cfg, datasets=fake_datasets(modalities=("rgb",)))
    if not torch.cuda.is_available():
        cuda = load_config(None, tiny_overrides(tmp_path, "train.device=cuda:0"))
        with pytest.raises(DeviceError, match="CUDA"):
            Trainer(cuda, datasets=fake_datasets())
    with pytest.raises(ValueError, match=r"train.select='ensemble' is not an output .* \['rgb'\]"):
        Trainer(
            load_config(None, tiny_overrides(tmp_path, "modalities=[rgb]", "train.select=ensemble")),
            datasets=fake_datasets(),
        )
    too_few = load_config(None, tiny_overrides(tmp_path, "run.name=few", "data.num_classes=2"))
    with pytest.raises(ValueError, match="data.num_classes=2"):
        Trainer(too_few, datasets=fake_datasets()).fit()


def test_exchange_off_and_model_options(tmp_path):
    plain = TinySegNet(3, ["rgb", "depth"], exchange=False, ensemble=False)
    assert not any(getattr(m, "exchange", False) for m in plain.modules()) and plain.ensemble is None


def test_proximal_sparsity_drives_the_penalised_gammas_to_zero_and_exchanges(tmp_path):
    # 4 steps at lr 0.05 with lambda 5: each step shrinks the penalised gammas by 0.25
    cfg = load_config(
        None, tiny_overrides(tmp_path, "loss.sparsity_solver=proximal", "loss.sparsity_weight=5.0", "eval.test=false")
    )
    Trainer(cfg, datasets=fake_datasets()).fit()
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"][-1]
    assert val["exchange_mean"] == {"rgb": 0.5, "depth": 0.5}  # exactly the disjoint halves
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert train[-1]["l1"] < train[0]["l1"]


def test_gamma_history_is_logged_and_resumes_exactly(tmp_path):
    # The proximal step drives the penalised gammas under theta within the run: the tracker sees them fall,
    # logs a "gamma" record per evaluation, and a run resumed mid-epoch ends with the same history.
    common = ("loss.sparsity_solver=proximal", "loss.sparsity_weight=5.0", "eval.test=false")
    Trainer(load_config(None, tiny_overrides(tmp_path, *common, "run.name=full")), datasets=fake_datasets()).fit()
    part = load_config(None, tiny_overrides(tmp_path, *common, "run.name=part", "train.max_steps=3"))
    Trainer(part, datasets=fake_datasets()).fit()
    resumed = load_config(None, tiny_overrides(tmp_path, *common, "run.name=part"))
    Trainer(resumed, datasets=fake_datasets(), resume=True).fit()
    records = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "gamma"]
    assert len(records) == 2
    total = records[-1]["total"]
    assert total["penalised"] > 0 and total["share_ever"] == 1.0 and total["recovered"] == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["gamma_tracker"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["gamma_tracker"]
    assert a.keys() == b.keys()
    assert a["updates"] == b["updates"] == 4 and a["layers"].keys() == b["layers"].keys()
    for layer, entries in a["layers"].items():
        for key, value in entries.items():
            same = (
                torch.equal(value, b["layers"][layer][key])
                if torch.is_tensor(value)
                else value == b["layers"][layer][key]
            )
            assert same, (layer, key)
    assert records[-1] == {
        **[r for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if r["kind"] == "gamma"][-1],
        "time": records[-1]["time"],
    }
