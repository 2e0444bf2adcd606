"""Host synchronisations of cen's per-step work on a CUDA device (needs a GPU; run by device_check.sh).

Counts the synchronising CUDA calls (each warns under ``torch.cuda.set_sync_debug_mode("warn")``) of:

* ``GammaTracker.update`` after a step of a converted ResNet-18 (Theorem 1's bookkeeping runs every
  step, so it must not stall the device), with and without the loss-gradient comparison;
* the sparsity penalty's proximal step (``SparsityPenalty.after_step``);
* a forward and backward of the converted model with exchange (no data-dependent indexing).

Prints a table and one JSON line; ``--json PATH`` writes the JSON too. Every count should be 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import count_host_syncs  # noqa: E402

import cen  # noqa: E402
from cen.tasks.sparsity import SparsityPenalty  # noqa: E402
from cen.train.gamma import GammaTracker  # noqa: E402


def run(device: torch.device) -> dict:
    torch.manual_seed(0)
    model = cen.MultiModal(cen.convert(torchvision.models.resnet18(num_classes=7), 2), ["rgb", "depth"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = {m: torch.randn(4, 3, 64, 64, device=device) for m in ("rgb", "depth")}
    tracker = GammaTracker(model)
    penalty = SparsityPenalty(weight=0.1, solver="proximal")

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        sum(out.square().mean() for out in model(x).values()).backward()

    forward_backward()
    opt.step()
    counts = {
        "forward_backward": count_host_syncs(forward_backward),
        "tracker_update": count_host_syncs(lambda: tracker.update(1)),
        "tracker_update_with_gradient": count_host_syncs(lambda: tracker.update(2, lam=0.1)),
        "proximal_step": count_host_syncs(lambda: penalty.after_step(model, opt)),
    }
    return {"device": torch.cuda.get_device_name(device), "host_syncs": counts}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("cuda_syncs.py needs a CUDA device")
    result = run(torch.device("cuda"))
    for name, n in result["host_syncs"].items():
        print(f"{name:32s} {n}")
    text = json.dumps(result)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
