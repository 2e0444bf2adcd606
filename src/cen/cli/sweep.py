"""``cen sweep DIR_OR_FILES... [key=value ...] [--out RUNS_PARENT] [--seeds N]``: train several configs in turn,
resumably, each once or once per seed.

A folder stands for every ``*.yaml`` in it (sorted). Each config trains into
``RUNS_PARENT/<config stem>/``; finished runs are skipped, interrupted ones resume, a
failing one is reported and the sweep goes on. See :mod:`cen.train.sweep` and
docs/ablations.md.
"""

from __future__ import annotations

import argparse

from cen.cli.options import add_command, option

OPTIONS = (
    option("items", nargs="+", metavar="DIR_OR_FILE|key=value",
           help="a folder of *.yaml configs, config files, and key=value overrides applied to every run"),
    option("--out", default=None, metavar="RUNS_PARENT",
           help="parent folder of the runs (default runs/sweep-<folder of the first config>)"),
    option("--seeds", type=int, default=None, metavar="N",
           help="train every config with the seeds 0..N-1 (train.seed), into RUNS_PARENT/<stem>@<seed>/; "
           "cen table then shows each config's mean ± std over its seeds"),
    option("--progress", action=argparse.BooleanOptionalAction, default=None,
           help="a bar over the runs (default: on a terminal)"),
)  # fmt: skip


def register(subparsers) -> None:
    from cen.cli.train import _intermixed

    p = add_command(
        subparsers, "sweep", run, OPTIONS,
        help="train several configs in turn into one folder (skips finished runs, resumes interrupted ones)",
        description="Train the configs in turn into RUNS_PARENT/<config stem>/ with the same overrides. A run with "
        "results.json is skipped, one with last.pt (no results) resumes exactly, the others start. Wall times and "
        "outcomes go to RUNS_PARENT/sweep.json; `cen table RUNS_PARENT` compares the runs.",
        epilog="exit status: 0 when every run finished, 1 when a run failed (the others still ran), 130 after "
        "Ctrl-C (rerun the same command to resume)",
    )  # fmt: skip
    _intermixed(p)


def run(args: argparse.Namespace) -> int:
    from cen.train import distributed
    from cen.train.sweep import (
        SweepError,
        collect_configs,
        default_parent,
        run_sweep,
        split_arguments,
    )

    paths, overrides = split_arguments(args.items)
    configs = collect_configs(paths)
    parent = args.out if args.out is not None else default_parent(configs)
    try:
        if args.seeds is not None and args.seeds < 1:
            raise SweepError(f"--seeds {args.seeds}: expected a number of seeds >= 1")
        result = run_sweep(
            configs,
            parent,
            overrides,
            seeds=None if args.seeds is None else list(range(args.seeds)),
            progress=args.progress,
            debug=bool(getattr(args, "debug", False)),
        )
    finally:
        distributed.shutdown()
    return result.exit_code
