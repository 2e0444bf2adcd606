"""Throughput of the segmentation training input pipeline: today's path against the loaders' path.

    OMP_NUM_THREADS=1 python benchmarks/bench_dataloader.py --workers 0 2

Generates a few scenes at NYUDv2 size (480x640 PNG RGB + 16-bit depth + 8-bit labels) in a
temporary directory and runs the reference recipe (shorter side 350 x random scale 0.5-2.0 in
one resize, normalise, pad/crop 500, mirror; batch 6) through four pipelines on the same files:

* ``pil+float``: the path before the loaders decoded with ``torchvision.io`` (until 2026-11-27):
  ``cen.data.base.MultiModalDataset`` (PIL decode) with that day's numpy decoders (kept below
  as the baseline) and the v2 steps one by one;
* ``tvio+uint8``: ``cen.data.NYUDv2`` as it loads by default (``torchvision.io`` decode,
  ``SegmentationTrain.from_raw`` resizing 8-bit images in uint8; within one 8-bit level);
* ``tvio+float``: the same with ``uint8_resize=False`` (bit-identical to ``pil+float``);
* ``tvio+uint8+cache``: ``tvio+uint8`` with ``cache_dir`` (``data.cache_dir``): the decoded pixels
  are kept as uncompressed ``.npy`` files (:class:`cen.data.decoded_cache.DecodedCache`), as in
  every epoch after the first; the cache (in the temporary directory, removed at the end) is
  filled by one pass over the files before timing, and the script checks that its samples equal
  ``tvio+uint8``'s bit for bit.

Per round (rotating order, same seeds so every pipeline draws the same scales and crops): the
CPU time of one sample in this process with one torch thread, and samples/s through a
``DataLoader`` for each ``--workers`` count (0 = in the main process). Prints the medians as
a table, the load average before and after, and one JSON line with the ratios to today's path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import machine  # benchmarks/ is the script folder, so on sys.path

TODAY = "pil+float"
CACHED = "tvio+uint8+cache"


def samples_per_s(dataset, workers: int, batch_size: int, batches: int) -> float:
    """Samples/s over ``batches`` batches after one warm-up batch (worker start, first decode)."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    next(it)
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
        torch.manual_seed(0)
        dataset[0]
        start = time.process_time()
        for i in range(samples):
            dataset[i % len(dataset)]
        return 1000 * (time.process_time() - start) / samples
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class NumpyDecoder:
    """The decoders as they were before the two-step decoders (baseline only): PIL's numpy array
    -> float32 in numpy, permuted and made contiguous, then scaled; masks checked in numpy."""

    kind: str
    scale: float = 1.0 / 255.0
    num_classes: int = 0
    ignore_index: int = 255

    def __call__(self, arr: np.ndarray, path: Path):
        import torch

        if self.kind == "mask":
            bad = (arr >= self.num_classes) & (arr != self.ignore_index)
            if bad.any():
                raise ValueError(f"{path}: label value(s) {np.unique(arr[bad])[:8]} out of range")
            return torch.from_numpy(np.ascontiguousarray(arr).astype(np.uint8, copy=False))
        if self.kind == "depth" and (arr.dtype != np.uint16 or arr.ndim != 2):
            raise ValueError(f"{path}: depth image is {arr.dtype}; expected 16-bit")
        t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32, copy=False))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        scale = 1.0 / 65535.0 if self.kind == "image" and arr.dtype == np.uint16 else self.scale
        return t.contiguous() * scale


def pipelines(root: Path, crop: int, shorter_side: int, cache_dir: Path) -> dict:
    from cen.data import NYUDv2
    from cen.data.base import MultiModalDataset
    from cen.data.synth import NUM_CLASSES
    from cen.data.transforms import segmentation_train

    def recipe(uint8_resize: bool):
        return segmentation_train(crop, scale_range=(0.5, 2.0), shorter_side=shorter_side, uint8_resize=uint8_resize)

    fast = NYUDv2(root, "train.txt", num_classes=NUM_CLASSES, transform=recipe(True))
    exact = NYUDv2(root, "train.txt", num_classes=NUM_CLASSES, transform=recipe(False))
    cached = NYUDv2(root, "train.txt", num_classes=NUM_CLASSES, transform=recipe(True), cache_dir=cache_dir)
    numpy_decoders = {
        "rgb": NumpyDecoder("image"),
        "depth": NumpyDecoder("depth", scale=fast.decoders["depth"].scale),
        "mask": NumpyDecoder("mask", num_classes=NUM_CLASSES),
    }
    return {
        TODAY: MultiModalDataset(fast.entries, numpy_decoders, recipe(False)),
        "tvio+uint8": fast,
        "tvio+float": exact,
        CACHED: cached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--cpu-samples", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--crop", type=int, default=500)
    parser.add_argument("--shorter-side", type=int, default=350)
    parser.add_argument(
        "--compress-level",
        type=int,
        default=None,
        help="re-save the RGB and depth PNGs with this zlib level (0 = stored: same values, faster to decode)",
    )
    args = parser.parse_args()

    import warnings

    import torch

    from cen.data.synth import generate

    # torchvision 0.29 warns that its image decoders will move to TorchCodec; not this benchmark's news
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="cen-bench-loader-"))
    try:
        generate(tmp, args.scenes, args.height, args.width, seed=0, splits=(1.0, 0.0, 0.0), progress=False, workers=1)
        if args.compress_level is not None:
            from PIL import Image

            for path in [*tmp.glob("rgb/*.png"), *tmp.glob("depth/*.png")]:
                with Image.open(path) as img:
                    img.load()
                    img.save(path, compress_level=args.compress_level)
        data = pipelines(tmp, args.crop, args.shorter_side, tmp / "cache")
        names = list(data)
        for i in range(len(data[CACHED])):  # fill the cache: the epochs after the first
            data[CACHED][i]
        cache_mb = sum(f.stat().st_size for f in (tmp / "cache").rglob("*.npy")) / 2**20
        # the baseline computes what the loaders compute (tests/data/test_fast_loading.py), the cache changes nothing
        for i in range(2):
            for base, other in ((TODAY, "tvio+float"), ("tvio+uint8", CACHED)):
                torch.manual_seed(i)
                a = data[base][i]
                torch.manual_seed(i)
                b = data[other][i]
                assert all(torch.equal(a[k], b[k]) for k in a), f"{base} and {other} differ"
        cpu: dict[str, list[float]] = {n: [] for n in names}
        rate: dict[tuple[str, int], list[float]] = {(n, w): [] for n in names for w in args.workers}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name in names[r % len(names) :] + names[: r % len(names)]:
                ms = cpu_ms_per_sample(data[name], args.cpu_samples)
                rates = {w: samples_per_s(data[name], w, args.batch_size, args.batches) for w in args.workers}
                if r > 0:
                    cpu[name].append(ms)
                    for w, v in rates.items():
                        rate[(name, w)].append(v)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    results = []
    for name in names:
        row = {"pipeline": name, "cpu_ms_per_sample": round(statistics.median(cpu[name]), 2)}
        for w in args.workers:
            row[f"samples_per_s_{w}_workers"] = round(statistics.median(rate[(name, w)]), 1)
        results.append(row)
    today = results[0]
    ratios = {}
    for row in results[1:]:
        ratios[row["pipeline"]] = {
            "cpu": round(today["cpu_ms_per_sample"] / row["cpu_ms_per_sample"], 2),
            **{
                f"{w}_workers": round(row[f"samples_per_s_{w}_workers"] / today[f"samples_per_s_{w}_workers"], 2)
                for w in args.workers
            },
        }
    config = {
        "height": args.height,
        "width": args.width,
        "shorter_side": args.shorter_side,
        "scale_range": [0.5, 2.0],
        "crop": args.crop,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "cpu_samples": args.cpu_samples,
        "rounds": args.rounds,
        "compress_level": args.compress_level,
        "cache_mb": round(cache_mb, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(f"machine: {machine()}")
    print(
        f"pipeline: {args.height}x{args.width} PNG rgb+depth+mask -> shorter side {args.shorter_side} x scale "
        f"0.5-2.0, normalise, pad/crop {args.crop}, mirror; batch {args.batch_size}; median of {args.rounds} rounds"
    )
    if args.compress_level is not None:
        print(f"RGB and depth PNGs re-saved with zlib level {args.compress_level}")
    print(f"1-minute load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{CACHED}: {cache_mb:.1f} MB of decoded pixels for {args.scenes} scenes")
    header = f"{'pipeline':<16} {'CPU ms/sample':>13}" + "".join(f" {f'samples/s {w}w':>14}" for w in args.workers)
    print(header)
    for row in results:
        cells = "".join(f" {row[f'samples_per_s_{w}_workers']:>14.1f}" for w in args.workers)
        print(f"{row['pipeline']:<16} {row['cpu_ms_per_sample']:>13.1f}{cells}")
    for name, r in ratios.items():
        print(f"{name} vs {TODAY}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    print(
        json.dumps(
            {"benchmark": "dataloader", "machine": machine(), "config": config, "results": results, "ratio": ratios}
        )
    )


if __name__ == "__main__":
    main()
