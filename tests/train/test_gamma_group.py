"""optim.gamma_lr_scale: the γ of every fusion-point norm (all modalities' channels) in an optimiser group of
its own, at the same rate in every run whatever its fusion strategy or l1 setting."""

import pytest
import torch

from cen.core.groups import disjoint_groups
from cen.core.sparsity import exchanging_norms, fusion_points
from cen.errors import ConfigError
from cen.tasks.optim import DECODER, ENCODER, GAMMA, build_optimizer, fusion_gammas, group_lr, with_gamma_group
from cen.tasks.segmentation import TinySegNet
from cen.train.config import StageConfig, load_config
from cen.train.stages import set_stage
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


def _by_name(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


def _optim(tmp_path, *extra):
    return load_config(None, tiny_overrides(tmp_path, "optim.name=adam", *extra)).optim


def test_gamma_group_holds_every_fusion_point_gamma_at_scaled_stage_rates(tmp_path):
    model = TinySegNet(3, ["rgb", "depth"])
    optim = _optim(
        tmp_path, "optim.gamma_lr_scale=20", "optim.stages=[{epochs: 1, encoder_lr: 1e-3, decoder_lr: 5e-3}]"
    )
    opt = build_optimizer(model, optim)
    groups = _by_name(opt)
    gammas = {id(norm.weight) for _, norm in fusion_points(model)}
    assert gammas and {id(p) for p in groups[GAMMA]["params"]} == gammas
    # the whole gamma of each fusion point: both modalities' channels, penalised half or not
    assert sum(p.numel() for p in groups[GAMMA]["params"]) == sum(n.weight.numel() for _, n in fusion_points(model))
    others = [id(p) for name, g in groups.items() if name != GAMMA for p in g["params"]]
    assert not gammas & set(others)  # moved, not copied
    assert len(others) + len(gammas) == sum(1 for p in model.parameters() if p.requires_grad)
    assert group_lr(opt, GAMMA) == pytest.approx(20 * 1e-3)  # the norms are in the encoder group
    assert group_lr(opt, ENCODER) == pytest.approx(1e-3) and group_lr(opt, DECODER) == pytest.approx(5e-3)
    set_stage(opt, StageConfig(epochs=1, encoder_lr=2e-4, decoder_lr=1e-3), reset=False)
    assert group_lr(opt, GAMMA) == pytest.approx(20 * 2e-4) and group_lr(opt, ENCODER) == pytest.approx(2e-4)
    with pytest.raises(KeyError, match="no parameter group 'nope'"):
        group_lr(opt, "nope")


@pytest.mark.parametrize(("strategy", "options"), [("exchange", {}), ("fixed", {"fraction": 0.25}), ("sum", {})])
def test_every_strategy_gets_the_same_gamma_group_with_or_without_l1(tmp_path, strategy, options):
    model = TinySegNet(3, ["rgb", "depth"], fusion=strategy, fusion_options=options)
    opt = build_optimizer(model, _optim(tmp_path, "optim.gamma_lr_scale=8", "loss.sparsity_weight=0"))
    assert {id(p) for p in _by_name(opt)[GAMMA]["params"]} == {id(p) for p in fusion_gammas(model)} != set()
    assert _by_name(opt)[GAMMA]["lr_scale"] == 8


def test_scale_one_or_a_unimodal_network_leaves_the_groups_alone(tmp_path):
    two = build_optimizer(TinySegNet(3, ["rgb", "depth"]), _optim(tmp_path))
    assert GAMMA not in _by_name(two)
    one = build_optimizer(TinySegNet(3, ["rgb"]), _optim(tmp_path, "optim.gamma_lr_scale=20"))
    assert GAMMA not in _by_name(one) and fusion_gammas(TinySegNet(3, ["rgb"])) == []  # nothing meets
    with pytest.raises(ValueError, match="gamma_lr_scale=0"):
        with_gamma_group([], TinySegNet(3, ["rgb", "depth"]), 0)


def test_proximal_step_uses_the_gamma_groups_rate(tmp_path):
    # 4 Adam steps at lr 0.05, lambda 2: the proximal step shrinks the penalised gammas (1 at the start) by
    # lr x lambda = 0.1 per step unscaled, by 0.4 at gamma_lr_scale 4, where Adam's own step on gamma (at most
    # about 0.2) cannot hold them: the scaled run ends with them near 0, the unscaled one above 0.5.
    common = ("optim.name=adam", "loss.sparsity_solver=proximal", "loss.sparsity_weight=2.0", "eval.test=false")
    runs = {}
    for name, extra in (("scaled", ["optim.gamma_lr_scale=4"]), ("plain", [])):
        trainer = Trainer(
            load_config(None, tiny_overrides(tmp_path, *common, *extra, f"run.name={name}")), datasets=fake_datasets()
        )
        trainer.fit()
        model = trainer.models["model"]
        penalised = [
            norm.gamma.detach().abs()[disjoint_groups(norm.num_modalities, norm.num_features)]
            for _, norm in exchanging_norms(model)
        ]
        assert penalised
        runs[name] = torch.cat(penalised)
    assert runs["scaled"].mean() < 0.1 and runs["plain"].mean() > 0.5


def test_config_refuses_a_non_positive_scale(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.gamma_lr_scale=-1.*> 0"):
        load_config(None, tiny_overrides(tmp_path, "optim.gamma_lr_scale=-1"))
