"""train.modality_dropout: each step keeps a random subset of the modalities, the model trains as it infers with
the others missing (the norms' statistics from the present slices), and runs stay exact on resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cen
from cen.errors import ConfigError
from cen.train.config import load_config
from cen.train.modality_dropout import ModalityDropout, parse, prepare_model, proper_subsets
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


def test_a_probability_spreads_over_the_proper_subsets():
    table = dict(parse(0.6, ["rgb", "depth", "normal"]))
    assert table[("rgb", "depth", "normal")] == pytest.approx(0.4)
    assert len(proper_subsets(["rgb", "depth", "normal"])) == 6
    assert table[("rgb",)] == pytest.approx(0.1) and table[("depth", "normal")] == pytest.approx(0.1)
    assert sum(table.values()) == pytest.approx(1.0)


def test_a_table_of_weights_and_its_draws():
    drop = ModalityDropout({"rgb+depth": 2, "rgb": 1, "depth": 1}, ["rgb", "depth"], seed=3)
    assert drop.shares() == pytest.approx({"rgb+depth": 0.5, "rgb": 0.25, "depth": 0.25})
    draws = [drop.subset(step) for step in range(400)]
    assert draws == [drop.subset(step) for step in range(400)]  # a function of (seed, step)
    assert 0.4 < sum(d == ("rgb", "depth") for d in draws) / 400 < 0.6
    assert {d for d in draws} == {("rgb", "depth"), ("rgb",), ("depth",)}
    batch = {"rgb": 1, "depth": 2, "mask": 3}
    kept = next(drop(batch, s) for s in range(400) if drop.subset(s) == ("depth",))
    assert kept == {"depth": 2, "mask": 3}  # the target stays


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (1.5, "expected a probability in \\[0, 1\\]"),
        ({"rgb+hha": 1}, "must name distinct modalities of \\['rgb', 'depth'\\]"),
        ({"rgb": -1}, "weight of 'rgb' must be a number >= 0"),
        ({"rgb": 0}, "at least one subset needs a weight > 0"),
        ("often", "expected null, a probability"),
    ],
)
def test_bad_values_are_one_line_errors(value, match):
    with pytest.raises(ConfigError, match=match):
        parse(value, ["rgb", "depth"])


def test_a_norm_trained_on_a_subset_uses_and_updates_only_those_slots():
    torch.manual_seed(0)
    net = cen.MultiModal(cen.convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), 2, exchange=True),
                         ["rgb", "depth"])  # fmt: skip
    reference = nn.BatchNorm2d(4)
    norm = net.model[1]
    with torch.no_grad():
        norm.weight.view(2, 4)[1].fill_(0.5)  # the other slot differs, so using it would show
    reference.load_state_dict({k: v.view(2, 4)[0] if v.dim() else v for k, v in norm.state_dict().items()})
    before = norm.running_mean.view(2, 4)[1].clone()
    x = torch.randn(6, 3, 5, 5)
    net.train()
    with pytest.raises(ValueError, match="in training every modality"):
        net({"rgb": x})
    net.train_missing = True
    out = net({"rgb": x})["rgb"]
    torch.testing.assert_close(out, reference(net.model[0](x)))
    torch.testing.assert_close(norm.running_mean.view(2, 4)[0], reference.running_mean)
    assert torch.equal(norm.running_mean.view(2, 4)[1], before)  # the dropped modality's statistics stay
    out.sum().backward()
    assert norm.weight.grad.view(2, 4)[1].abs().sum() == 0 and norm.weight.grad.view(2, 4)[0].abs().sum() > 0


def test_training_with_modality_dropout_runs_and_resumes_exactly(tmp_path):
    common = ("train.modality_dropout=0.8", "eval.test=false")
    full = load_config(None, tiny_overrides(tmp_path, *common, "run.name=full"))
    Trainer(full, datasets=fake_datasets()).fit()
    Trainer(load_config(None, tiny_overrides(tmp_path, *common, "run.name=part", "train.max_steps=3")),
            datasets=fake_datasets()).fit()  # fmt: skip
    Trainer(load_config(None, tiny_overrides(tmp_path, *common, "run.name=part")), datasets=fake_datasets(),
            resume=True).fit()  # fmt: skip
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["models"]["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["models"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_models_that_need_every_modality_are_refused(tmp_path):
    for extra, match in (
        (["fusion.strategy=gated_sum"], "fusion 'gated_sum' .* reads every modality"),
        (["fusion.shared_convs=false"], "private weights per modality"),
    ):
        cfg = load_config(None, tiny_overrides(tmp_path, "train.modality_dropout=0.5", *extra))
        with pytest.raises(ConfigError, match=match):
            Trainer(cfg, datasets=fake_datasets())
    with pytest.raises(ConfigError, match="no cen.MultiModal"):
        prepare_model(nn.Conv2d(3, 3, 1), "here")
