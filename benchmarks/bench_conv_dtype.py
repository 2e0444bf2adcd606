"""How much faster one convolution runs in bf16 than in fp32 on this machine (channels-last).

    python benchmarks/bench_conv_dtype.py --threads 2 --json conv.json

The ceiling of what bf16 autocast can give a convolution-bound training step: RefineNet-101's
step spends ~3/4 of its time in convolutions (``docs/benchmarks.md``), so the step cannot gain
much more than its convolutions do. Shapes are RefineNet-101 layers at batch 4 (2 modalities x
2) and 192x192 input; each is timed in fp32 and in bf16 (weights and input cast beforehand,
as autocast's casts are not part of the convolution), forward only, interleaved, median of
``--repeats`` rounds of ``--calls`` calls after ``--warmup`` rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

#: (in channels, out channels, kernel, height = width) of RefineNet-101 layers at 192x192 input
SHAPES = ((64, 64, 3, 48), (256, 256, 3, 48), (512, 512, 3, 24), (1024, 256, 1, 12), (2048, 512, 3, 6))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_shape(cin: int, cout: int, k: int, hw: int, batch: int, repeats: int, warmup: int, calls: int) -> dict:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    runs = {}
    for name, dtype in DTYPES.items():
        c = nn.Conv2d(cin, cout, k, padding=k // 2).to(dtype).to(memory_format=torch.channels_last)
        c.load_state_dict(conv.state_dict())
        runs[name] = (c.requires_grad_(False), x.to(dtype))
    times: dict[str, list[float]] = {n: [] for n in DTYPES}
    names = list(DTYPES)
    for r in range(warmup + repeats):
        for name in names[r % 2 :] + names[: r % 2]:
            c, xi = runs[name]
            start = time.perf_counter()
            for _ in range(calls):
                c(xi)
            if r >= warmup:
                times[name].append((time.perf_counter() - start) / calls)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "shape": [cin, cout, k, hw],
        "fp32_ms": 1000 * med["fp32"],
        "bf16_ms": 1000 * med["bf16"],
        "speedup": med["fp32"] / med["bf16"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if min(args.threads, args.batch, args.repeats, args.calls) < 1 or args.warmup < 0:
        p.error("--threads, --batch, --repeats and --calls must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    rows = [time_shape(*s, args.batch, args.repeats, args.warmup, args.calls) for s in SHAPES]
    result = {
        "benchmark": "conv_dtype",
        "machine": machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "rows": rows,
        "median_speedup": statistics.median(r["speedup"] for r in rows),
    }
    print(f"{result['machine']}, torch {result['torch']}, {args.threads} threads, batch {args.batch}, channels-last")
    print("| in | out | kernel | size | fp32 ms | bf16 ms | bf16 speed-up |\n|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cin, cout, k, hw = r["shape"]
        print(f"| {cin} | {cout} | {k} | {hw} | {r['fp32_ms']:.2f} | {r['bf16_ms']:.2f} | {r['speedup']:.2f}x |")
    print(f"median speed-up {result['median_speedup']:.2f}x")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
