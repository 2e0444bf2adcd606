"""Fusion strategies, unshared convolutions and the fused head chosen in configs, and the ablation recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import cen
from cen.core.norms import _ModalityNorm
from cen.core.unshared import ModalityConv2d
from cen.errors import ConfigError
from cen.tasks import MODELS, build_task
from cen.tasks.segmentation.task import freeze_norm_stats
from cen.train.checkpoint import CheckpointError
from cen.train.config import load_config
from cen.train.trainer import Trainer
from tests.train.fakes import FakeScenes, fake_datasets, tiny_overrides

ABLATIONS = Path(__file__).resolve().parents[2] / "configs" / "ablations"
#: The recipe names cen.analysis.paper expects (one file per row of the comparison).
SEGMENTATION_ROWS = (
    "cen",
    "sum",
    "gated_sum",
    "cbn_unshared",
    "cbn_shared",
    "concat_head",
    "fixed30",
    "random",
    "discard",
    "unshared_l1_full",
    "unshared_l1_half",
    "l1_alone",
    "rgb_only",
    "depth_only",
)


def _batch(n=2, size=32):
    data = FakeScenes(n, size=size)
    return {k: torch.stack([data[i][k] for i in range(n)]) for k in ("rgb", "depth")}


def _fusions(model):
    return {type(n.fusion).__name__ for n in model.modules() if isinstance(n, _ModalityNorm) and n.fusion is not None}


def test_defaults_are_the_paper_and_options_override_by_key(tmp_path):
    cfg = load_config(None)
    f = cfg.fusion
    assert (f.strategy, dict(f.options), f.shared_convs, cfg.model.head) == ("exchange", {}, True, "ensemble")
    cfg = load_config(None, tiny_overrides(tmp_path, "fusion.strategy=fixed", "fusion.options.fraction=0.25"))
    model = MODELS.get("tiny")(cfg)
    assert _fusions(model) == {"FixedExchange"}
    assert list(cen.exchange_stats(model).values()) == [[0.25, 0.25]]  # 2 of the block's 8 channels each
    assert float(cen.sparsity_loss(model)) == 0.0  # fixed exchange is not penalised
    weighted = load_config(None, tiny_overrides(tmp_path, "fusion.options={aggregate: weighted}"))
    assert MODELS.get("tiny")(weighted).model[0][6].bn1.fusion.aggregate == "weighted"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["fusion.strategy=fancy"],
            r"fusion.strategy='fancy' is not valid; expected one of \['exchange', 'sum', .*'none'\]",
        ),
        (["model.head=stack"], r"model.head='stack' is not valid; expected one of \['ensemble', 'concat'\]"),
        (
            ["fusion.strategy=sum", "fusion.options.fraction=0.3"],
            r"fusion.options=\{'fraction': 0.3\}: fusion 'sum' has no option 'fraction'; it takes no options",
        ),
        (["fusion.options.bogus=1"], r"fusion 'exchange' has no option 'bogus'; it takes aggregate"),
        (
            ["fusion.strategy=fixed", "fusion.options.fraction=1.5"],
            r"fusion.options.fraction=1.5 is not valid; expected a number in \(0, 1\)",
        ),
        (["fusion.strategy=random", "fusion.options.fraction=0"], r"fraction=0 is not valid"),
        (["fusion.strategy=random", "fusion.options.fraction=0.6"], r"2 disjoint sets leave at most"),
        (
            ["fusion.strategy=fixed", "modalities=[rgb]"],
            r"fusion.strategy='fixed' with modalities \['rgb'\].*needs at least 2, got 1",
        ),
        (["fusion.strategy=random", "modalities=[depth]"], r"fusion 'random' exchanges between modalities"),
        (["fusion.options={aggregate: median}"], r"aggregate must be 'mean' or 'weighted', got 'median'"),
        (["model.head=concat", "modalities=[rgb]"], r"model.head='concat' with modalities \['rgb'\].*two or more"),
        (["model.head=concat", "model.ensemble=false"], r"needs ensemble=True"),
    ],
)
def test_bad_fusion_settings_are_one_line_config_errors(overrides, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_a_share_too_large_for_the_real_layer_is_named_when_the_model_is_built(tmp_path):
    # 0.33 of the 64-channel probe fits three disjoint sets (21 <= 21), not of the tiny net's 8 channels (3 > 2)
    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path, "modalities=[rgb,depth,normal]", "fusion.strategy=fixed", "fusion.options.fraction=0.33"
        ),
    )
    with pytest.raises(
        ConfigError,
        match=r"cannot build model.name='tiny' \(fusion.strategy='fixed', fusion.opt"
        r"ions=\{'fraction': 0.33\}.*3 disjoint sets leave at most 2",
    ):
        MODELS.get("tiny")(cfg)


def test_tiny_takes_unshared_convs_and_refuses_the_concat_head(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, "fusion.shared_convs=false", "fusion.strategy=conditional_norm"))
    model = MODELS.get("tiny")(cfg)
    assert any(isinstance(m, ModalityConv2d) for m in model.modules())
    assert _fusions(model) == {"ConditionalNorm"}
    out = model(_batch())
    assert set(out) == {"rgb", "depth", "ensemble"}
    with pytest.raises(ConfigError, match=r"model.head='concat' is not available for model.name='tiny'"):
        MODELS.get("tiny")(load_config(None, tiny_overrides(tmp_path, "model.head=concat")))


def test_refinenet_gets_every_fusion_setting_and_auto_selects_the_concat_output(tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path,
            "model.name=refinenet",
            "model.backbone=resnet18",
            "model.decoder_widths=[16, 8, 8, 8]",
            "model.head=concat",
            "fusion.strategy=conditional_norm",
            "fusion.shared_convs=false",
        ),
    )
    task = build_task(cfg)
    models = task.build_models()
    model = models["model"]
    assert model.config["head"] == "concat" and model.ensemble is None and model.concat_head is not None
    assert model.config["spec"]["strategy"] == "conditional_norm" and model.config["spec"]["shared_convs"] is False
    assert _fusions(model) == {"ConditionalNorm"} and any(isinstance(m, ModalityConv2d) for m in model.modules())
    task.setup(models)
    assert task.select == "ensemble"  # the concat block's fused output, although there is no alpha-ensemble
    assert set(model.eval()(_batch(1, 64))) == {"rgb", "depth", "ensemble"}
    assert (task.meta()["head"], task.meta()["fusion.strategy"], task.meta()["fusion.shared_convs"]) == (
        "concat",
        "conditional_norm",
        False,
    )


def test_frozen_statistics_keep_the_random_exchange_drawing_every_step(tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path,
            "fusion.strategy=random",
            "fusion.options={fraction: 0.25}",
            "model.bn_stats=frozen",
            "loss.sparsity_weight=0",
        ),
    )
    task = build_task(cfg)
    models = task.build_models()
    task.train_mode(models)
    model = models["model"]
    norms = [m for m in model.modules() if isinstance(m, _ModalityNorm)]
    assert norms and not any(n.training for n in norms)  # statistics frozen
    point = next(n for n in norms if n.fusion is not None)
    assert point.fusion.training
    x = _batch()
    torch.manual_seed(0)
    outs = [model(x)["rgb"] for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # a fresh set of channels per call
    model.eval()
    assert torch.equal(model(x)["rgb"], model(x)["rgb"])  # evaluation: the seeded set
    freeze_norm_stats(model)  # a plain model in eval mode: the norms stay in eval mode, their fusions train
    assert not point.training and point.fusion.training


def test_a_checkpoint_with_another_fusion_is_refused_in_one_line(tmp_path):
    base = ["train.max_steps=1", "eval.test=false"]
    Trainer(load_config(None, tiny_overrides(tmp_path, *base)), datasets=fake_datasets()).fit()
    for change, expected in (
        (["fusion.strategy=discard"], "fusion.strategy: checkpoint 'exchange' vs config 'discard'"),
        (["fusion.shared_convs=false"], "fusion.shared_convs: checkpoint True vs config False"),
        (
            ["fusion.options={aggregate: weighted}"],
            "fusion.options: checkpoint {} vs config {'aggregate': 'weighted'}",
        ),
    ):
        cfg = load_config(None, tiny_overrides(tmp_path, *base, *change))
        with pytest.raises(
            CheckpointError,
            match="was trained with another setup: "
            + expected.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(").replace(")", r"\)"),
        ) as err:
            Trainer(cfg, datasets=fake_datasets(), resume=True).fit()
        assert "\n" not in str(err.value)


def test_translation_unet_gets_the_fusion_settings_and_the_concat_head():
    cfg = load_config(
        None,
        [
            "task=translation",
            "modalities=[depth_euclidean,normal,edge_texture]",
            "model.name=unet",
            "model.ngf=4",
            "model.num_downs=5",
            "model.ndf=4",
            "optim.name=adam",
            "model.head=concat",
            "fusion.strategy=exchange",
            "fusion.options.aggregate=weighted",
        ],
    )
    task = build_task(cfg)
    models = task.build_models()
    generator = models["generator"]
    assert generator.config["head"] == "concat" and generator.ensemble is None
    assert {n.fusion.aggregate for n in generator.modules() if isinstance(n, _ModalityNorm) and n.fusion} == {
        "weighted"
    }
    task.setup(models)
    assert task.select == "ensemble"
    assert task.meta()["fusion.options"] == {"aggregate": "weighted"} and task.meta()["head"] == "concat"


def _recipes(setting):
    return sorted(p for p in (ABLATIONS / setting).glob("*.yaml") if not p.name.startswith("_"))


def test_every_paper_row_has_a_recipe_in_each_segmentation_setting():
    from cen.analysis.paper import SEGMENTATION, TRANSLATION

    expected = {row.name for row in SEGMENTATION if not row.name.startswith(("nyudv2_", "sunrgbd_"))}
    assert expected == set(SEGMENTATION_ROWS)
    for setting in ("nyudv2", "scenes"):
        assert {p.stem for p in _recipes(setting)} == expected, setting
    assert {p.stem for p in _recipes("taskonomy")} == {row.name for row in TRANSLATION}


def _row_settings(cfg):
    f, loss = cfg.fusion, cfg.loss
    l1 = loss.sparsity_weight > 0 and loss.sparsity_mode != "none"
    return (
        f.strategy,
        dict(f.options),
        f.shared_convs,
        cfg.model.head,
        l1 and loss.sparsity_mode,
        list(cfg.modalities),
    )


#: What each row sets: fusion, options, shared convs, head, l1 mode (False: off), modalities.
ROWS = {
    "cen": ("exchange", {}, True, "ensemble", "disjoint", ["rgb", "depth"]),
    "sum": ("sum", {}, True, "ensemble", False, ["rgb", "depth"]),
    "gated_sum": ("gated_sum", {}, True, "ensemble", False, ["rgb", "depth"]),
    "cbn_unshared": ("conditional_norm", {}, False, "ensemble", False, ["rgb", "depth"]),
    "cbn_shared": ("conditional_norm", {}, True, "ensemble", False, ["rgb", "depth"]),
    "concat_head": ("exchange", {}, True, "concat", "disjoint", ["rgb", "depth"]),
    "fixed30": ("fixed", {"fraction": 0.3}, True, "ensemble", False, ["rgb", "depth"]),
    "random": ("random", {"fraction": 0.3, "seed": 0}, True, "ensemble", False, ["rgb", "depth"]),
    "discard": ("discard", {}, True, "ensemble", "disjoint", ["rgb", "depth"]),
    "unshared_l1_full": ("exchange", {}, False, "ensemble", "all", ["rgb", "depth"]),
    "unshared_l1_half": ("exchange", {}, False, "ensemble", "disjoint", ["rgb", "depth"]),
    "l1_alone": ("none", {}, True, "ensemble", "disjoint", ["rgb", "depth"]),
    "rgb_only": ("exchange", {}, True, "ensemble", "disjoint", ["rgb"]),
    "depth_only": ("exchange", {}, True, "ensemble", "disjoint", ["depth"]),
}


#: The keys a row of the ablation table may set differently from the `cen` row: the knob it is about.
KNOBS = {
    "fusion.strategy", "fusion.options", "fusion.shared_convs", "model.head", "modalities",
    "loss.sparsity_weight", "loss.sparsity_mode", "run.name",
}  # fmt: skip


def _flat(cfg, prefix=""):
    """``{dotted key: value}`` of a config (lists kept whole)."""
    out = {}
    for key, value in OmegaConf.to_container(cfg, resolve=True).items() if not isinstance(cfg, dict) else cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("options",):
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


@pytest.mark.parametrize("setting", ["nyudv2", "scenes", "scenes_translation"])
def test_rows_differ_from_the_cen_row_only_in_their_declared_knobs(setting):
    # every row trains alike (budget, data, optimiser, the gamma rate and solver) but for the knob it compares
    cfgs = {p.stem: _flat(load_config(p)) for p in _recipes(setting)}
    cen_row = cfgs["cen"]
    assert "optim.gamma_lr_scale" in cen_row and "loss.sparsity_solver" in cen_row
    for name, flat in cfgs.items():
        differ = sorted(k for k in set(flat) | set(cen_row) if flat.get(k) != cen_row.get(k))
        assert set(differ) <= KNOBS, f"{setting}/{name} differs from cen in {sorted(set(differ) - KNOBS)}"


@pytest.mark.parametrize("setting, main", [("nyudv2", "nyudv2_r101.yaml"), ("scenes", "scenes.yaml")])
def test_recipes_set_their_row_and_share_everything_else(setting, main):
    reference = load_config(ABLATIONS.parent / main)
    cfgs = {p.stem: load_config(p) for p in _recipes(setting)}
    for name, cfg in cfgs.items():
        assert _row_settings(cfg) == ROWS[name], name
        assert cfg.run.name == name and cfg.data.dataset == reference.data.dataset
    # one budget, data set, backbone and theta for every row; lambda the same wherever l1 is on
    for key in ("optim.stages", "train.batch_size", "data.root", "model.backbone", "fusion.threshold", "optim.name"):
        assert len({str(OmegaConf.select(cfg, key)) for cfg in cfgs.values()}) == 1, key
    lambdas = {float(c.loss.sparsity_weight) for c in cfgs.values() if _row_settings(c)[4]}
    assert len(lambdas) == 1
    if setting == "nyudv2":  # the paper's setting, unchanged: lambda 2e-4, its schedule
        assert lambdas == {2e-4} and cfgs["cen"].optim.stages == reference.optim.stages


@pytest.mark.parametrize("path", _recipes("scenes"), ids=lambda p: p.stem)
def test_scenes_recipes_build_and_run_a_forward_pass(path):
    cfg = load_config(path)
    model = build_task(cfg).build_models()["model"].eval()
    x = {m: torch.rand(1, 3, 32, 32) for m in cfg.modalities}
    with torch.no_grad():
        out = model(x)
    assert set(out) == set(model.output_names)


@pytest.mark.parametrize("path", _recipes("nyudv2"), ids=lambda p: p.stem)
def test_nyudv2_recipes_build_on_the_meta_device(path):
    cfg = load_config(path, ["model.pretrained=null"])  # nothing to download; the structure is what is checked
    with torch.device("meta"):
        model = build_task(cfg).build_models()["model"]
    assert model.config["spec"]["strategy"] == cfg.fusion.strategy and model.config["head"] == cfg.model.head
    assert model.config["spec"]["shared_convs"] == cfg.fusion.shared_convs


@pytest.mark.parametrize("path", _recipes("taskonomy"), ids=lambda p: p.stem)
def test_translation_recipes_compare_the_mean_and_the_weighted_exchange(path):
    cfg = load_config(path)
    assert cfg.task == "translation" and len(cfg.modalities) == 3 and cfg.data.target == "rgb"
    assert cfg.fusion.strategy == "exchange"
    assert cfg.fusion.options.get("aggregate", "mean") == path.stem.removeprefix("exchange_")
