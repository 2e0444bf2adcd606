"""Throughput of the segmentation training input pipeline (decode + joint transforms).

    python benchmarks/bench_dataloader.py --height 480 --width 640 --workers 2

Generates a few scenes at the given size (NYUDv2 size by default) in a temporary
directory, then measures samples/s of ``NYUDv2(..., transform=segmentation_train(...))``
through a ``DataLoader`` with the reference recipe (shorter side 350, random scale
0.5-2.0, crop 500, mirror, batch 6), and the CPU time of one sample. Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/ is the script folder, so on sys.path


def measure(dataset, workers: int, batch_size: int, batches: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    next(it)  # warm-up: worker start, first decode
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        seen += batch["rgb"].shape[0]
    return seen / (time.perf_counter() - start)


def cpu_ms_per_sample(dataset, samples: int) -> float:
    """CPU time (ms) of one sample in this process with one torch thread: independent
    of the load of other processes, unlike samples/s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]
        start = time.process_time()
        for i in range(samples):
            dataset[i % len(dataset)]
        return 1000 * (time.process_time() - start) / samples
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--crop", type=int, default=500)
    parser.add_argument("--shorter-side", type=int, default=350)
    args = parser.parse_args()

    import torch

    from cen.data import NYUDv2
    from cen.data.synth import NUM_CLASSES, generate
    from cen.data.transforms import segmentation_train

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="cen-bench-loader-"))
    try:
        generate(
            tmp,
            args.scenes,
            args.height,
            args.width,
            seed=0,
            splits=(1.0, 0.0, 0.0),
            progress=False,
            workers=min(2, os.cpu_count() or 1),
        )
        transform = segmentation_train(args.crop, scale_range=(0.5, 2.0), shorter_side=args.shorter_side)
        dataset = NYUDv2(tmp, "train.txt", num_classes=NUM_CLASSES, transform=transform)
        cpu_ms = cpu_ms_per_sample(dataset, 2 * args.scenes)
        results = []
        for workers in args.workers:
            rate = measure(dataset, workers, args.batch_size, args.batches)
            results.append({"workers": workers, "samples_per_s": round(rate, 1)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    config = {
        "height": args.height,
        "width": args.width,
        "shorter_side": args.shorter_side,
        "scale_range": [0.5, 2.0],
        "crop": args.crop,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "torch_threads": torch.get_num_threads(),
        "cpu_ms_per_sample_1_thread": round(cpu_ms, 1),
    }
    print(f"machine: {machine()}")
    print(
        f"pipeline: {args.height}x{args.width} PNG rgb+depth+mask -> shorter side {args.shorter_side}, "
        f"scale 0.5-2.0, crop {args.crop}, mirror; batch {args.batch_size}"
    )
    print(f"CPU per sample (1 thread, in process): {cpu_ms:.1f} ms")
    print(f"{'workers':>7} {'samples/s':>10}")
    for r in results:
        print(f"{r['workers']:>7} {r['samples_per_s']:>10.1f}")
    print(json.dumps({"benchmark": "dataloader", "machine": machine(), "config": config, "results": results}))


if __name__ == "__main__":
    main()
