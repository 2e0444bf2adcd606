"""Heterogeneous fusion: the presence task (image CNN + PointNet, shared MLP with exchanging private norms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cen
from cen.data.constants import REFERENCE_DEPTH_SCALE
from cen.data.hha import Intrinsics
from cen.data.synth import ensure_generated
from cen.errors import ConfigError, DataError
from cen.models.hetero import CONCAT_KEY, ConcatFusion, HeteroCEN, ImageEncoder, PointNetEncoder
from cen.tasks import build_task
from cen.tasks.presence.data import (
    PRESENCE_CLASSES,
    ScenePresence,
    collate,
    depth_to_points,
    presence_labels,
    sample_points,
)
from cen.tasks.presence.metrics import PresenceMetrics
from cen.train.config import load_config
from cen.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "hetero"
K = len(PRESENCE_CLASSES)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Ten generated scenes of 24 x 32 pixels (8 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("scenes") / "s"
    ensure_generated(root, 10, height=24, width=32, seed=3)
    return root


def _cfg(root, run_dir, *extra):
    return load_config(
        None,
        [
            "task=presence",
            "modalities=[rgb,points]",
            "data.dataset=scenes_points",
            f"data.root={root}",
            "data.num_points=48",
            "data.generate.num=10",
            "data.generate.height=24",
            "data.generate.width=32",
            "data.generate.seed=3",
            "model.name=hetero",
            "model.embed_dim=8",
            "optim.name=adam",
            "optim.stages=[{epochs: 2, encoder_lr: 1e-3, decoder_lr: 1e-3}]",
            "train.batch_size=4",
            "train.progress=false",
            "train.device=cpu",
            "train.log_every=1",
            "eval.batch_size=2",
            "eval.num_images=0",
            f"run.dir={run_dir}",
            "run.name=run",
            *extra,
        ],
    )


def _models(width=8, exchange=True, **kw):
    torch.manual_seed(0)
    encoders = {"rgb": ImageEncoder(width, widths=(4, 8)), "points": PointNetEncoder(width, widths=(8, 16))}
    return HeteroCEN(encoders, width, K, exchange=exchange, **kw)


def _batch(b=4, n=32):
    g = torch.Generator().manual_seed(1)
    return {"rgb": torch.randn(b, 3, 16, 20, generator=g), "points": torch.randn(b, n, 3, generator=g)}


# -- end to end -------------------------------------------------------------------------------
def test_presence_trains_end_to_end_exchanges_and_reloads(scenes, tmp_path, capsys):
    # lambda * lr = 1: the proximal step puts every penalised gamma at 0 after the first step
    cfg = _cfg(scenes, tmp_path, "loss.sparsity_weight=1000", "loss.sparsity_solver=proximal")
    trainer = Trainer(cfg)
    out = trainer.fit()
    assert out["steps"] == 4
    assert set(out["test"]) == {"rgb", "points", "ensemble"}
    for scores in out["test"].values():
        assert 0 <= scores["f1"] <= 1 and 0 <= scores["exact_match"] <= 1 and len(scores["per_class_ap"]) == K
    assert "exact match" in capsys.readouterr().out
    stats = cen.exchange_stats(trainer.model)
    assert len(stats) == 2 and all(fr == [0.5, 0.5] for fr in stats.values())  # each gave up its l1 group
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" and r["l1"] > 0 for r in records)
    model = cen.load_model(tmp_path / "run" / "best.pt").eval()
    assert isinstance(model, HeteroCEN)
    batch = collate([trainer.datasets["test"][0]])
    with torch.no_grad():
        again = model({k: batch[k] for k in ("rgb", "points")})
        trainer.model.eval()
        ref = trainer.model({k: batch[k] for k in ("rgb", "points")})
    assert torch.allclose(again["ensemble"], ref["ensemble"])


def test_concat_and_single_modality_runs(scenes, tmp_path):
    out = Trainer(_cfg(scenes, tmp_path, "model.name=hetero_concat", "run.name=concat", "loss.sparsity_weight=0")).fit()
    assert set(out["test"]) == {CONCAT_KEY}
    out = Trainer(
        _cfg(
            scenes, tmp_path, "modalities=[points]", "model.ensemble=false", "run.name=points", "loss.sparsity_weight=0"
        )
    ).fit()
    assert set(out["test"]) == {"points"}


def test_recipes_load_and_build(scenes):
    outputs = {}
    for path in sorted(CONFIGS.glob("[!_]*.yaml")):
        cfg = load_config(path, [f"data.root={scenes}"])
        task = build_task(cfg)
        model = task.build_models()["model"]
        task.setup({"model": model})
        outputs[path.stem] = (task.outputs(model), task.select)
    assert outputs == {
        "cen": (["rgb", "points", "ensemble"], "ensemble"),
        "late": (["rgb", "points", "ensemble"], "ensemble"),
        "concat": ([CONCAT_KEY], CONCAT_KEY),
        "rgb_only": (["rgb"], "rgb"),
        "points_only": (["points"], "points"),
    }


# -- data ----------------------------------------------------------------------------------------
def test_depth_to_points_back_projects_valid_pixels_only():
    depth = np.full((4, 6), 2000, np.uint16)
    depth[1, 2] = 0  # a hole
    k = Intrinsics(fx=10.0, fy=5.0, cx=2.5, cy=1.5)
    pts = depth_to_points(depth, k, 1e-3)
    assert pts.shape == (23, 3)
    assert torch.all(pts[:, 2] == 2.0)
    assert torch.allclose(pts[0], torch.tensor([(0 - 2.5) * 2 / 10, (0 - 1.5) * 2 / 5, 2.0]))
    with pytest.raises(ValueError, match=r"median depth 2000 m with depth scale 1 is implausible"):
        depth_to_points(depth, k, 1.0, source="d.png")
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_to_points(np.zeros((4, 6), np.uint16), k, 1e-3)


def test_scene_points_match_the_depth_png_and_labels_match_the_mask(scenes):
    ds = ScenePresence(scenes, "train.txt", num_points=5000)
    sample = ds[0]
    name = ds.entries[0].files["depth"]
    depth = np.array(Image.open(name))
    assert sample["points"].shape == (5000, 3)
    # every valid pixel is drawn (5000 > 24 * 32), none of the holes
    z = np.sort(np.unique(sample["points"][:, 2].numpy()))
    assert np.allclose(z, np.sort(np.unique(depth[depth > 0] * REFERENCE_DEPTH_SCALE)), atol=1e-6)
    mask = np.array(Image.open(ds.entries[0].files["mask"]))
    counts = np.bincount(mask.ravel(), minlength=256)
    expected = [float(counts[c] >= math.ceil(0.003 * mask.size)) for c in PRESENCE_CLASSES]
    assert sample["target"].tolist() == expected


def test_presence_labels_need_the_minimum_area():
    mask = np.zeros((10, 100), np.uint8)
    mask[0, :3] = PRESENCE_CLASSES[0]  # 3 pixels of 1000: at least ceil(0.003 * 1000)
    mask[1, :2] = PRESENCE_CLASSES[1]  # 2 pixels: too few
    assert presence_labels(mask).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_sample_points_rule():
    pts = torch.arange(30, dtype=torch.float32).view(10, 3)
    few = sample_points(pts, 6, torch.Generator().manual_seed(0))
    assert few.shape == (6, 3) and len({tuple(p) for p in few.tolist()}) == 6  # without replacement
    many = sample_points(pts, 25, torch.Generator().manual_seed(0))
    assert {tuple(p) for p in many.tolist()} == {tuple(p) for p in pts.tolist()}  # every point, then repeats
    assert torch.equal(
        sample_points(pts, 25, torch.Generator().manual_seed(4)),
        sample_points(pts, 25, torch.Generator().manual_seed(4)),
    )


def test_evaluation_draws_are_fixed_and_training_draws_vary(scenes):
    ev = ScenePresence(scenes, "train.txt", num_points=32)
    tr = ScenePresence(scenes, "train.txt", num_points=32, train=True)
    assert torch.equal(ev[1]["points"], ev[1]["points"])
    assert not torch.equal(tr[1]["points"], tr[1]["points"])


# -- the model -------------------------------------------------------------------------------------
def test_pointnet_is_invariant_to_the_order_of_points():
    enc = PointNetEncoder(8, widths=(8, 16))
    pts = torch.randn(3, 40, 3)
    perm = pts[:, torch.randperm(40)]
    for train in (True, False):
        enc.train(train)
        assert torch.allclose(enc(pts), enc(perm), atol=1e-5)
    assert not torch.allclose(enc(pts), enc(pts * 2), atol=1e-3)  # but it does see the points


def test_shared_mlp_norms_exchange_when_gammas_fall_under_theta():
    model = _models()
    norms = [m for m in model.modules() if isinstance(m, cen.nn.ModalityBatchNorm1d)]
    assert len(norms) == 2 and all(n.num_modalities == 2 for n in norms)
    assert all(fr == [0.0, 0.0] for fr in cen.exchange_stats(model).values())
    with torch.no_grad():
        for norm in norms:
            norm.gamma[0, :4] = 0.0  # rgb's l1 group (channels 0-3 of 8) under theta
    stats = cen.exchange_stats(model)
    assert all(fr == [0.5, 0.0] for fr in stats.values()), stats
    # rgb's prediction now reads the point cloud; late fusion's never does
    late = _models(exchange=False)
    late.load_state_dict(model.state_dict())
    model.eval(), late.eval()
    batch, other = _batch(), _batch()
    other["points"] = other["points"] * 3 + 1
    with torch.no_grad():
        assert not torch.allclose(model(batch)["rgb"], model({**batch, "points": other["points"]})["rgb"])
        assert torch.equal(late(batch)["rgb"], late({**batch, "points": other["points"]})["rgb"])
        assert not torch.allclose(late(batch)["points"], late({**batch, "points": other["points"]})["points"])


def test_encoders_are_not_shared_and_the_mlp_is():
    model = _models()
    enc = {n: {id(p) for p in e.parameters()} for n, e in model.encoders.items()}
    assert not enc["rgb"] & enc["points"]
    linears = [m for m in model.fused.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(8, 8), (8, 8), (K, 8)]  # one copy for both modalities


def test_dropping_a_modality_at_inference_and_private_heads():
    model = _models().eval()
    with torch.no_grad():
        out = model({"rgb": _batch()["rgb"]})
    assert set(out) == {"rgb", "ensemble"} and torch.equal(out["rgb"], out["ensemble"])
    private = _models(private_heads=True).eval()
    assert isinstance(private.fused.model[1], cen.nn.ModalityLinear)
    assert set(private(_batch())) == {"rgb", "points", "ensemble"}
    with pytest.raises(ValueError, match=r"modalities \['points'\] are missing; private heads need every modality"):
        private({"rgb": _batch()["rgb"]})


def test_concat_fusion_gives_one_prediction():
    torch.manual_seed(0)
    model = ConcatFusion({"rgb": ImageEncoder(8, widths=(4,)), "points": PointNetEncoder(8, widths=(8,))}, 8, K)
    out = model(_batch())
    assert set(out) == {CONCAT_KEY} and out[CONCAT_KEY].shape == (4, K)
    with pytest.raises(ValueError, match=r"needs exactly the modalities \['rgb', 'points'\]; missing \['points'\]"):
        model({"rgb": _batch()["rgb"]})


def test_metrics_score_a_perfect_ranking_and_skip_classes_without_positives():
    target = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    m = PresenceMetrics(["a", "b", "c", "d", "e"])
    m.update("x", (target * 2 - 1) * 5, target)
    scores = m.compute()["x"]
    assert scores["per_class_ap"][:3] == [1.0, 1.0, 1.0] and scores["per_class_ap"][3:] == [None, None]
    assert scores["map"] == 1.0 and scores["exact_match"] == 1.0


# -- bad input -------------------------------------------------------------------------------------
def test_point_clouds_of_different_sizes_in_one_batch_are_named():
    samples = [
        {"points": torch.zeros(5, 3), "target": torch.zeros(K)},
        {"points": torch.zeros(7, 3), "target": torch.zeros(K)},
    ]
    with pytest.raises(
        DataError,
        match=r"modality 'points': point clouds of different sizes \[5, 7\] in one batch "
        r"and no collate rule",
    ) as err:
        collate(samples)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"modality 'points': point clouds of different sizes \[5, 7\] in one batch"):
        PointNetEncoder(4)([torch.zeros(5, 3), torch.zeros(7, 3)])
    with pytest.raises(
        ValueError, match=r"modality 'points': PointNetEncoder expects points \(B, N, 3\), got \(2, 5\)"
    ):
        PointNetEncoder(4)(torch.zeros(2, 5))


def test_bad_presence_settings_are_named(scenes, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"modalities \['depth'\] are not in the presence data; it has \['rgb', "
        r"'points'\]",
    ):
        build_task(_cfg(scenes, tmp_path, "modalities=[rgb,depth]"))
    with pytest.raises(ConfigError, match="train.select_metric='miou' is not a presence score"):
        build_task(_cfg(scenes, tmp_path, "train.select_metric=miou"))
    with pytest.raises(ConfigError, match="data.num_points must be >= 1"):
        _cfg(scenes, tmp_path, "data.num_points=0")
    with pytest.raises(
        ValueError,
        match=r"data.dataset='scenes' has no data for task 'presence'; for presence use "
        r"one of: scenes_points",
    ):
        build_task(_cfg(scenes, tmp_path, "data.dataset=scenes")).build_datasets()
    with pytest.raises(
        ValueError,
        match=r"the presence data of the generated scenes has the modalities \['rgb', 'points'\]; "
        r"got \['rgb', 'normal'\] \(\['normal'\] unknown\)",
    ):
        ScenePresence(scenes, "train.txt", ["rgb", "normal"])


def test_missing_camera_file_is_named(scenes, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(scenes, root)
    (root / "camera.json").unlink()
    ScenePresence(root, "train.txt", ["rgb"])  # the image alone needs no camera
    with pytest.raises(FileNotFoundError, match=r"camera.json: no such file; the point clouds need the depth scale"):
        ScenePresence(root, "train.txt", ["rgb", "points"])
