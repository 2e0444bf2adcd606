"""``cen env``: what this machine is and what ``auto`` becomes here, to paste into a bug report."""

from __future__ import annotations

import argparse
import json

from cen.cli.options import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers, "env", run,
        help="show versions, devices, CPU capability and what train.precision=auto resolves to here",
        description="One screen for a bug report: cen / torch / torchvision / Python versions, the devices, the "
        "CPU's capability (the ISA torch dispatches to, native bf16, AMX), threads, what train.precision=auto and "
        "train.channels_last=auto resolve to on each device, and which optional extras are installed.",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the same as JSON")


def run(args: argparse.Namespace) -> int:
    from cen.train.hardware import format_probe, probe

    found = probe()
    print(json.dumps(found.to_dict(), indent=2) if args.json else format_probe(found))
    return 0
