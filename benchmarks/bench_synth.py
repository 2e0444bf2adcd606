"""Benchmark of the scene generator: wall time to render and write N scenes.

    python benchmarks/bench_synth.py --num 1000 --height 120 --width 160 --workers 1

Prints a table and one JSON line (scenes/s, seconds, bytes on disk, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=None, help="keep the last data set here (default: temporary, deleted)")
    args = parser.parse_args()

    from cen.data.synth import generate

    results = []
    for workers in args.workers:
        tmp = Path(tempfile.mkdtemp(prefix="cen-bench-synth-"))
        start = time.perf_counter()
        generate(tmp, args.num, args.height, args.width, args.seed, progress=False, workers=workers)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        results.append({
            "num": args.num, "height": args.height, "width": args.width, "workers": workers,
            "seconds": round(seconds, 2), "scenes_per_s": round(args.num / seconds, 1),
            "megabytes": round(size / 1e6, 1),
        })
        if args.out and workers == args.workers[-1]:
            shutil.rmtree(args.out, ignore_errors=True)
            shutil.move(str(tmp), args.out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {machine()}")
    print(f"{'scenes':>7} {'size':>9} {'workers':>7} {'seconds':>8} {'scenes/s':>9} {'MB':>7}")
    for r in results:
        print(f"{r['num']:>7} {r['height']:>4}x{r['width']:<4} {r['workers']:>7} {r['seconds']:>8.2f} "
              f"{r['scenes_per_s']:>9.1f} {r['megabytes']:>7.1f}")
    print(json.dumps({"benchmark": "synth", "machine": machine(), "results": results}))


if __name__ == "__main__":
    main()
