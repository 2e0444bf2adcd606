"""Benchmark of the modality LayerNorm / LayerNorm2d / GroupNorm against the plain norm on the same stacked batch.

For each case, one forward and backward (input gradient, parameter gradients) of:

* ``plain``: the torch / torchvision norm on the stacked ``(B*M, ...)`` batch: the floor,
  since the normalisation must run anyway;
* ``modality``: the ``cen.nn`` twin (``M`` private affines), no fusion;
* ``modality+exchange``: the twin as a fusion point with ``exchange`` (paper Eq. 6),
  30 % of its ``gamma`` under theta.

On a shared CPU the spread between rounds is large (other processes, page faults of
fresh temporaries): compare the medians of many rounds, and the minima.

Cases (``M = 2`` modalities of ``B`` samples each, fp32): the norms alone on ViT tokens
``(B*M, 197, 384)`` (``nn.LayerNorm``), ConvNeXt maps ``(B*M, 96, 56, 56)`` through
torchvision's ``LayerNorm2d`` and ``(B*M, 56, 56, 96)`` through ``nn.LayerNorm`` (a CNBlock's
norm), ``GroupNorm(32, 128)`` on ``(B*M, 128, 56, 56)``; and whole blocks, plain against
``cen.convert``-ed (private norms; exchange at the block's registered point): a ViT-S
``EncoderBlock`` (384 wide, 6 heads) on ``(B*M, 197, 384)`` and a ConvNeXt-T ``CNBlock`` (96)
on ``(B*M, 96, 56, 56)``.

Timing: the variants run interleaved in rounds (the order rotates every round) so that
machine noise hits them alike; ``--warmup`` rounds are discarded and the median of
``--repeats`` rounds is reported, with the ratio to ``plain``. Prints a JSON object, then
a table.

Usage::

    python benchmarks/bench_norms.py                      # CPU, 2 threads, B = 4
    python benchmarks/bench_norms.py --repeats 21 --json norms.json
    python benchmarks/bench_norms.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.vision_transformer import EncoderBlock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402

import cen  # noqa: E402


def _twins(plain: nn.Module, twin_cls: type, kwargs: dict, num: int, theta: float) -> dict[str, nn.Module]:
    twin = twin_cls(num_modalities=num, **kwargs)
    point = twin_cls(num_modalities=num, fusion="exchange", threshold=theta, **kwargs)
    return {"plain": plain, "modality": twin, "modality+exchange": point}


def _converted(plain: nn.Module, num: int) -> dict[str, nn.Module]:
    """A block plain, converted without fusion, and converted with exchange at its registered point."""
    return {
        "plain": plain,
        "modality": cen.convert(copy.deepcopy(plain), num, exchange=False),
        "modality+exchange": cen.convert(copy.deepcopy(plain), num),
    }


def cases(batch: int, num: int, theta: float = 0.02, toy: bool = False) -> dict[str, tuple[tuple[int, ...], dict]]:
    """``{case: (input shape, {variant: module})}`` for ``batch`` samples of ``num`` modalities.

    ``toy``: tiny widths and sizes (a smoke test of the script, not a measurement).
    """
    rows = batch * num
    tokens, wide, side, width, heads = (5, 16, 4, 8, 2) if toy else (197, 384, 56, 96, 6)
    norm = partial(nn.LayerNorm, eps=1e-6)
    found = {
        "vit_tokens": ((rows, tokens, wide), _twins(nn.LayerNorm(wide), cen.nn.ModalityLayerNorm,
                                                    {"num_features": wide}, num, theta)),
        "convnext_layernorm2d": ((rows, width, side, side), _twins(LayerNorm2d(width), cen.nn.ModalityLayerNorm2d,
                                                                   {"num_features": width}, num, theta)),
        "convnext_block_norm": ((rows, side, side, width), _twins(nn.LayerNorm(width), cen.nn.ModalityLayerNorm,
                                                                  {"num_features": width}, num, theta)),
        "group_norm": ((rows, 4 * width // 3, side, side), _twins(nn.GroupNorm(2 if toy else 32, 4 * width // 3),
                                                                  cen.nn.ModalityGroupNorm,
                                                                  {"num_groups": 2 if toy else 32,
                                                                   "num_features": 4 * width // 3}, num, theta)),
        "vit_encoder_block": ((rows, tokens, wide), _converted(EncoderBlock(heads, wide, 4 * wide, 0.0, 0.0, norm),
                                                               num)),
        "convnext_cnblock": ((rows, width, side, side), _converted(CNBlock(width, 1e-6, 0.0, norm), num)),
    }  # fmt: skip
    for _, modules in found.values():  # 30 % of each fusion point's gamma under theta: channels really move
        for m in modules["modality+exchange"].modules():
            if getattr(m, "fusion", None) is not None:
                with torch.no_grad():
                    pick = torch.rand(m.gamma.shape, generator=torch.Generator().manual_seed(0)) < 0.3
                    m.gamma[pick] = m.threshold / 10
    return found


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).backward(grad)


def time_case(modules: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    grad = torch.randn_like(x)
    names = list(modules)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(modules[name], x, grad)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    results = {
        "config": {"batch": args.batch, "modalities": args.modalities, "repeats": args.repeats, "warmup": args.warmup,
                   "device": str(device), "threads": torch.get_num_threads(), "dtype": "float32", "toy": args.toy},
        "machine": machine(),
        "torch": torch.__version__,
        "cases": {},
    }  # fmt: skip
    for case, (shape, modules) in cases(args.batch, args.modalities, toy=args.toy).items():
        modules = {k: m.to(device) for k, m in modules.items()}
        x = torch.randn(shape, device=device, requires_grad=True)
        times = time_case(modules, x, args.repeats, args.warmup)
        medians = {k: statistics.median(v) for k, v in times.items()}
        results["cases"][case] = {
            "shape": list(shape),
            "median_ms": {k: round(v * 1e3, 3) for k, v in medians.items()},
            "min_ms": {k: round(min(v) * 1e3, 3) for k, v in times.items()},
            "ratio_to_plain": {k: round(v / medians["plain"], 3) for k, v in medians.items()},
        }
    return results


def table(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"machine: {results['machine']}, torch {results['torch']}, {cfg['device']}, {cfg['threads']} threads; "
        f"B = {cfg['batch']} per modality, M = {cfg['modalities']}, fp32, forward + backward, "
        f"median of {cfg['repeats']} interleaved rounds",
        "",
        "| case | input | plain ms | modality ms (ratio) | modality+exchange ms (ratio) |",
        "|---|---|---:|---:|---:|",
    ]
    for case, r in results["cases"].items():
        med, ratio = r["median_ms"], r["ratio_to_plain"]
        lines.append(
            f"| {case} | {tuple(r['shape'])} | {med['plain']:.2f} | {med['modality']:.2f} ({ratio['modality']:.2f}) | "
            f"{med['modality+exchange']:.2f} ({ratio['modality+exchange']:.2f}) |"
        )
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4, help="samples per modality (default 4)")
    p.add_argument("--modalities", type=int, default=2, help="M (default 2)")
    p.add_argument("--repeats", type=int, default=11, help="timed rounds (default 11)")
    p.add_argument("--warmup", type=int, default=2, help="discarded rounds (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--toy", action="store_true", help="tiny shapes: checks the script, measures nothing")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    results = run(args)
    print(json.dumps(results, indent=2))
    print()
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
