"""train.precision / train.channels_last = auto: resolved per device, recorded, reused; cen env; every recipe says auto or why not."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from cen.train import hardware
from cen.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _cpu(precision):
    return lambda: (precision, f"fake cpu says {precision}")


@pytest.mark.parametrize(("native", "expected"), [("bf16", ("bf16", True)), ("fp32", ("fp32", True))])
def test_auto_on_a_cpu_follows_native_bf16(native, expected):
    r = hardware.resolve("auto", "auto", "cpu", cpu=_cpu(native))
    assert (r.precision, r.channels_last) == expected
    assert r.reason == f"fake cpu says {native}" and r.notice is None


def test_the_real_cpu_probe_follows_onednn(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert hardware.resolve("auto", "auto", "cpu").precision == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert hardware.resolve("auto", "auto", "cpu").precision == "bf16"


@pytest.mark.parametrize(
    ("bf16", "capability", "expected"), [(True, (8, 0), "bf16"), (False, (7, 5), "fp16"), (False, (6, 1), "fp32")]
)
def test_auto_on_cuda(monkeypatch, bf16, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    r = hardware.resolve("auto", "auto", torch.device("cuda", 0))
    assert (r.precision, r.channels_last) == (expected, True)


def test_other_devices_get_fp32():
    r = hardware.resolve("auto", "auto", "mps")
    assert (r.precision, r.channels_last) == ("fp32", False)


def test_a_probe_that_raises_falls_back_to_fp32_with_a_notice():
    def broken():
        raise RuntimeError("no oneDNN here\nsecond line")

    r = hardware.resolve("auto", "auto", "cpu", cpu=broken)
    assert (r.precision, r.channels_last) == ("fp32", False)
    assert "RuntimeError: no oneDNN here" in r.notice and "\n" not in r.notice


def test_explicit_values_are_kept_and_auto_layout_follows_the_device():
    assert hardware.resolve("fp32", False, "cpu", cpu=_cpu("bf16")) == hardware.Resolved("fp32", False)
    assert hardware.resolve("bf16", "auto", "cpu", cpu=_cpu("fp32")).precision == "bf16"
    assert hardware.resolve("fp32", "auto", "cpu", cpu=_cpu("bf16")).channels_last is True


def test_settle_prefers_the_checkpoint_and_runs_fp16_in_fp32_off_cuda():
    saved = {"precision": "bf16", "channels_last": False}
    r = hardware.settle("auto", "auto", "cpu", saved=saved)
    assert (r.precision, r.channels_last, r.reason) == ("bf16", False, "as recorded in the checkpoint")
    assert hardware.settle("fp32", "auto", "cpu", saved=saved).precision == "fp32"  # explicit wins
    r = hardware.settle("auto", "auto", "cpu", saved={"precision": "fp16", "channels_last": True}, inference=True)
    assert r.precision == "fp32" and "fp16" in r.notice


def test_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "available_cores", lambda: 8)
    assert hardware.choose_threads("auto") == (8, "8 cores available")
    assert hardware.choose_threads("auto", processes_per_machine=4)[0] == 2
    assert hardware.choose_threads(3) == (3, "train.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert hardware.choose_threads("auto") == (5, "OMP_NUM_THREADS")


def test_bad_values_are_one_line_errors(tmp_path):
    from cen.train.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"train.channels_last='sometimes' is not valid; expected true, false or auto"
    ):
        load_config(None, ["train.channels_last=sometimes"])
    with pytest.raises(ConfigError, match=r"train.threads=0 is not valid"):
        load_config(None, ["train.threads=0"])


def test_cen_env_json_reports_what_auto_resolves_to(capsys):
    from cen.cli.main import main

    assert main(["env", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = hardware.resolve("auto", "auto", "cpu")
    assert data["auto"]["cpu"]["precision"] == expected.precision
    assert data["cpu"]["bf16_native"] == hardware.cpu_bf16_native()
    assert data["versions"]["torch"] == torch.__version__
    assert set(data["extras"]) == {"onnxruntime", "torch-fidelity", "timm"}
    assert main(["env"]) == 0
    assert "auto -> precision" in capsys.readouterr().out


def _roots():
    """Every shipped recipe, with its own train block and those of its bases."""
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        chain, file = [], path
        while file is not None:
            data = yaml.safe_load(file.read_text()) or {}
            chain.append((file, data))
            file = (file.parent / data["base"]).resolve() if "base" in data else None
        yield path, chain


def test_every_recipe_uses_auto_or_pins_with_a_reason():
    checked = 0
    for path, chain in _roots():
        setting = next(((f, d["train"]["precision"]) for f, d in chain if "precision" in d.get("train", {})), None)
        assert setting is not None, f"{path} (and its bases) do not set train.precision; say auto or pin with a reason"
        file, value = setting
        if value != "auto":
            lines = file.read_text().splitlines()
            at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"precision: {value}"))
            said = "#" in lines[at] or lines[at - 1].strip().startswith("#")
            assert said, f"{file} pins train.precision={value} without a comment saying why"
        checked += 1
    assert checked >= 40
