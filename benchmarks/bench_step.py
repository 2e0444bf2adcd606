"""Benchmark of a full training step: reference-style RefineNet-CEN against ``cen.models.RefineNetCEN``.

One step is: zero the gradients, forward, loss (cross-entropy of every branch and
of the ensemble against the same mask at the logits' resolution, 1/4 of the
input), backward, one SGD step. The models are the RefineNet-CEN of the paper
(ResNet-101 backbone by default, 40 classes) for ``M`` modalities (2), batch ``B``
per modality (2) at ``S x S`` (192), built from one set of random weights in
which the same random 30 % of the exchanging gammas are under theta, so that
channels really are exchanged. Variants:

* ``reference``: ``benchmarks/reference_list_refinenet.py``, the reference code's
  layout (lists of per-modality tensors, shared layers called per modality,
  boolean-mask exchange), fp32 NCHW, as the reference runs;
* ``cen``: :class:`cen.models.RefineNetCEN`, fp32 NCHW;
* ``cen+bf16``: the same under ``torch.autocast`` in bfloat16 (what ``train.precision=bf16`` does);
* ``cen+bf16+cl``: bf16 and channels-last parameters and inputs (``train.channels_last=true``);
* ``cen+bf16+cl+lean``: also ``train.recast_weights=true`` and ``train.step_in_backward=true``
  (backward recasts the weights instead of keeping autocast's copies; each parameter steps
  inside backward and its gradient is freed: :mod:`cen.train.lean_memory`);
* ``cen+bf16+cl+compile`` (``--compile``; minutes of compiling): that model
  under ``torch.compile`` (Inductor), as ``train.compile=true`` does; compiled by
  one untimed step first (its seconds are reported).

The cen variants run through :class:`cen.train.precision.Precision`, the code the
engine uses (autocast around forward and loss, backward and step outside it).

Timing: the variants run interleaved in rounds with a rotating order, after
``--warmup`` untimed rounds; the median of ``--repeats`` rounds is reported with
the min. Peak memory (not for the compiled variant): on CUDA
``torch.cuda.max_memory_allocated`` during one step minus what was allocated
before it; on the CPU the peak of torch's allocator events under
``torch.profiler`` (see ``benchmarks/bench_core.py``). On CUDA also the host
synchronisations of one step (``torch.cuda.set_sync_debug_mode``: each
synchronising call warns once; counted).

Usage::

    python benchmarks/bench_step.py                                      # CPU, 2 threads, B=2, 192x192
    python benchmarks/bench_step.py --repeats 5 --json step.json
    python benchmarks/bench_step.py --device cuda --batch 6 --size 500 --compile   # the paper's setting
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import cpu_tensor_peak_bytes, cuda_step_peak_bytes, time_variants  # noqa: E402
from machine import machine  # noqa: E402
from reference_list_refinenet import ListRefineNet, nonzero_per_forward  # noqa: E402

from cen.core.norms import _ModalityNorm  # noqa: E402
from cen.models import RefineNetCEN  # noqa: E402
from cen.train.precision import Precision, compile_model  # noqa: E402

EAGER = ("reference", "cen", "cen+bf16", "cen+bf16+cl", "cen+bf16+cl+lean")
COMPILED = "cen+bf16+cl+compile"
SETTINGS = {  # variant -> (precision, channels_last, compiled, Precision's memory options)
    "cen": ("fp32", False, False, {}),
    "cen+bf16": ("bf16", False, False, {}),
    "cen+bf16+cl": ("bf16", True, False, {}),
    "cen+bf16+cl+lean": ("bf16", True, False, {"recast_weights": True, "step_in_backward": True}),
    COMPILED: ("bf16", True, True, {}),
}
NAMES = ("rgb", "depth", "hha", "normal")


def build_cen(backbone: str, num_modalities: int, num_classes: int, fraction: float, seed: int = 0) -> RefineNetCEN:
    """A RefineNetCEN with random weights and ``fraction`` of its exchanging gammas under theta."""
    torch.manual_seed(seed)
    model = RefineNetCEN(backbone, num_classes, NAMES[:num_modalities])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, _ModalityNorm) and mod.exchange:
                mod.gamma[torch.rand(mod.gamma.shape, generator=g) < fraction] = model.threshold / 10
    return model.train()


def make_batch(
    batch: int, num_modalities: int, size: int, num_classes: int, seed: int = 1
) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {n: torch.randn(batch, 3, size, size, generator=g) for n in NAMES[:num_modalities]}
    out = -(-size // 4)
    return inputs, torch.randint(0, num_classes, (batch, out, out), generator=g)


def make_step(name: str, model, inputs: dict, target: torch.Tensor, device: torch.device, lr: float):
    """A closure running one training step of variant ``name``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # no momentum: no optimiser state to allocate
    if name == "reference":
        xs = [x.to(device) for x in inputs.values()]
        target = target.to(device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = sum(F.cross_entropy(out, target) for out in model(xs))
            loss.backward()
            optimizer.step()

        return step
    precision, channels_last, compiled, memory_options = SETTINGS[name]
    prec = Precision(precision, device, channels_last=channels_last, **memory_options)
    prec.prepare_model(model)
    prec.add_optimizers({"model": optimizer})
    batch = prec.prepare_batch({k: v.to(device) for k, v in inputs.items()})
    target = target.to(device)
    net = compile_model(model) if compiled else model

    def step():
        with prec.autocast():
            loss = sum(F.cross_entropy(out, target) for out in net(batch).values())
            prec.optimize(loss, optimizer)

    return step


def count_host_syncs(step) -> int:
    """Synchronising CUDA calls in one ``step`` (each warns under ``set_sync_debug_mode("warn")``)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def run(args) -> dict:
    device = torch.device(args.device)
    names = ["reference"] + [n for n in EAGER[1:] if n in args.variants] + ([COMPILED] if args.compile else [])
    base = build_cen(args.backbone, args.modalities, args.classes, args.exchange_fraction)
    models = {"reference": ListRefineNet.from_cen(base)}
    for n in names[1:]:
        models[n] = copy.deepcopy(base)
    del base
    inputs, target = make_batch(args.batch, args.modalities, args.size, args.classes)
    for m in models.values():
        m.to(device).train()
    steps = {n: make_step(n, models[n], inputs, target, device, args.lr) for n in names}
    result = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine() + (f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "config": {
            "backbone": args.backbone,
            "modalities": args.modalities,
            "batch_per_modality": args.batch,
            "size": args.size,
            "classes": args.classes,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "device": str(device),
            "exchange_fraction": args.exchange_fraction,
        },
        "variants": {},
    }
    compile_s = None
    if args.compile:
        print(f"compiling {COMPILED} (one untimed step) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        steps[COMPILED]()
        compile_s = time.perf_counter() - t0
    memory = {}
    if not args.no_memory:
        for n in names:
            if n == COMPILED:
                continue
            if device.type == "cuda":
                models[n].zero_grad(set_to_none=True)
                memory[n] = cuda_step_peak_bytes(steps[n], device)[0]
            else:
                memory[n] = cpu_tensor_peak_bytes(steps[n], models[n])[0]
    syncs = {}
    if device.type == "cuda":
        for n in names:
            steps[n]()  # past any first-call work
            syncs[n] = count_host_syncs(steps[n])
    xs = [x.to(device) for x in inputs.values()]
    nonzero = nonzero_per_forward(models["reference"], xs)
    print(
        f"timing {args.warmup} warmup + {args.repeats} rounds of {len(names)} variants ...", file=sys.stderr, flush=True
    )
    times, cpu_times = time_variants(steps, args.repeats, args.warmup, device)
    ref, ref_cpu = statistics.median(times["reference"]), statistics.median(cpu_times["reference"])
    for n in names:
        ts, cs = times[n], cpu_times[n]
        entry = {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "times_s": ts,
            "speedup_vs_reference": ref / statistics.median(ts),
            "cpu_median_s": statistics.median(cs),
            "cpu_times_s": cs,
            "cpu_speedup_vs_reference": ref_cpu / statistics.median(cs),
        }
        if n in memory:
            entry["peak_bytes"] = memory[n]
            entry["memory_vs_reference"] = memory[n] / memory["reference"]
        if n in syncs:
            entry["host_syncs_per_step"] = syncs[n]
        if n == COMPILED:
            entry["compile_s"] = compile_s
        if n == "reference":
            entry["nonzero_per_forward"] = nonzero
        result["variants"][n] = entry
    result["load_at_end"] = machine()
    return result


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [
        f"machine: {result['machine']}, torch {result['torch']}, {result['torch_threads']} threads",
        f"training step (forward, loss, backward, SGD step), {c['backbone']} RefineNet-CEN, M={c['modalities']}, "
        f"B={c['batch_per_modality']} per modality, {c['size']}x{c['size']}, {c['device']}, median of "
        f"{c['repeats']} interleaved rounds after {c['warmup']} warmup",
        "",
        "| variant | median s | min s | speed-up vs reference | CPU s (median) | CPU speed-up | peak MiB "
        "| memory vs reference | host syncs/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, v in result["variants"].items():
        mem = f"{v['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in v else "-"
        rel = f"{v['memory_vs_reference']:.2f}" if "memory_vs_reference" in v else "-"
        lines.append(
            f"| {n} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v['speedup_vs_reference']:.2f}x | "
            f"{v['cpu_median_s']:.2f} | {v['cpu_speedup_vs_reference']:.2f}x | "
            f"{mem} | {rel} | {v.get('host_syncs_per_step', '-')} |"
        )
    extra = [f"reference: {result['variants']['reference']['nonzero_per_forward']} nonzero per forward"]
    if COMPILED in result["variants"]:
        extra.append(f"compile: {result['variants'][COMPILED]['compile_s']:.0f} s for the first step")
    lines += ["", "; ".join(extra), f"load at the end: {result['load_at_end']}"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet101", help="RefineNetCEN backbone (a bottleneck or basic ResNet)")
    p.add_argument("--modalities", type=int, default=2, choices=range(1, len(NAMES) + 1))
    p.add_argument("--batch", type=int, default=2, help="samples per modality")
    p.add_argument("--size", type=int, default=192, help="input height and width")
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--exchange-fraction", type=float, default=0.3, help="share of exchanging gammas under theta")
    p.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate of the step")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on the CPU")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=EAGER[1:],
        default=list(EAGER[1:]),
        help="the eager cen variants to time (the reference always runs)",
    )
    p.add_argument("--compile", action="store_true", help=f"also time {COMPILED} (minutes of compiling on a CPU)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    result = run(args)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
