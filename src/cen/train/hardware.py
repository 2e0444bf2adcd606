"""What this machine runs natively, and what ``train.precision: auto`` / ``train.channels_last: auto`` become here.

A recipe must not assume the machine it was tuned on: bf16 autocast is ~1.6x faster than
fp32 on a CPU with AVX-512 BF16 and 5-12x *slower* on one without it (emulated). So
``auto`` is resolved at the start of a run, from probes of the device:

======== ============================================= =====================
device   precision                                     channels_last
======== ============================================= =====================
CUDA     bf16 where ``torch.cuda.is_bf16_supported()``, on
         else fp16 (with the loss scaler) on compute
         capability >= 7.0, else fp32
CPU      bf16 where oneDNN runs bf16 natively (AVX-512  on (measured faster
         BF16 or AMX: ``torch.ops.mkldnn.               in fp32 too, with and
         _is_mkldnn_bf16_supported()``), else fp32      without AVX-512:
                                                        docs/benchmarks.md)
other    fp32 (MPS and the rest: not measured)          off
======== ============================================= =====================

``ONEDNN_MAX_CPU_ISA=AVX2`` (and ``ATEN_CPU_CAPABILITY=avx2``) make a CPU with AVX-512
BF16 behave like one without it; the oneDNN probe follows them. ``auto`` never fails: a
probe that raises resolves to fp32 with a one-line notice.

:func:`probe` gathers what ``cen env`` prints; :func:`resolve` makes the choice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

AUTO = "auto"


@dataclass(frozen=True)
class Resolved:
    """The precision and layout a run uses, and why.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: the layout.
        reason: one line saying what decided (empty when both were given explicitly).
        notice: a one-line warning when a probe failed and fp32 was chosen, else None.
    """

    precision: str
    channels_last: bool
    reason: str = ""
    notice: str | None = None


def cpu_isa() -> str:
    """The instruction set ATen dispatches to (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bf16 convolutions and matrix products natively here (AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_amx() -> bool:
    """Whether the CPU has AMX tiles (the hardware flag; oneDNN may still be capped below it)."""
    return bool(torch.cpu._is_amx_tile_supported())


def cuda_choice(device: torch.device) -> tuple[str, str]:
    """``(precision, reason)`` for a CUDA device."""
    if torch.cuda.is_bf16_supported():
        return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 7:
        return "fp16", f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}) has fp16 tensor cores, no bf16"
    return "fp32", f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}) has no fast bf16 or fp16"


def cpu_choice() -> tuple[str, str]:
    """``(precision, reason)`` for the CPU."""
    isa = cpu_isa()
    if cpu_bf16_native():
        return "bf16", f"CPU runs bf16 natively (oneDNN; ATen ISA {isa})"
    return "fp32", f"CPU has no native bf16 (ATen ISA {isa}): bf16 would be emulated, several times slower"


def layout_for(device_type: str, precision: str) -> bool:
    """``channels_last`` for ``auto``: on for CUDA and CPUs, in every precision (on the CPU the scenes step
    was measured 0.80x fp32's time with it in fp32, 0.89-0.95x with oneDNN capped at AVX2:
    ``benchmarks/bench_precision.py``); off elsewhere (not measured)."""
    return device_type in ("cuda", "cpu")


def resolve(
    precision: str,
    channels_last: bool | str,
    device: torch.device | str,
    *,
    cpu: Callable[[], tuple[str, str]] | None = None,
    cuda: Callable[[torch.device], tuple[str, str]] | None = None,
) -> Resolved:
    """The run's precision and layout: ``auto`` values chosen for ``device``, explicit ones kept.

    Args:
        precision: ``"auto"`` or an explicit ``"fp32"`` / ``"bf16"`` / ``"fp16"``.
        channels_last: ``"auto"`` or a bool.
        device: where the model runs.
        cpu, cuda: the probes, returning ``(precision, reason)``; default :func:`cpu_choice` and
            :func:`cuda_choice` (looked up at call time, so a test may patch them).
    """
    cpu = cpu or cpu_choice
    cuda = cuda or cuda_choice
    device = torch.device(device)
    auto_precision = precision == AUTO
    auto_layout = isinstance(channels_last, str) and channels_last == AUTO
    if not (auto_precision or auto_layout):
        return Resolved(precision, bool(channels_last))
    notice = None
    try:
        if device.type == "cuda":
            chosen, reason = cuda(device)
        elif device.type == "cpu":
            chosen, reason = cpu()
        else:
            chosen, reason = "fp32", f"device type {device.type!r}: fp32 unless measured otherwise"
    except Exception as exc:  # noqa: BLE001  (auto never fails: any probe error means the safe choice)
        first = (str(exc).splitlines() or [""])[0][:200]
        chosen, reason = "fp32", "a hardware probe failed"
        notice = f"train.precision=auto: could not probe the {device.type} ({type(exc).__name__}: {first}); using fp32"
    final = chosen if auto_precision else precision
    layout = (layout_for(device.type, final) and notice is None) if auto_layout else bool(channels_last)
    return Resolved(final, layout, reason, notice)


def settle(
    precision: str,
    channels_last: bool | str,
    device: torch.device | str,
    *,
    saved: Mapping[str, Any] | None = None,
    inference: bool = False,
) -> Resolved:
    """The precision and layout a command runs in.

    ``auto`` values take the checkpoint's recorded ones when ``saved`` (its ``train``
    config) has them, so a resumed run continues exactly and ``cen eval`` / ``cen predict``
    score a model as it was trained and evaluated; otherwise they are resolved for
    ``device`` (:func:`resolve`). With ``inference``, fp16 (CUDA only) runs in fp32 elsewhere.
    """
    device = torch.device(device)
    reason = ""
    if saved:
        recorded = saved.get("precision")
        if precision == AUTO and recorded not in (None, AUTO):
            precision, reason = recorded, "as recorded in the checkpoint"
        layout = saved.get("channels_last")
        if channels_last == AUTO and isinstance(layout, bool):
            channels_last, reason = layout, "as recorded in the checkpoint"
    notice = None
    if inference and precision == "fp16" and device.type != "cuda":
        precision, notice = "fp32", f"the model was trained in fp16, which needs CUDA; running in fp32 on {device.type}"
    r = resolve(precision, channels_last, device)
    return Resolved(r.precision, r.channels_last, r.reason or reason, notice or r.notice)


# -- threads ----------------------------------------------------------------------------------------
def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(requested: int | str, *, processes_per_machine: int = 1) -> tuple[int, str]:
    """``(threads, why)`` for ``train.threads``: an int is kept; ``auto`` takes ``OMP_NUM_THREADS``
    when it is set, else the cores of the affinity mask shared among the processes on this machine."""
    if not (isinstance(requested, str) and requested == AUTO):
        return int(requested), "train.threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = available_cores()
    return max(1, cores // max(1, processes_per_machine)), f"{cores} cores available"


# -- what cen env shows ----------------------------------------------------------------------------
@dataclass
class Probe:
    """What :func:`probe` found (``cen env``)."""

    versions: dict[str, str | None] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    auto: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "cpu": self.cpu,
            "devices": self.devices,
            "auto": self.auto,
            "extras": self.extras,
        }


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def _safely(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001  (a probe that fails is reported, not raised)
        return f"unknown ({type(exc).__name__})"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe(extras: Mapping[str, str] | None = None) -> Probe:
    """Versions, the CPU's capabilities, the devices, what ``auto`` resolves to, the optional extras."""
    import platform

    import cen

    extras = extras or {"onnxruntime": "onnxruntime", "torch-fidelity": "torch-fidelity", "timm": "timm"}
    out = Probe()
    out.versions = {
        "cen": cen.__version__,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "python": platform.python_version(),
    }
    out.cpu = {
        "model": cpu_model(),
        "cores_available": available_cores(),
        "cores_total": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": _safely(cpu_isa),
        "bf16_native": _safely(cpu_bf16_native),
        "amx": _safely(cpu_amx),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
            if k in os.environ
        },
    }
    out.devices = [{"name": "cpu", "type": "cpu"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            out.devices.append(
                {
                    "name": f"cuda:{i}",
                    "type": "cuda",
                    "model": torch.cuda.get_device_name(i),
                    "capability": f"{major}.{minor}",
                    "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                }
            )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and _safely(mps.is_available) is True:
        out.devices.append({"name": "mps", "type": "mps"})
    for dev in out.devices:
        r = resolve(AUTO, AUTO, dev["name"])
        out.auto[dev["name"]] = {
            "precision": r.precision,
            "channels_last": r.channels_last,
            "reason": r.notice or r.reason,
        }
    out.extras = {name: _version(dist) for name, dist in extras.items()}
    return out


def format_probe(p: Probe) -> str:
    """The screen ``cen env`` prints."""
    v, c = p.versions, p.cpu
    lines = [
        f"cen {v['cen']}, torch {v['torch']}, torchvision {v['torchvision']}, Python {v['python']}",
        f"CPU: {c['model']}",
        f"  cores: {c['cores_available']} available of {c['cores_total']}; torch threads {c['torch_threads']}",
        f"  ISA torch dispatches to: {c['isa']}; native bf16 (oneDNN): {_yes(c['bf16_native'])}; AMX: {_yes(c['amx'])}",
    ]
    if c["env"]:
        lines.append("  environment: " + ", ".join(f"{k}={val}" for k, val in c["env"].items()))
    lines.append("devices:")
    for dev in p.devices:
        extra = ""
        if dev["type"] == "cuda":
            extra = f" {dev['model']}, compute capability {dev['capability']}, {dev['memory_gib']} GiB"
        auto = p.auto.get(dev["name"], {})
        lines.append(
            f"  {dev['name']}:{extra} auto -> precision {auto.get('precision')}, channels_last "
            f"{str(auto.get('channels_last')).lower()} ({auto.get('reason')})"
        )
    lines.append("optional extras: " + ", ".join(f"{k} {val or 'absent'}" for k, val in p.extras.items()))
    return "\n".join(lines)


def _yes(value) -> str:
    return {True: "yes", False: "no"}.get(value, str(value))
