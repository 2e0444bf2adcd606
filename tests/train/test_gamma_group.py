"""optim.gamma_lr_scale: the exchanging norms' gamma in an optimiser group of their own."""

import pytest
import torch

from cen.core.groups import disjoint_groups
from cen.core.sparsity import exchanging_norms
from cen.tasks.base import ENCODER
from cen.tasks.errors import ConfigError
from cen.tasks.segmentation import TinySegNet
from cen.tasks.segmentation.optim import build_optimizer
from cen.train.config import StageConfig, load_config
from cen.train.optim import GAMMA, gamma_lr_scale, group_lr, set_stage, with_gamma_group
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


def _by_name(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


def test_gamma_group_holds_exactly_the_exchanging_gammas_at_scaled_stage_rates():
    model = TinySegNet(3, ["rgb", "depth"])
    stage = StageConfig(epochs=1, encoder_lr=1e-3, decoder_lr=5e-3)
    opt = build_optimizer(model, "adam", stage, momentum=0.9, weight_decay=0.0, gamma_lr_scale=20.0)
    groups = _by_name(opt)
    gammas = {id(norm.weight) for _, norm in exchanging_norms(model)}
    assert gammas and {id(p) for p in groups[GAMMA]["params"]} == gammas
    others = [id(p) for name, g in groups.items() if name != GAMMA for p in g["params"]]
    assert not gammas & set(others)  # moved, not copied
    assert len(others) + len(gammas) == sum(1 for p in model.parameters() if p.requires_grad)
    assert groups[GAMMA]["lr"] == pytest.approx(20 * 1e-3)  # the norms are in the encoder group
    assert group_lr(opt, ENCODER) == pytest.approx(2e-2)
    set_stage(opt, StageConfig(epochs=1, encoder_lr=2e-4, decoder_lr=1e-3), reset=False)
    groups = _by_name(opt)
    assert groups[GAMMA]["lr"] == pytest.approx(20 * 2e-4)
    assert groups[ENCODER]["lr"] == pytest.approx(2e-4) and groups["decoder"]["lr"] == pytest.approx(1e-3)


def test_scale_one_or_no_exchanging_norm_leaves_the_groups_alone():
    stage = StageConfig(epochs=1, encoder_lr=1e-3, decoder_lr=5e-3)
    two = build_optimizer(TinySegNet(3, ["rgb", "depth"]), "sgd", stage, momentum=0.9, weight_decay=0.0)
    assert GAMMA not in _by_name(two) and group_lr(two, ENCODER) == pytest.approx(1e-3)
    one = build_optimizer(TinySegNet(3, ["rgb"]), "sgd", stage, momentum=0.9, weight_decay=0.0, gamma_lr_scale=20.0)
    assert GAMMA not in _by_name(one)  # a unimodal network has nothing the l1 acts on
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
        runs[name] = torch.cat(
            [
                norm.gamma.detach().abs()[disjoint_groups(norm.num_modalities, norm.num_features)]
                for _, norm in exchanging_norms(model)
            ]
        )
    assert runs["scaled"].mean() < 0.1 and runs["plain"].mean() > 0.5


def test_config_refuses_a_non_positive_scale(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.gamma_lr_scale=-1.*> 0"):
        load_config(None, tiny_overrides(tmp_path, "optim.gamma_lr_scale=-1"))


def test_the_scale_applies_only_while_the_l1_penalty_is_on(tmp_path):
    on = load_config(None, tiny_overrides(tmp_path, "optim.gamma_lr_scale=8", "loss.sparsity_weight=1e-3"))
    off = load_config(None, tiny_overrides(tmp_path, "optim.gamma_lr_scale=8", "loss.sparsity_weight=0"))
    none = load_config(None, tiny_overrides(tmp_path, "optim.gamma_lr_scale=8", "loss.sparsity_mode=none"))
    assert gamma_lr_scale(on) == 8.0 and gamma_lr_scale(off) == gamma_lr_scale(none) == 1.0
