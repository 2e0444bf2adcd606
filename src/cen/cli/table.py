"""``cen table RUNS_PARENT [--out DIR] [--sort KEY]``: the comparison of a folder of runs.

Prints a Markdown table (one row per run: test scores of the ensemble, parameters, train
time, the paper's number) and writes it as ``table.md`` and ``table.csv``. See
:mod:`cen.analysis.table` and docs/ablations.md.
"""

from __future__ import annotations

import argparse
import sys

from cen.cli.options import add_command, option

OPTIONS = (
    option("parent", metavar="RUNS_PARENT", help="the folder holding the run folders"),
    option("--out", default=None, metavar="DIR", help="where to write table.md and table.csv (default RUNS_PARENT)"),
    option("--sort", default=None, metavar="KEY",
           help="order of the rows: a score (miou, pixel_acc, l1, fid, ...; best first), params, time, "
           "paper, name or status (default: the sweep's order, then by name)"),
)  # fmt: skip


def register(subparsers) -> None:
    add_command(
        subparsers, "table", run, OPTIONS,
        help="compare the runs of a folder (cen sweep's --out) in one table, beside the paper's numbers",
        description="One row per run folder of RUNS_PARENT (and per run listed in its sweep.json): the test scores "
        "of the ensemble (else of the selected branch) from results.json, parameter count, train time and the "
        "paper's number of the recipe of the same name. Unfinished, interrupted and failed runs are listed with "
        "their status. Prints the table and writes table.md and table.csv.",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from cen.analysis.table import write_table

    text, paths = write_table(args.parent, args.out, sort=args.sort)
    print(text, end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
