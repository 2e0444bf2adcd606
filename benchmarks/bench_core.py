"""Benchmark of the core: a converted, modality-stacked ResNet against the reference list layout.

For each torchvision ResNet (ResNet-50 and ResNet-101 by default) and ``M``
modalities (2), one training step (zero grads, forward, cross-entropy,
backward; train mode) at ``B`` samples per modality (2) and ``S x S`` (192) of:

* ``stacked``: ``cen.convert(resnet, M)`` on one stacked ``(B*M, 3, S, S)`` batch;
* ``list``: the same network written the reference way
  (``benchmarks/reference_list_resnet.py``: a list of per-modality tensors,
  every shared layer called once per modality, private ``bn_m`` modules,
  exchange by boolean-mask indexing), built from the *same* weights;
* ``plain``: the unconverted torchvision network on the same ``(B*M, ...)``
  batch: the floor, since the shared convolutions must run anyway.

In both exchanging variants the same random 30 % (``--exchange-fraction``) of
the ``(M, C)`` gammas of every exchanging norm are set under theta, so that
channels really are exchanged.

Timing: the variants run interleaved in rounds (the order rotates every round:
abc, bca, cab, ...) so that machine noise hits all of them alike; the first
``--warmup`` rounds are discarded; the median of ``--repeats`` rounds is
reported, with the min and the interquartile range.

Peak memory, per step, starting with no gradients: on CUDA,
``torch.cuda.max_memory_allocated`` during one step minus what was allocated
before it. On the CPU there is no allocator counter, so by default
(``--memory tensors``) one step runs under ``torch.profiler`` with
``profile_memory=True`` and the allocation/free events of torch's CPU
allocator are summed in time order: the peak is the most tensor memory
(activations saved for backward, temporaries, new gradients) the step held
above what existed before it. It is deterministic and unaffected by other
processes, but does not see memory allocated outside torch's allocator
(e.g. oneDNN's own scratch). ``--memory rss`` instead runs each variant in a
fresh subprocess, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``,
value 5), runs one step and reports ``VmHWM`` minus the ``VmRSS`` before the
step: everything the process touched, but blurred by malloc's caching
(memory freed while building the model is reused by the step and not
counted), so it is noisy between variants.

Also reported: how many ``aten::nonzero`` ops one forward dispatches (host
synchronisations on a GPU, graph breaks under ``torch.compile``).

``--compile`` adds ``stacked+compile`` and ``plain+compile``: the same two
models under ``torch.compile`` (default Inductor settings), compiled by one
untimed step before the rounds (its seconds are reported as ``compile_s``);
their peak memory and ``nonzero`` count are not measured. The list layout is
not compiled: every mask is a graph break. ``--compile-ablation`` also adds
``stacked+compile-fused``: the stacked model compiled with its batch norms
forced onto the eager route (one ``batch_norm`` on the ``(B, M*C, H, W)`` view,
see ``docs/core.md``), which is what the compile route replaced.

Usage::

    python benchmarks/bench_core.py                    # CPU, 2 threads, R50 + R101
    python benchmarks/bench_core.py --repeats 11 --json bench.json
    python benchmarks/bench_core.py --device cuda --batch 8 --size 384
    python benchmarks/bench_core.py --arch resnet50 --compile   # minutes of compiling on a CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import cen
from cen.core.norms import _ModalityNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_list_resnet import ListResNet  # noqa: E402

VARIANTS = ("stacked", "list", "plain")
COMPILED = ("stacked+compile", "plain+compile")
FUSED_ABLATION = "stacked+compile-fused"
THETA = 2e-2


# -- models and inputs ------------------------------------------------------
def build_models(arch: str, num_modalities: int, fraction: float, device: torch.device, seed: int = 0) -> dict:
    """The three variants, from one set of random weights (same gammas under theta in stacked and list)."""
    torch.manual_seed(seed)
    base = getattr(torchvision.models, arch)(weights=None)
    plain = copy.deepcopy(base)
    stacked = cen.convert(copy.deepcopy(base), num_modalities, threshold=THETA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in stacked.modules():
            if isinstance(mod, _ModalityNorm) and mod.exchange:
                gamma = mod.gamma
                pick = torch.rand(gamma.shape, generator=g) < fraction
                gamma[pick] = THETA / 10
    listed = ListResNet.from_torchvision(stacked, num_modalities, threshold=THETA)
    models = {"stacked": stacked, "list": listed, "plain": plain}
    for model in models.values():
        model.to(device).train()
    return models


def exchanged_fraction(stacked) -> float:
    masks = [mod.exchange_mask() for mod in stacked.modules() if isinstance(mod, _ModalityNorm) and mod.exchange]
    return float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))


def make_inputs(batch: int, num_modalities: int, size: int, device: torch.device, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    per_mod = [torch.randn(batch, 3, size, size, generator=g) for _ in range(num_modalities)]
    target = torch.randint(0, 1000, (batch * num_modalities,), generator=g)
    stacked = cen.stack(per_mod).to(device)
    per_mod = [x.to(device).contiguous() for x in per_mod]
    return stacked, per_mod, target.to(device)


def make_step(name: str, model, stacked_x, list_x, target):
    """A closure running one training step of variant ``name`` (same loss in all variants)."""
    num = len(list_x)
    if name == FUSED_ABLATION:
        inner = make_step("stacked", model, stacked_x, list_x, target)

        def step():
            # The route is read while tracing; keeping it patched during every call also keeps
            # Dynamo's guard on the patched function, so nothing recompiles on the other route.
            saved = cen.core.norms._split_route
            cen.core.norms._split_route = lambda: False
            try:
                inner()
            finally:
                cen.core.norms._split_route = saved

        return step
    if name.endswith("+compile"):
        return make_step(name.removesuffix("+compile"), model, stacked_x, list_x, target)
    if name == "list":
        per_mod_target = target.view(-1, num)

        def step():
            model.zero_grad(set_to_none=True)
            outs = model(list_x)
            loss = sum(F.cross_entropy(o, per_mod_target[:, m], reduction="sum") for m, o in enumerate(outs))
            (loss / target.numel()).backward()

    else:

        def step():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(stacked_x), target).backward()

    return step


def count_nonzero_ops(name, model, stacked_x, list_x) -> int:
    """``aten::nonzero`` calls in one forward (boolean-mask indexing calls it inside ``index``/``index_put_``)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(list_x if name == "list" else stacked_x)
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::nonzero", "aten::nonzero_static"))


# -- timing -----------------------------------------------------------------
def time_variants(steps: dict, repeats: int, warmup: int, device: torch.device):
    """Wall-clock and process CPU seconds per step, variants interleaved with a rotating order."""
    names = list(steps)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            steps[n]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r >= warmup:
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
    return wall, cpu


# -- memory -----------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_step_peak_bytes(step) -> tuple[int, str]:
    """Peak resident memory one call of ``step`` adds over the resident memory before it (bytes)."""
    import gc

    gc.collect()
    before = _proc_status_kib("VmRSS")
    if before is not None and _reset_peak_rss():
        step()
        return (_proc_status_kib("VmHWM") - before) * 1024, "VmHWM after clear_refs - VmRSS before"
    before_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = before if before is not None else before_maxrss
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak - before, 0) * 1024, "ru_maxrss - RSS before (lower bound)"


def cpu_tensor_peak_bytes(step, model) -> tuple[int, str]:
    """Peak of the bytes of tensor memory one ``step`` holds above what was allocated before it.

    From the allocation and free events that ``torch.profiler`` (``profile_memory=True``) records
    in torch's CPU allocator: every tensor, the autograd graph's saved tensors and the new
    gradients, deterministic and insensitive to other processes and to malloc's caching.
    """
    from torch.profiler import ProfilerActivity, profile

    model.zero_grad(set_to_none=True)  # the step starts from no gradients, as in the timing
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak, "torch.profiler allocation events: peak tensor bytes above the level before the step"


def cuda_step_peak_bytes(step, device) -> tuple[int, str]:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated - allocated before"


def memory_child(args) -> None:
    """Entry of the per-variant subprocess: build one variant, measure one step, print JSON."""
    device = torch.device(args.device)
    models = build_models(args.arch, args.modalities, args.exchange_fraction, device)
    model = models[args.variant]
    del models
    stacked_x, list_x, target = make_inputs(args.batch, args.modalities, args.size, device)
    step = make_step(args.variant, model, stacked_x, list_x, target)
    peak, method = cpu_step_peak_bytes(step)
    print(json.dumps({"peak_bytes": peak, "method": method}))


def cpu_memory(args, arch: str, variant: str) -> tuple[int, str]:
    cmd = [
        sys.executable, __file__, "--_memory-child",
        "--arch", arch, "--variant", variant,
        "--device", args.device, "--threads", str(args.threads),
        "--batch", str(args.batch), "--size", str(args.size),
        "--modalities", str(args.modalities), "--exchange-fraction", str(args.exchange_fraction),
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["peak_bytes"], result["method"]


# -- report -----------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args) -> dict:
    device = torch.device(args.device)
    results = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine_info(device),
        "config": {
            "batch_per_modality": args.batch,
            "modalities": args.modalities,
            "size": args.size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "exchange_fraction": args.exchange_fraction,
            "theta": THETA,
            "device": str(device),
        },  # fmt: skip
        "models": {},
    }
    for arch in args.arch:
        models = build_models(arch, args.modalities, args.exchange_fraction, device)
        stacked_x, list_x, target = make_inputs(args.batch, args.modalities, args.size, device)
        steps = {n: make_step(n, models[n], stacked_x, list_x, target) for n in VARIANTS}
        entry = {"exchanged_fraction": exchanged_fraction(models["stacked"]), "variants": {}}
        nonzeros = {n: count_nonzero_ops(n, models[n], stacked_x, list_x) for n in VARIANTS}
        compile_s = {}
        if args.compile:
            for name in COMPILED + ((FUSED_ABLATION,) if args.compile_ablation else ()):
                eager = models["stacked" if name == FUSED_ABLATION else name.removesuffix("+compile")]
                models[name] = torch.compile(copy.deepcopy(eager))
                steps[name] = make_step(name, models[name], stacked_x, list_x, target)
                print(f"[{arch}] compiling {name} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                steps[name]()
                compile_s[name] = time.perf_counter() - t0
        print(f"[{arch}] timing {args.warmup} warmup + {args.repeats} rounds ...", file=sys.stderr, flush=True)
        times, cpu_times = time_variants(steps, args.repeats, args.warmup, device)
        memory = {}
        if not args.no_memory and device.type == "cuda":
            memory = {n: cuda_step_peak_bytes(steps[n], device) for n in VARIANTS}
        elif not args.no_memory and args.memory == "tensors":
            memory = {n: cpu_tensor_peak_bytes(steps[n], models[n]) for n in VARIANTS}
        del steps, models
        if not args.no_memory and device.type != "cuda" and args.memory == "rss":
            print(f"[{arch}] peak RSS, one subprocess per variant ...", file=sys.stderr, flush=True)
            memory = {n: cpu_memory(args, arch, n) for n in VARIANTS}
        for n in steps_names(args):
            ts = sorted(times[n])
            q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
            entry["variants"][n] = {
                "median_s": statistics.median(ts),
                "min_s": ts[0],
                "iqr_s": [q[0], q[2]],
                "times_s": times[n],
                "cpu_median_s": statistics.median(cpu_times[n]),
                "cpu_times_s": cpu_times[n],
                "nonzero_per_forward": nonzeros.get(n),
            }
            if n in compile_s:
                entry["variants"][n]["compile_s"] = compile_s[n]
            if not args.no_memory and n in memory:
                entry["variants"][n]["peak_bytes"] = memory[n][0]
                entry["memory_method"] = memory[n][1]
        v = entry["variants"]
        entry["ratios"] = {
            "list_over_stacked_time": v["list"]["median_s"] / v["stacked"]["median_s"],
            "stacked_over_plain_time": v["stacked"]["median_s"] / v["plain"]["median_s"],
            # The list layout runs the plain network's convolutions plus its own overheads, and a
            # stacked model runs at least the plain network: list/plain bounds list/stacked.
            "list_over_plain_time": v["list"]["median_s"] / v["plain"]["median_s"],
            # median over rounds of the ratio within a round (same-moment noise cancels)
            "list_over_stacked_time_paired": statistics.median(a / b for a, b in zip(times["list"], times["stacked"])),
            "stacked_over_plain_time_paired": statistics.median(
                a / b for a, b in zip(times["stacked"], times["plain"])
            ),
            "list_over_stacked_cpu": v["list"]["cpu_median_s"] / v["stacked"]["cpu_median_s"],
            "stacked_over_plain_cpu": v["stacked"]["cpu_median_s"] / v["plain"]["cpu_median_s"],
        }
        if not args.no_memory:
            entry["ratios"]["stacked_over_list_memory"] = v["stacked"]["peak_bytes"] / v["list"]["peak_bytes"]
            entry["ratios"]["stacked_over_plain_memory"] = v["stacked"]["peak_bytes"] / v["plain"]["peak_bytes"]
        if args.compile:
            c = v["stacked+compile"]["median_s"]
            entry["ratios"]["compiled_stacked_over_plain_time"] = c / v["plain+compile"]["median_s"]
            entry["ratios"]["list_over_compiled_stacked_time"] = v["list"]["median_s"] / c
        if args.compile_ablation:
            entry["ratios"]["compiled_fused_over_plain_time"] = (
                v[FUSED_ABLATION]["median_s"] / v["plain+compile"]["median_s"]
            )
        results["models"][arch] = entry
    return results


def steps_names(args) -> tuple[str, ...]:
    return VARIANTS + (COMPILED if args.compile else ()) + ((FUSED_ABLATION,) if args.compile_ablation else ())


def format_table(results: dict) -> str:
    cfg, mach = results["config"], results["machine"]
    lines = [
        f"machine: {mach['cpu']}, nproc {mach['nproc']}, torch threads {mach['torch_threads']}, "
        f"torch {mach['torch']}, torchvision {mach['torchvision']}"
        + (f", GPU {mach['gpu']}" if "gpu" in mach else "")
        + (f", load average at start {mach['load_average_1_5_15'][0]:.1f}" if mach.get("load_average_1_5_15") else "")
        + (f", OMP_WAIT_POLICY={mach['omp_wait_policy']}" if mach.get("omp_wait_policy") else ""),
        f"training step, M={cfg['modalities']}, B={cfg['batch_per_modality']} per modality, "
        f"{cfg['size']}x{cfg['size']}, {cfg['device']}, median of {cfg['repeats']} interleaved rounds "
        f"after {cfg['warmup']} warmup",
        "",
        "| model | variant | median s | min s | IQR s | CPU s (median) | peak MiB | nonzero/fwd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in results["models"].items():
        for n, v in entry["variants"].items():
            mem = f"{v['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in v else "-"
            nonzero = "-" if v["nonzero_per_forward"] is None else v["nonzero_per_forward"]
            lines.append(
                f"| {arch} | {n} | {v['median_s']:.3f} | {v['min_s']:.3f} | "
                f"{v['iqr_s'][0]:.3f}–{v['iqr_s'][1]:.3f} | {v['cpu_median_s']:.3f} | {mem} | {nonzero} |"
            )
    lines += [
        "",
        "| model | exchanged | list/stacked time (target ≥ 1.25) | stacked/plain time (target ≤ 1.08) "
        "| list/plain time (bound on list/stacked) "
        "| list/stacked CPU | stacked/plain CPU | stacked/list memory (target ≤ 1) | stacked/plain memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in results["models"].items():
        r = entry["ratios"]
        mem = (
            f"{r['stacked_over_list_memory']:.2f} | {r['stacked_over_plain_memory']:.2f}"
            if "stacked_over_list_memory" in r
            else "- | -"
        )
        lines.append(
            f"| {arch} | {entry['exchanged_fraction']:.0%} | {r['list_over_stacked_time']:.2f} | "
            f"{r['stacked_over_plain_time']:.3f} | {r['list_over_plain_time']:.2f} | {r['list_over_stacked_cpu']:.2f} | "
            f"{r['stacked_over_plain_cpu']:.3f} | {mem} |"
        )
    compiled = [(a, e) for a, e in results["models"].items() if "compiled_stacked_over_plain_time" in e["ratios"]]
    if compiled:
        lines += [
            "",
            "| model | compiled stacked/plain time | list (eager)/compiled stacked time | compile s (stacked, plain) |",
            "|---|---|---|---|",
        ]
        for arch, entry in compiled:
            r, v = entry["ratios"], entry["variants"]
            lines.append(
                f"| {arch} | {r['compiled_stacked_over_plain_time']:.3f} | {r['list_over_compiled_stacked_time']:.2f} | "
                f"{v['stacked+compile']['compile_s']:.0f}, {v['plain+compile']['compile_s']:.0f} |"
            )
            if "compiled_fused_over_plain_time" in r:
                lines.append(
                    f"| {arch}, norms forced onto the eager route | "
                    f"{r['compiled_fused_over_plain_time']:.3f} | - | {v[FUSED_ABLATION]['compile_s']:.0f} |"
                )
    if any("memory_method" in e for e in results["models"].values()):
        method = next(e["memory_method"] for e in results["models"].values() if "memory_method" in e)
        lines += ["", f"peak memory: {method}, per step"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["resnet50", "resnet101"], help="torchvision ResNet builders")
    p.add_argument("--batch", type=int, default=2, help="samples per modality (stacked batch is batch * modalities)")
    p.add_argument("--size", type=int, default=192, help="input height and width")
    p.add_argument("--modalities", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--exchange-fraction", type=float, default=0.3, help="share of exchanging gammas set under theta")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on the CPU")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--memory", choices=("tensors", "rss"), default="tensors",
        help="CPU peak memory: tensor bytes from torch.profiler allocation events (default), or process "
        "peak RSS of one step in a fresh subprocess per variant (includes malloc caching; noisy)",
    )  # fmt: skip
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the stacked and plain models under torch.compile (slow to compile)",
    )
    p.add_argument(
        "--compile-ablation",
        action="store_true",
        help="with --compile: also the stacked model compiled with its norms on the eager route",
    )
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--_memory-child", dest="memory_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_ablation and not args.compile:
        p.error("--compile-ablation needs --compile")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    if args.memory_child:
        args.arch = args.arch[0] if isinstance(args.arch, list) else args.arch
        memory_child(args)
        return
    results = run(args)
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
