"""The scenes recipe's training step in every precision and layout, and where ``auto`` lands among them.

Times one training step of ``configs/scenes.yaml`` (its model, optimiser, loss and batch
shape: ResNet-18 RefineNet CEN, RGB + depth, batch 8 at 72 x 96) exactly as the engine
runs it (the task's ``training_step`` under :class:`cen.train.precision.Precision`), on a
random batch, in

* ``fp32``, ``fp32+cl`` (channels-last), ``bf16``, ``bf16+cl``;
* ``auto``: what ``train.precision=auto train.channels_last=auto`` resolves to on this
  machine (:func:`cen.train.hardware.resolve`), timed as a variant of its own.

Each variant has its own copy of the model and optimiser, built from the same weights. The
variants run interleaved in rounds with a rotating order after ``--warmup`` untimed rounds;
the median of ``--repeats`` rounds is reported with each ratio to fp32, and whether ``auto``
is within 10 % of the fastest variant. The JSON names the machine and what the probes said.

Usage::

    python benchmarks/bench_precision.py                          # this CPU as it is
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_precision.py   # as a CPU without AVX-512
    python benchmarks/bench_precision.py --repeats 9 --json precision.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import time_variants  # noqa: E402

from cen.tasks import build_task  # noqa: E402
from cen.train import hardware  # noqa: E402
from cen.train.config import load_config  # noqa: E402
from cen.train.precision import Precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fp32": ("fp32", False), "fp32+cl": ("fp32", True), "bf16": ("bf16", False), "bf16+cl": ("bf16", True)}
WITHIN = 0.10  # auto must be within this share of the fastest variant


def make_batch(cfg, batch: int, height: int, width: int, seed: int = 0) -> dict:
    """A random batch of the recipe's keys: each modality ``(B, 3, H, W)``, ``mask`` ``(B, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    out = {m: torch.randn(batch, 3, height, width, generator=g) for m in cfg.modalities}
    out["mask"] = torch.randint(0, int(cfg.data.num_classes), (batch, height, width), generator=g)
    return out


def make_step(task, model, precision: str, channels_last: bool, batch: dict):
    """A no-argument callable running one engine training step of ``model`` (a copy) in this setting."""
    p = Precision(precision, "cpu", channels_last=channels_last)
    models = {"model": p.prepare_model(copy.deepcopy(model))}
    optimizers = dict(task.configure_optimizers(models))
    p.add_optimizers(optimizers)
    task_copy = copy.copy(task)
    task_copy.precision = p
    prepared = p.prepare_batch(batch)
    for m in models.values():
        m.train()

    def step():
        with p.autocast():
            task_copy.training_step(prepared, models, models, optimizers)

    return step


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "scenes.yaml", args.overrides)
    torch.manual_seed(0)
    task = build_task(cfg)
    model = task.build_models()["model"]
    task.setup({"model": model})
    g = cfg.data.generate
    batch = make_batch(cfg, args.batch or int(cfg.train.batch_size), g.height, g.width)
    resolved = hardware.resolve("auto", "auto", "cpu")
    settings = dict(VARIANTS)
    settings["auto"] = (resolved.precision, resolved.channels_last)
    steps = {name: make_step(task, model, prec, cl, batch) for name, (prec, cl) in settings.items()}
    wall, cpu = time_variants(steps, args.repeats, args.warmup, torch.device("cpu"))
    med = {n: statistics.median(v) for n, v in wall.items()}
    fastest = min((n for n in VARIANTS), key=med.get)
    probe = hardware.probe()
    return {
        "benchmark": "bench_precision",
        "config": "configs/scenes.yaml",
        "batch": list(batch[cfg.modalities[0]].shape),
        "machine": {**probe.cpu, **probe.versions},
        "auto": {"precision": resolved.precision, "channels_last": resolved.channels_last, "reason": resolved.reason},
        "repeats": args.repeats,
        "variants": {
            n: {
                "precision": settings[n][0],
                "channels_last": settings[n][1],
                "median_s": med[n],
                "min_s": min(wall[n]),
                "cpu_s": statistics.median(cpu[n]),
                "times_s": wall[n],
                "ratio_to_fp32": med[n] / med["fp32"],
            }
            for n in settings
        },
        "fastest": fastest,
        "auto_over_fastest": med["auto"] / med[fastest],
        "auto_within_10pct_of_fastest": med["auto"] <= (1 + WITHIN) * med[fastest],
    }


def format_table(result: dict) -> str:
    m, a = result["machine"], result["auto"]
    lines = [
        f"scenes training step, batch {result['batch']}, {m['model']}, ISA {m['isa']}, native bf16 "
        f"{m['bf16_native']}, {m['torch_threads']} threads; median of {result['repeats']}",
        "",
        "| variant | precision | channels-last | median s | min s | ratio to fp32 |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['precision']} | {str(v['channels_last']).lower()} | {v['median_s']:.3f} | "
            f"{v['min_s']:.3f} | {v['ratio_to_fp32']:.2f} |"
        )
    lines += [
        "",
        f"auto -> {a['precision']}, channels_last {str(a['channels_last']).lower()} ({a['reason']}); "
        f"fastest {result['fastest']}; auto / fastest {result['auto_over_fastest']:.2f} "
        f"({'within' if result['auto_within_10pct_of_fastest'] else 'NOT within'} 10 %)",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=0, help="batch size (0: the recipe's train.batch_size)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON here")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/scenes.yaml")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(format_table(result))
    print(json.dumps({k: result[k] for k in ("auto", "fastest", "auto_over_fastest", "auto_within_10pct_of_fastest")}))


if __name__ == "__main__":
    main()
