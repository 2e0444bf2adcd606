"""Benchmark of the scene generator: wall time to render and write N scenes.

    python benchmarks/bench_synth.py --num 1000 --height 120 --width 160 --workers 1

Prints a table and one JSON line (scenes/s, wall seconds, CPU seconds of this process
and its workers, bytes on disk, machine). On a shared machine the wall time depends on
the load of others; the CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/ is the script folder, so on sys.path


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (s)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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
        start, cpu_start = time.perf_counter(), cpu_seconds()
        generate(tmp, args.num, args.height, args.width, args.seed, progress=False, workers=workers)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_start
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        results.append(
            {
                "num": args.num,
                "height": args.height,
                "width": args.width,
                "workers": workers,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "scenes_per_s": round(args.num / seconds, 1),
                "megabytes": round(size / 1e6, 1),
            }
        )
        if args.out and workers == args.workers[-1]:
            shutil.rmtree(args.out, ignore_errors=True)
            shutil.move(str(tmp), args.out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {machine()} (load = 1-minute load average at the end)")
    print(f"{'scenes':>7} {'size':>9} {'workers':>7} {'wall s':>8} {'CPU s':>8} {'scenes/s':>9} {'MB':>7}")
    for r in results:
        print(
            f"{r['num']:>7} {r['height']:>4}x{r['width']:<4} {r['workers']:>7} {r['seconds']:>8.2f} "
            f"{r['cpu_seconds']:>8.2f} {r['scenes_per_s']:>9.1f} {r['megabytes']:>7.1f}"
        )
    print(json.dumps({"benchmark": "synth", "machine": machine(), "results": results}))


if __name__ == "__main__":
    main()
