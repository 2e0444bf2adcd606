"""The scenes recipes' backbones and fusions side by side: parameters and training-step time.

For each backbone recipe on the generated scenes (``configs/scenes.yaml``: ResNet-18 RefineNet;
``configs/scenes_convnext.yaml``: ConvNeXt-atto RefineNet; ``configs/scenes_mit.yaml``: MiT-B0
with SegFormer's MLP decoder) and each fusion:

* ``cen``: the recipe as is (channel exchanging, RGB + depth, its l1 penalty);
* ``sum``: ``fusion.strategy=sum loss.sparsity_weight=0`` (RGB + depth summed at the fusion points);
* ``rgb``: ``'modalities=[rgb]'`` (one modality, no fusion);
* ``token`` (MiT only): ``fusion.strategy=token loss.sparsity_solver=gradient loss.sparsity_weight=1e-3``
  (TokenFusion's per-token scores);

the trainable parameters (millions) and the seconds of one training step. Each model is built as
``cen train`` builds it: :func:`cen.train.config.load_config` with the variant's overrides, the
task's ``build_models`` after seeding with ``train.seed``, ``setup``, ``configure_optimizers`` (the
recipe's Adam with its parameter groups), in the precision and layout ``train.precision`` /
``train.channels_last`` (``auto``) settle to on this machine (:func:`cen.train.hardware.settle`,
through :class:`cen.train.precision.Precision`, as the trainer does). One step is the task's own
``training_step`` under that precision's autocast, as the engine runs it: zero the gradients,
forward on a random batch (``train.batch_size`` samples at the recipe's image size: ``data.crop_size``
when set, else the generated scenes' ``data.generate`` height x width, 72 x 96), the cross-entropy of
every output branch (each modality's and the ensemble) against a random mask, plus the task's
sparsity penalty (the l1 of the fusion points' gammas, or TokenFusion's score penalty, when
``loss.sparsity_weight`` > 0), backward, one optimiser step, and the penalty's proximal step
(``loss.sparsity_solver=proximal``).

Timing: the variants run interleaved in rounds with a rotating order (``bench_core.time_variants``)
after ``--warmup`` untimed rounds; the median and min of ``--repeats`` rounds are reported, with the
median's ratio to ``resnet18/cen`` (when it ran). The data loader is not timed.

Usage::

    python benchmarks/bench_backbones.py                                     # all ten variants
    OMP_NUM_THREADS=1 python benchmarks/bench_backbones.py --repeats 3 --json backbones.json
    python benchmarks/bench_backbones.py --only resnet18/cen,mit_b0/token --threads 2
    python benchmarks/bench_backbones.py --batch 2 --size 32x48 --repeats 1 --warmup 0   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import time_variants  # noqa: E402
from machine import machine  # noqa: E402

from cen.tasks import build_task  # noqa: E402
from cen.train import hardware  # noqa: E402
from cen.train.config import load_config  # noqa: E402
from cen.train.precision import Precision, check_precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # backbone: recipe
    "resnet18": "configs/scenes.yaml",
    "convnext_atto": "configs/scenes_convnext.yaml",
    "mit_b0": "configs/scenes_mit.yaml",
}
FUSIONS = {  # fusion: overrides of the recipe
    "cen": [],
    "sum": ["fusion.strategy=sum", "loss.sparsity_weight=0"],
    "rgb": ["modalities=[rgb]"],
    "token": ["fusion.strategy=token", "loss.sparsity_solver=gradient", "loss.sparsity_weight=1e-3"],
}
ONLY_FOR = {"token": ("mit_b0",)}
BASELINE = "resnet18/cen"


def variants() -> dict[str, tuple[str, str, list[str]]]:
    """``{name: (backbone, fusion, overrides)}`` in report order; ``name`` is ``backbone/fusion``."""
    out = {}
    for backbone, recipe in RECIPES.items():
        for fusion, overrides in FUSIONS.items():
            if backbone in ONLY_FOR.get(fusion, (backbone,)):
                out[f"{backbone}/{fusion}"] = (recipe, fusion, list(overrides))
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` or ``"S"`` (square) -> ``(H, W)``."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HxW or S, e.g. 72x96") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: sizes must be positive")
    return h, w


def image_size(cfg) -> tuple[int, int]:
    """The training images' ``(H, W)``: ``data.crop_size`` when set, else the generated scenes' size."""
    crop = cfg.data.crop_size
    if crop:
        return (int(crop), int(crop)) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
    return int(cfg.data.generate.height), int(cfg.data.generate.width)


def make_batch(cfg, batch: int, height: int, width: int, seed: int = 0) -> dict:
    """A random batch of the recipe's keys: each modality ``(B, 3, H, W)``, ``mask`` ``(B, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    out = {m: torch.randn(batch, 3, height, width, generator=g) for m in cfg.modalities}
    out["mask"] = torch.randint(0, int(cfg.data.num_classes), (batch, height, width), generator=g)
    return out


def build_variant(recipe: str, overrides: list[str], batch: int | None, size: tuple[int, int] | None):
    """``(step, info)``: a no-argument callable running one engine training step, and what it runs."""
    cfg = load_config(ROOT / recipe, overrides)
    chosen = hardware.settle(cfg.train.precision, cfg.train.channels_last, "cpu")
    check_precision(chosen.precision, torch.device("cpu"))
    precision = Precision(chosen.precision, "cpu", channels_last=chosen.channels_last)
    task = build_task(cfg)
    task.check_training_config()
    torch.manual_seed(int(cfg.train.seed))
    models = {k: precision.prepare_model(m) for k, m in task.build_models().items()}
    task.setup(models)
    optimizers = dict(task.configure_optimizers(models))
    precision.add_optimizers(optimizers)
    task.precision = precision
    task.train_mode(models)
    b = batch or int(cfg.train.batch_size)
    h, w = size or image_size(cfg)
    data = precision.prepare_batch(make_batch(cfg, b, h, w))
    model = models[task.primary]

    def step():
        with precision.autocast():
            task.training_step(data, models, models, optimizers)

    info = {
        "config": recipe,
        "overrides": overrides,
        "backbone": str(cfg.model.backbone),
        "decoder": str(cfg.model.get("decoder") or cfg.model.name),
        "strategy": str(cfg.fusion.strategy) if len(cfg.modalities) > 1 else None,
        "modalities": list(cfg.modalities),
        "sparsity_weight": float(cfg.loss.sparsity_weight),
        "sparsity_solver": str(cfg.loss.sparsity_solver),
        "params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "batch": [b, 3, h, w],
        "precision": chosen.precision,
        "channels_last": chosen.channels_last,
        "precision_reason": chosen.reason,
    }
    return step, info


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    table = variants()
    names = list(table)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in table]
        if unknown:
            raise SystemExit(f"--only: unknown variants {unknown}; choose from {list(table)}")
    steps, infos = {}, {}
    for name in names:
        recipe, fusion, overrides = table[name]
        print(f"building {name} ...", file=sys.stderr, flush=True)
        steps[name], infos[name] = build_variant(recipe, overrides, args.batch, args.size)
        infos[name]["fusion"] = fusion
    print(f"timing {args.warmup} warmup + {args.repeats} rounds ...", file=sys.stderr, flush=True)
    wall, cpu = time_variants(steps, args.repeats, args.warmup, torch.device("cpu"))
    med = {n: statistics.median(wall[n]) for n in names}
    base = med.get(BASELINE)
    first = infos[names[0]]
    return {
        "benchmark": "bench_backbones",
        "machine": machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "precision": first["precision"],
        "channels_last": first["channels_last"],
        "precision_reason": first["precision_reason"],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "baseline": BASELINE if base else None,
        "variants": {
            n: {
                "name": n,
                **infos[n],
                "median_s": med[n],
                "min_s": min(wall[n]),
                "cpu_median_s": statistics.median(cpu[n]),
                "times_s": wall[n],
                "ratio_to_resnet18_cen": med[n] / base if base else None,
            }
            for n in names
        },
    }


def format_table(result: dict) -> str:
    first = next(iter(result["variants"].values()))
    layout = "channels-last" if result["channels_last"] else "NCHW"
    lines = [
        f"machine: {result['machine']}, torch {result['torch']}, {result['torch_threads']} threads",
        f"scenes training step, batch {first['batch']}, precision {result['precision']} {layout} "
        f"({result['precision_reason'] or 'as the recipe says'}); median of {result['repeats']} interleaved "
        f"rounds after {result['warmup']} warmup",
        "",
        "| variant | backbone | fusion | modalities | params (M) | median s | min s | ratio to resnet18/cen |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, v in result["variants"].items():
        fusion = "none" if v["strategy"] is None else v["strategy"]
        ratio = "-" if v["ratio_to_resnet18_cen"] is None else f"{v['ratio_to_resnet18_cen']:.2f}"
        lines.append(
            f"| {name} | {v['backbone']} + {v['decoder']} | {fusion} | {'+'.join(v['modalities'])} | "
            f"{v['params_m']:.2f} | {v['median_s']:.3f} | {v['min_s']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--only", default="", help=f"comma list of variants, of {', '.join(variants())}")
    p.add_argument("--batch", type=int, default=0, help="batch size (0: each recipe's train.batch_size)")
    p.add_argument("--size", type=parse_size, default=None, help="image HxW (default: each recipe's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    print()
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()
