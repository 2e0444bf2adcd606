"""``cen train CONFIG [key=value ...]`` and ``cen eval CONFIG --checkpoint PATH [key=value ...]``.

Both run in one process, or in several under ``torchrun --nproc_per_node=N -m cen ...``.
CONFIG is a YAML file, or the name of one in the repository's ``configs/``
(``cen train scenes`` is ``cen train configs/scenes.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cen.errors import UserError

EPILOG = (
    "overrides use dotted keys, e.g. modalities=[rgb] train.batch_size=4 loss.sparsity_weight=0 "
    "'optim.stages=[{epochs: 2, encoder_lr: 1e-3, decoder_lr: 1e-2}]' optim.stages.0.epochs=3; "
    "see docs/training.md for every key"
)


def register(subparsers) -> None:
    from cen.cli.options import TRAINED_WITH, add_command, config_arguments, option

    train_options = (
        *config_arguments("YAML config file, or the name of one in configs/"),
        option("--resume", action="store_true", help="continue the run from its folder's last.pt"),
        option("--resume-from", default=None, metavar="CHECKPOINT", help="continue the run from CHECKPOINT"),
        option("--overwrite", action="store_true", help="start afresh in a run folder that already has checkpoints"),
    )  # fmt: skip
    _intermixed(add_command(
        subparsers, "train", run_train, train_options,
        help="train a CEN model (segmentation or another task) from a config",
        description="Train (and finally test) a model from a YAML config with key=value overrides.",
        epilog=EPILOG,
    ))  # fmt: skip

    eval_options = (
        *config_arguments(TRAINED_WITH),
        option("--checkpoint", required=True, metavar="PATH",
               help="a cen training checkpoint (best.pt / last.pt) or one made by cen convert-checkpoint"),
        option("--split", choices=("test", "val"), default="test", help="which list file to score (default test)"),
        option("--scales", type=float, nargs="+", default=None, metavar="S",
               help="multi-scale testing, e.g. --scales 0.5 0.75 1 1.25 1.5 1.75 (default: eval.scales)"),
        option("--flip", action="store_true", default=None, help="also average horizontally flipped predictions"),
        option("--images", type=int, default=0, metavar="N", help="save N prediction images into --out"),
        option("--out", default=None, metavar="DIR",
               help="write scores.json (and images; with --subsets subsets.json and subsets.md) here"),
        option("--subsets", action="store_true",
               help="evaluate on every non-empty subset of the model's modalities (the others dropped at "
               "inference) and print the table of per-branch and ensemble scores"),
        option("--corruptions", nargs="*", default=None, metavar="NAME",
               help="score under sensor faults: every corruption (or those named: depth_holes, low_light, "
               "dead_sensor, ...) of every modality it applies to, at each of --severities; writes corruptions.json, "
               ".md and .png into --out"),
        option("--severities", nargs="+", type=int, default=None, metavar="S",
               help="severities (1-5) for --corruptions (default 1 3 5)"),
    )  # fmt: skip
    _intermixed(add_command(
        subparsers, "eval", run_eval, eval_options,
        help="evaluate a checkpoint on the test (or validation) split",
        description="Score every branch (modalities and ensemble) of a checkpoint with its task's metrics "
        "(segmentation: pixel acc, mean acc, mIoU). The model is rebuilt from the checkpoint (cen.load_model); "
        "the data come from CONFIG.",
        epilog=EPILOG,
    ))  # fmt: skip


class EvalArgumentError(UserError, ValueError):
    """A ``cen eval`` option that the checkpoint's task does not take."""


class _IntermixedParser(argparse.ArgumentParser):
    """Parses ``key=value`` overrides before or after the options (``CONFIG --resume k=v``).

    Plain argparse stops filling a ``nargs="*"`` positional at the first option.
    """

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _intermixed(parser: argparse.ArgumentParser) -> None:
    parser.__class__ = _IntermixedParser


def resolve_config_path(name: str) -> Path:
    """A config path as given, else ``configs/<name>[.yaml]`` in the working folder or the repository."""
    path = Path(name)
    if path.is_file():
        return path
    stem = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    repo = Path(__file__).resolve().parents[3]
    for folder in (Path("configs"), repo / "configs"):
        if (folder / stem).is_file():
            return folder / stem
    return path  # load_config reports it missing


def run_train(args: argparse.Namespace) -> int:
    from cen.train import distributed
    from cen.train.config import load_config
    from cen.train.interrupt import TrainingInterrupted
    from cen.train.trainer import Trainer

    try:
        cfg = load_config(resolve_config_path(args.config), args.overrides)
        trainer = Trainer(cfg, resume=args.resume_from or args.resume, overwrite=args.overwrite)
        trainer.fit()
    except TrainingInterrupted as stop:
        print(f"cen train: {stop}", file=sys.stderr)
        return 130  # the shell's code for "stopped by SIGINT"
    finally:
        distributed.shutdown()
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from cen.train import distributed

    try:
        return _eval(args)
    finally:
        distributed.shutdown()


def _eval(args: argparse.Namespace) -> int:
    from cen.atomic import atomic_write_json
    from cen.tasks import build_task
    from cen.train import distributed, loaders
    from cen.train.checkpoint import check_meta, load_model_with_config
    from cen.train.config import load_config
    from cen.train.evaluation import evaluate
    from cen.train.hardware import settle
    from cen.train.precision import Precision, check_precision
    from cen.train.runlog import jsonable

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    task = build_task(cfg)
    options = task.test_options()
    given = {"scales": list(args.scales) if args.scales else None, "flip": args.flip}
    for name, value in given.items():
        if value is None:
            continue
        if name not in task.eval_options:
            raise EvalArgumentError(
                f"--{name} does not apply to task {task.name!r} (its options: {list(task.eval_options) or 'none'})"
            )
        options[name] = value
    info, device = distributed.init(cfg.train.device)
    model, saved = load_model_with_config(args.checkpoint)
    check_meta(build_task(saved).meta(), task.meta(), args.checkpoint)
    # auto: as the checkpoint was trained and evaluated (its recorded values); explicit values win.
    chosen = settle(cfg.train.precision, cfg.train.channels_last, device, saved=saved.train, inference=True)
    check_precision(chosen.precision, device)
    precision = Precision(chosen.precision, device, channels_last=chosen.channels_last)
    settings = {"precision": chosen.precision, "channels_last": chosen.channels_last, "device": str(device)}
    if info.is_main:
        if chosen.notice:
            print(f"cen eval: notice: {chosen.notice}", file=sys.stderr)
        layout = "channels-last" if chosen.channels_last else "contiguous"
        print(f"cen eval: {device}, precision {chosen.precision}, {layout} ({chosen.reason or 'as configured'})",
              file=sys.stderr)  # fmt: skip
    if info.is_main:
        task.prepare_data()
    distributed.barrier()
    dataset = task.build_datasets(splits=(args.split,))[args.split]
    model = precision.prepare_model(model.to(device))  # evaluated as trained: train.precision, channels_last
    task.setup({task.primary: model})
    loader = loaders.eval_loader(
        dataset, cfg.eval.batch_size, loaders.LoaderSettings.of_run(cfg, info, device, task.collate_fn)
    )
    out = Path(args.out) if args.out else None

    def run(**extra):
        with precision.autocast():
            return evaluate(
                task,
                {task.primary: model},
                loader,
                device=device,
                progress=info.is_main and cfg.train.progress,
                **options,
                **extra,
            )

    if args.subsets:
        return _eval_subsets(args, cfg, task, model, run, info, options, out, settings)
    if args.corruptions is not None:
        return _eval_corruptions(args, cfg, task, model, precision, device, info, options, out, settings)
    if args.severities is not None:
        raise EvalArgumentError("--severities goes with --corruptions")
    results = run(image_dir=out / "images" if out and args.images else None, num_images=args.images)
    if info.is_main:
        list_file = cfg.data.test_list if args.split == "test" else cfg.data.val_list
        title = f"{args.checkpoint} on {list_file}{task.describe_options(options)}:"
        print(task.format_table(results, title=title), flush=True)
        if out:
            record = {"checkpoint": str(args.checkpoint), "split": args.split, **options, **settings, "scores": results}
            atomic_write_json(out / "scores.json", jsonable(record))
    return 0


def _eval_corruptions(args, cfg, task, model, precision, device, info, options, out, settings) -> int:
    """``cen eval --corruptions``: the task's scores under every sensor fault and severity, as one table and a plot."""
    from cen.atomic import atomic_write_json, atomic_write_text
    from cen.data.kinds import infer_kind
    from cen.train import loaders
    from cen.train.evaluation import evaluate
    from cen.train.figures import save
    from cen.train.robustness import DEFAULT_SEVERITIES, evaluate_corruptions, figure, format_corruptions, plan
    from cen.train.runlog import jsonable

    if args.subsets or args.images:
        raise EvalArgumentError("--corruptions does not combine with --subsets or --images")
    known = getattr(task, "kinds", None) or {}  # the data set's kinds (read by the evaluation above)
    kinds = {m: known.get(m) or infer_kind(m) for m in cfg.modalities}
    steps = plan(kinds, args.corruptions or None, args.severities or DEFAULT_SEVERITIES)

    def score(fault):
        dataset = task.build_datasets(splits=(args.split,), corruption=fault)[args.split]
        loader = loaders.eval_loader(
            dataset, cfg.eval.batch_size, loaders.LoaderSettings.of_run(cfg, info, device, task.collate_fn)
        )
        with precision.autocast():
            return evaluate(task, {task.primary: model}, loader, device=device, progress=False, **options)

    say = (lambda text: print(f"cen eval: {text}", file=sys.stderr)) if info.is_main and cfg.train.progress else None
    records = evaluate_corruptions(score, steps, progress=say)
    if info.is_main:
        list_file = cfg.data.test_list if args.split == "test" else cfg.data.val_list
        branch, score_info = task.select, task.score_info
        title = f"{args.checkpoint} on {list_file}: {branch} {score_info.heading} under sensor faults"
        print(format_corruptions(records, branch, task.score_name, score_info.show, title=title), flush=True)
        if out:
            atomic_write_json(
                out / "corruptions.json",
                jsonable({"checkpoint": str(args.checkpoint), "split": args.split, "branch": branch,
                          "metric": task.score_name, **options, **settings, "corruptions": records}),
            )  # fmt: skip
            md = format_corruptions(records, branch, task.score_name, score_info.show, markdown=True, title=title)
            atomic_write_text(out / "corruptions.md", md + "\n")
            fig = figure(records, branch, task.score_name, score_info.label, title, percent=score_info.unit == "%")
            save(fig, out / "corruptions.png")
    return 0


def _eval_subsets(args, cfg, task, model, run, info, options, out, settings) -> int:
    """``cen eval --subsets``: the task's scores on every subset of the modalities, as one table."""
    from cen.atomic import atomic_write_json, atomic_write_text
    from cen.tasks.subsets import evaluate_subsets, format_subsets
    from cen.train.runlog import jsonable

    if args.images:
        raise EvalArgumentError("--images does not combine with --subsets; run cen eval without --subsets for images")

    records = evaluate_subsets(cfg.modalities, model, lambda subset: run(modalities=subset))
    if info.is_main:
        list_file = cfg.data.test_list if args.split == "test" else cfg.data.val_list
        title = (
            f"{args.checkpoint} on {list_file}, every subset of {list(cfg.modalities)}{task.describe_options(options)}:"
        )
        names = list(cfg.modalities)
        print(format_subsets(records, names, task.score_name, task.format_value, title=title), flush=True)
        if out:
            atomic_write_json(
                out / "subsets.json",
                jsonable(
                    {
                        "checkpoint": str(args.checkpoint),
                        "split": args.split,
                        "metric": task.score_name,
                        **options,
                        **settings,
                        "subsets": records,
                    }
                ),
            )
            atomic_write_text(
                out / "subsets.md",
                format_subsets(records, names, task.score_name, task.format_value, markdown=True, title=title) + "\n",
            )
    return 0
