"""Inference throughput: eager PyTorch, compiled PyTorch and onnxruntime on the same CEN RefineNet.

The model is the scenes recipe's (``configs/scenes.yaml``): RefineNetCEN on
ResNet-18 with decoder widths (128, 64, 64, 64), 7 classes, RGB + depth, at
72 x 96, random weights with 30 % of the exchanging gammas under theta (so
channels really are exchanged). Variants, all in eval mode, fp32, on the CPU:

* ``eager``: the PyTorch model under ``torch.inference_mode``;
* ``frozen``: the frozen copy that is exported (:func:`cen.export.freeze`), eager;
* ``compiled``: ``torch.compile(model, dynamic=False)`` (default Inductor), one
  graph per batch size, compiled by an untimed call (seconds reported as
  ``compile_s``); skipped with a note if compilation fails;
* ``onnxruntime``: the file written by :func:`cen.export.export_onnx`, run by
  :class:`cen.export.OnnxRunner` with ``--threads`` intra-op threads.

Timing: for each batch size the variants run interleaved in rounds with a
rotating order, the first ``--warmup`` rounds discarded; reported are the median,
min and interquartile range of ``--repeats`` rounds and images/s = batch /
median (one image = one RGB-D sample, both modalities). The batch is the same
random tensors for every variant; outputs are checked to agree.

Usage::

    python benchmarks/bench_export.py                      # batch 1 and 8, 2 threads
    python benchmarks/bench_export.py --repeats 21 --json export.json
    python benchmarks/bench_export.py --backbone resnet50 --widths 512 256 256 256 --size 240 320
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cen.core.norms import _ModalityNorm
from cen.export import OnnxRunner, export_onnx, freeze
from cen.models import RefineNetCEN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

NAMES = ("rgb", "depth")
VARIANTS = ("eager", "frozen", "compiled", "onnxruntime")


def build_model(args) -> RefineNetCEN:
    torch.manual_seed(0)
    model = RefineNetCEN(args.backbone, args.classes, NAMES, decoder_widths=tuple(args.widths))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _ModalityNorm) and m.exchange:
                m.gamma[torch.rand(m.gamma.shape, generator=g) < 0.3] = m.threshold / 10
    return model.eval()


def make_calls(model, onnx_path: Path, args) -> dict:
    """``{variant: fn({name: Tensor}) -> {key: np.ndarray}}``."""
    frozen = freeze(model)
    runner = OnnxRunner(onnx_path, threads=args.threads)

    def torch_call(fn):
        def call(x):
            with torch.inference_mode():
                return {k: v.numpy() for k, v in fn(x).items()}

        return call

    calls = {
        "eager": torch_call(model),
        "frozen": torch_call(lambda x: dict(zip(frozen.outputs, frozen(*[x[n] for n in frozen.inputs])))),
        "onnxruntime": lambda x: runner({k: v.numpy() for k, v in x.items()}),
    }
    if not args.no_compile:
        calls["compiled"] = torch_call(torch.compile(model, dynamic=False))
    return calls


def time_rounds(calls: dict, x: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    names = list(calls)
    times = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            calls[n](x)
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return times


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = build_model(args)
    notes: list[str] = []
    results = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine(),
        "torch": torch.__version__,
        "config": {
            "backbone": args.backbone,
            "decoder_widths": list(args.widths),
            "classes": args.classes,
            "size": list(args.size),
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "modalities": list(NAMES),
        },  # fmt: skip
        "batches": {},
        "notes": notes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        results["export_s"] = time.perf_counter() - t0
        calls = make_calls(model, onnx_path, args)
        for batch in args.batch:
            g = torch.Generator().manual_seed(batch)
            x = {n: torch.randn(batch, 3, *args.size, generator=g) for n in NAMES}
            entry = {"variants": {}}
            active = dict(calls)
            reference = active["eager"](x)
            for name in list(active):  # first call: compiles; check every variant agrees with eager
                t0 = time.perf_counter()
                try:
                    out = active[name](x)
                except Exception as err:  # noqa: BLE001  (a compiler failure is reported, not fatal)
                    notes.append(
                        f"{name} skipped at batch {batch}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    )
                    del active[name]
                    continue
                if name == "compiled":
                    entry.setdefault("compile_s", time.perf_counter() - t0)
                entry.setdefault("max_abs_diff", {})[name] = max(
                    float(np.abs(reference[k] - out[k]).max()) for k in out
                )
            print(
                f"[batch {batch}] timing {args.warmup} warmup + {args.repeats} rounds ...", file=sys.stderr, flush=True
            )
            times = time_rounds(active, x, args.repeats, args.warmup)
            for name, ts in times.items():
                s = sorted(ts)
                q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
                med = statistics.median(s)
                entry["variants"][name] = {"median_s": med, "min_s": s[0], "iqr_s": [q[0], q[2]], "times_s": ts,
                                           "images_per_s": batch / med}  # fmt: skip
            eager = entry["variants"]["eager"]["median_s"]
            entry["speedup_over_eager"] = {n: eager / v["median_s"] for n, v in entry["variants"].items()}
            results["batches"][str(batch)] = entry
    if args.no_compile:
        notes.append("compiled skipped: --no-compile")
    return results


def format_table(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"machine: {results['machine']}; torch {results['torch']}, {cfg['threads']} threads",
        f"RefineNetCEN {cfg['backbone']}, decoder {cfg['decoder_widths']}, {cfg['classes']} classes, "
        f"{'+'.join(cfg['modalities'])}, {cfg['size'][0]}x{cfg['size'][1]}, fp32, eval; median of "
        f"{cfg['repeats']} interleaved rounds after {cfg['warmup']} warmup; export took {results['export_s']:.0f} s",
        "",
        "| batch | variant | images/s | median ms | min ms | IQR ms | x eager | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, entry in results["batches"].items():
        for name, v in entry["variants"].items():
            lines.append(
                f"| {batch} | {name} | {v['images_per_s']:.1f} | {v['median_s'] * 1e3:.1f} | {v['min_s'] * 1e3:.1f} | "
                f"{v['iqr_s'][0] * 1e3:.1f}-{v['iqr_s'][1] * 1e3:.1f} | {entry['speedup_over_eager'][name]:.2f} | "
                f"{entry['max_abs_diff'].get(name, 0.0):.1e} |"
            )
    lines += [f"note: {n}" for n in results["notes"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--widths", type=int, nargs=4, default=[128, 64, 64, 64], help="decoder widths, deepest first")
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--size", type=int, nargs=2, default=[72, 96], metavar=("H", "W"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(format_table(results))


if __name__ == "__main__":
    main()
