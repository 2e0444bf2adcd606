"""``cen report RUN_DIR [RUN_DIR ...] [--out DIR]``: what a run learnt, as an HTML page with figures.

One run: ``report.html``, ``report.json`` and PNG figures in ``--out`` (default
``RUN_DIR/report``). Several runs: a comparison page in ``--out`` (required) and
each run's own report in ``--out/<run name>/``. See docs/report.md.
"""

from __future__ import annotations

import argparse
import sys

from cen.cli.options import add_command, option

OPTIONS = (
    option("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) (with config.yaml, metrics.jsonl, *.pt)"),
    option("--out", default=None, metavar="DIR",
           help="where to write (default RUN_DIR/report for one run; required for several)"),
)  # fmt: skip


def register(subparsers) -> None:
    add_command(
        subparsers, "report", run, OPTIONS,
        help="write an HTML report (Figure A, Theorem 1, alpha, per-class scores) of one or several runs",
        description="Read run folders written by `cen train` (finished or running) and write report.html with PNG "
        "figures and the same numbers in report.json. With several runs, also a comparison page.",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from cen.analysis.report import write_comparison, write_report
    from cen.analysis.runs import RunError

    try:
        if len(args.runs) == 1:
            path, notes = write_report(args.runs[0], args.out)
        else:
            if args.out is None:
                print(f"cen report: error: --out DIR is needed to compare {len(args.runs)} runs", file=sys.stderr)
                return 2
            path, notes = write_comparison(args.runs, args.out)
    except (RunError, OSError) as err:
        print(f"cen report: error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"cen report: note: {note}", file=sys.stderr)
    print(path)
    return 0
