"""train.recast_weights and train.step_in_backward: the same values with less held in memory,
autocast's cache emptied before backward, and the combinations that cannot work refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from cen.errors import ConfigError
from cen.train.config import load_config
from cen.train.precision import Precision, check_memory_options
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 5, 1),
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4, 16, 16), generator=g)


def _train(prec: Precision, net: nn.Module, optimizer, steps: int = 3) -> None:
    x, y = _batch()
    prec.add_optimizers({"model": optimizer})
    for _ in range(steps):
        with prec.autocast():
            loss = nn.functional.cross_entropy(net(prec.prepare_batch({"x": x})["x"]), y)
            prec.optimize(loss, optimizer)


@pytest.mark.parametrize("make_opt", ["sgd", "adam"])
@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_the_options_train_to_the_same_values(make_opt, precision, channels_last):
    def optimizer(net):
        if make_opt == "sgd":
            return torch.optim.SGD(
                [{"params": list(net.parameters())[:2], "lr": 0.05}, {"params": list(net.parameters())[2:]}],
                lr=0.1,
                momentum=0.9,
                weight_decay=1e-3,
            )
        return torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)

    results = []
    options = [(False, False), (False, True)] + ([(True, False), (True, True)] if precision != "fp32" else [])
    for recast, in_backward in options:
        net = _net()
        prec = Precision(precision, channels_last=channels_last, recast_weights=recast, step_in_backward=in_backward)
        prec.prepare_model(net)
        opt = optimizer(net)
        _train(prec, net, opt)
        if in_backward:  # the gradients were freed as the parameters stepped
            assert all(p.grad is None for p in net.parameters())
        results.append((net.state_dict(), opt.state_dict()))
    (plain_params, plain_state), *others = results
    for params, state in others:
        for k in plain_params:
            assert torch.equal(params[k], plain_params[k]), k
        for i, s in plain_state["state"].items():
            for k, v in s.items():
                assert torch.equal(state["state"][i][k], v), (i, k)
        assert state["param_groups"] == plain_state["param_groups"]


def _peak_bytes(step) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def test_the_options_lower_the_peak_of_a_weight_heavy_step():
    # a model whose weights dominate (as RefineNet-101 at small batches): 4 x 1024 x 1024 fp32
    x = torch.randn(2, 1024, 2, 2)

    def measure(**options):
        torch.manual_seed(0)
        net = nn.Sequential(*(nn.Conv2d(1024, 1024, 1) for _ in range(4)))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        prec = Precision("bf16", **options)
        prec.add_optimizers({"model": opt})

        def step():
            with prec.autocast():
                prec.optimize(net(x).square().mean(), opt)

        step()  # the first step allocates nothing else (no optimiser state in plain SGD)
        return _peak_bytes(step)

    weights = 4 * 1024 * 1024 * 4  # fp32 bytes of the four weight matrices
    plain = measure()
    recast = measure(recast_weights=True)
    in_backward = measure(step_in_backward=True)
    both = measure(recast_weights=True, step_in_backward=True)
    # plain: every fp32 gradient (1 x weights) exists before the step, with some bf16 copies (0.5 x)
    assert plain >= 1.0 * weights
    # the step in backward keeps one layer's gradient at a time: the peak moves to the end of
    # forward, where the copies remain (0.5 x) unless recast
    assert in_backward <= plain - 0.3 * weights
    assert both <= in_backward - 0.3 * weights
    assert recast <= plain  # alone it lowers the forward's level, not this step's peak (the gradients')


def test_a_forward_after_the_step_sees_the_updated_weights():
    # a GAN's generator loss runs through the critic the same step updated, in one autocast region
    torch.manual_seed(0)
    critic = nn.Linear(8, 1)
    x = torch.randn(4, 8)
    opt = torch.optim.SGD(critic.parameters(), lr=1.0)
    prec = Precision("bf16")
    with prec.autocast():
        prec.optimize(critic(x).mean(), opt)
        after = critic(x)
    with prec.autocast():
        fresh = critic(x)
    assert torch.equal(after, fresh)


def test_a_backward_through_another_optimisers_parameters_does_not_step_them():
    torch.manual_seed(0)
    gen, critic = nn.Linear(4, 4), nn.Linear(4, 1)
    g_opt, c_opt = torch.optim.SGD(gen.parameters(), lr=0.1), torch.optim.SGD(critic.parameters(), lr=0.1)
    prec = Precision("fp32", step_in_backward=True)
    prec.add_optimizers({"generator": g_opt, "critic": c_opt})
    before = [p.detach().clone() for p in critic.parameters()]
    gen_before = [p.detach().clone() for p in gen.parameters()]
    prec.optimize(critic(gen(torch.randn(3, 4))).mean(), g_opt)
    assert all(torch.equal(a, b) for a, b in zip(before, critic.parameters()))  # not stepped
    assert all(p.grad is not None for p in critic.parameters())  # gradients left as a plain backward leaves them
    assert not any(torch.equal(a, b) for a, b in zip(gen_before, gen.parameters()))
    assert all(p.grad is None for p in gen.parameters())


def test_impossible_combinations_are_one_line_errors(tmp_path):
    cases = {
        ("train.recast_weights=true",): "train.recast_weights=true .* train.precision=fp32 makes none",
        ("train.recast_weights=true", "train.precision=bf16", "train.compile=true"): "set one of them to false",
    }
    for overrides, message in cases.items():
        cfg = load_config(None, tiny_overrides(tmp_path, *overrides))
        with pytest.raises(ConfigError, match=message) as err:
            Trainer(cfg, datasets=fake_datasets())
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="train.step_in_backward=true cannot run with train.precision=fp16"):
        Precision("fp16", step_in_backward=True)
    # what the engine checks with the process count it runs in (a DDP run cannot start here)
    with pytest.raises(ConfigError, match="steps before DistributedDataParallel has averaged the gradients"):
        check_memory_options("bf16", recast_weights=False, step_in_backward=True, distributed=True)
    check_memory_options("bf16", recast_weights=True, step_in_backward=True, distributed=False)


def test_a_lean_bf16_run_resumes_exactly(tmp_path):
    common = (
        "eval.test=false",
        "train.precision=bf16",
        "train.recast_weights=true",
        "train.step_in_backward=true",
        "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.05}]",
    )
    Trainer(load_config(None, tiny_overrides(tmp_path, *common, "run.name=full")), datasets=fake_datasets()).fit()
    part = load_config(None, tiny_overrides(tmp_path, *common, "run.name=part", "train.max_steps=3"))
    Trainer(part, datasets=fake_datasets()).fit()
    rest = load_config(None, tiny_overrides(tmp_path, *common, "run.name=part"))
    Trainer(rest, datasets=fake_datasets(), resume=True).fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    for key, value in a["models"]["model"].items():
        assert torch.equal(value, b["models"]["model"][key]), key
    for i, s in a["optimizers"]["model"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["optimizers"]["model"]["state"][i][k]), (i, k)
