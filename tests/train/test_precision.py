"""train.precision, train.channels_last and train.compile through the engine (tiny model, fake data, CPU)."""

import pytest
import torch
from torch import nn

from cen.errors import ConfigError, UserError
from cen.train.config import load_config
from cen.train.precision import Precision, check_precision, compile_error
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides


def _params(path):
    return torch.load(path, weights_only=True)["models"]["model"]


def test_fp16_on_a_cpu_is_a_one_line_error_naming_bf16(tmp_path):
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a CUDA device.*use train.precision=bf16") as err:
        check_precision("fp16", torch.device("cpu"))
    assert "\n" not in str(err.value)
    cfg = load_config(None, tiny_overrides(tmp_path, "train.precision=fp16"))
    with pytest.raises(ConfigError, match="train.precision=bf16"):
        Trainer(cfg, datasets=fake_datasets())
    with pytest.raises(
        ConfigError, match=r"train.precision='fp8' is not valid; expected one of \['auto', 'fp32', 'bf16', 'fp16'\]"
    ):
        load_config(None, tiny_overrides(tmp_path, "train.precision=fp8"))


def test_optimize_is_the_plain_step_in_fp32_and_unscales_in_fp16():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x = torch.randn(8, 4)
    copies = [nn.Linear(4, 3) for _ in range(3)]
    for c in copies:
        c.load_state_dict(net.state_dict())
    opts = [torch.optim.SGD(c.parameters(), lr=0.1) for c in copies]
    # plain step
    opts[0].zero_grad(set_to_none=True)
    copies[0](x).square().mean().backward()
    opts[0].step()
    # fp32 through Precision: bit-identical
    Precision("fp32").optimize(copies[1](x).square().mean(), opts[1])
    for a, b in zip(copies[0].parameters(), copies[1].parameters()):
        assert torch.equal(a, b)
    # fp16 with a gradient scaler (built on the CPU here; the engine allows fp16 on CUDA only):
    # the loss is scaled by 2**16, the step sees unscaled gradients.
    prec = Precision("fp16")
    prec.add_optimizers({"model": opts[2]})
    prec.optimize(copies[2](x).square().mean(), opts[2])
    for a, b in zip(copies[0].parameters(), copies[2].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    state = prec.state_dict()["model"]
    assert state["scale"] == 2.0**16 and state["_growth_tracker"] == 1


def test_bf16_channels_last_run_trains_close_to_fp32_and_resumes_exactly(tmp_path):
    common = ("eval.test=false", "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.05}]")
    fp32 = load_config(None, tiny_overrides(tmp_path, *common, "run.name=fp32"))
    Trainer(fp32, datasets=fake_datasets()).fit()
    low = ("train.precision=bf16", "train.channels_last=true")
    full = load_config(None, tiny_overrides(tmp_path, *common, *low, "run.name=full"))
    trainer = Trainer(full, datasets=fake_datasets())
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    trainer.fit()
    a, ref = _params(tmp_path / "full" / "last.pt"), _params(tmp_path / "fp32" / "last.pt")
    for key in a:  # parameters stay fp32; 4 bf16 steps move them by about the bf16 rounding of the updates
        assert a[key].dtype == ref[key].dtype, key
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], ref[key], rtol=0.05, atol=0.02, msg=key)
    # stopped after step 3 (mid-epoch 2) and resumed: the same parameters, bit for bit
    part = load_config(None, tiny_overrides(tmp_path, *common, *low, "run.name=part", "train.max_steps=3"))
    Trainer(part, datasets=fake_datasets()).fit()
    resumed = load_config(None, tiny_overrides(tmp_path, *common, *low, "run.name=part"))
    Trainer(resumed, datasets=fake_datasets(), resume=True).fit()
    b = _params(tmp_path / "part" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_compiled_training_matches_eager(tmp_path):
    # aot_eager traces forward and backward as train.compile does, without Inductor's C++ compiler.
    common = ("eval.test=false", "train.max_steps=2")
    Trainer(load_config(None, tiny_overrides(tmp_path, *common, "run.name=eager")), datasets=fake_datasets()).fit()
    cfg = load_config(None, tiny_overrides(tmp_path, *common, "run.name=compiled", "train.compile=true"))
    trainer = Trainer(cfg, datasets=fake_datasets(), compile_backend="aot_eager")
    assert trainer.nets["model"] is not trainer.model  # the training forward is the compiled module
    trainer.fit()
    a, b = _params(tmp_path / "eager" / "last.pt"), _params(tmp_path / "compiled" / "last.pt")
    assert a.keys() == b.keys()  # the checkpoint holds the plain model's names (no _orig_mod.)
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_compiler_failure_says_to_set_compile_false(tmp_path):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no working C++ compiler found")

    cfg = load_config(None, tiny_overrides(tmp_path, "eval.test=false", "train.max_steps=1", "train.compile=true"))
    trainer = Trainer(cfg, datasets=fake_datasets(), compile_backend=broken_backend)
    with pytest.raises(
        UserError, match="torch.compile could not compile.*no working C\\+\\+ compiler.*set train.compile=false"
    ) as err:
        trainer.fit()
    assert "\n" not in str(err.value)
    assert compile_error(ValueError("a bug of ours")) is None  # other errors keep their traceback
