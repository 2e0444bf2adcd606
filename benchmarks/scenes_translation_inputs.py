"""How much RGB each translation input of the generated scenes explains.

    python benchmarks/scenes_translation_inputs.py [--size 32 --num 600 --steps 600]

Renders scenes in memory and, for each light of the generator (the NYUDv2 layout's
mostly ambient one and the Taskonomy layout's mostly directional one), trains the
same small dilated CNN with an L1 loss to predict RGB (in [-1, 1]) from nothing, from
``reshading``, from ``edge_texture`` and from both (concatenated), then prints the
held-out L1 of each. A check of the data, not of CEN: if one input alone came as close
as both, a fusion method could not show anything on these scenes. One CPU thread;
the same numbers for the same arguments on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import machine  # benchmarks/ is the script folder, so on sys.path
from torch import nn

from cen.data.synth.layouts import render_sample

INPUTS = {
    "none": (),
    "reshading": ("reshading",),
    "edge_texture": ("edge_texture",),
    "both": ("reshading", "edge_texture"),
}
LIGHTS = {"nyudv2 light (ambient 0.7-0.85)": "rgb", "taskonomy light (ambient 0.2-0.4)": "taskonomy_rgb"}


def render(num: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs (N, 1, size, size) and both RGB images (N, 3, size, size), all in [-1, 1]."""
    out: dict[str, list] = {"reshading": [], "edge_texture": [], "rgb": [], "taskonomy_rgb": []}
    for i in range(num):
        s = render_sample(seed, i, size, size)
        out["reshading"].append(torch.from_numpy(s["reshading"]).float()[None] / 127.5 - 1)
        out["edge_texture"].append(torch.from_numpy(s["edge_texture"].astype(np.float32))[None] / 32767.5 - 1)
        for key in ("rgb", "taskonomy_rgb"):
            out[key].append(torch.from_numpy(s[key]).permute(2, 0, 1).float() / 127.5 - 1)
    return {k: torch.stack(v) for k, v in out.items()}


def small_cnn(c_in: int, width: int = 32) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in (1, 2, 4, 8):
        layers += [nn.Conv2d(c_in, width, 3, padding=d, dilation=d), nn.ReLU()]
        c_in = width
    return nn.Sequential(*layers, nn.Conv2d(width, 3, 1), nn.Tanh())


def held_out_l1(x: torch.Tensor, y: torch.Tensor, n_train: int, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    net = small_cnn(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (16,), generator=gen)
        loss = (net(x[idx]) - y[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(x[n_train:]) - y[n_train:]).abs().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--num", type=int, default=600, help="training scenes (100 more are held out)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    data = render(args.num + 100, args.size, args.seed)
    zeros = torch.zeros_like(data["reshading"])
    results: dict[str, dict[str, float]] = {}
    print(f"held-out L1 (RGB in [-1, 1]), {args.size}x{args.size}, {args.num} scenes, {args.steps} steps")
    print(f"{'light':36s}" + "".join(f"{k:>14s}" for k in INPUTS))
    for light, key in LIGHTS.items():
        row = {}
        for name, keys in INPUTS.items():
            x = torch.cat([data[k] for k in keys], 1) if keys else zeros
            row[name] = held_out_l1(x, data[key], args.num, args.steps, args.seed)
        results[light] = row
        print(f"{light:36s}" + "".join(f"{v:14.4f}" for v in row.values()))
    print(
        json.dumps(
            {"results": results, "args": vars(args), "seconds": round(time.time() - start, 1), "machine": machine()}
        )
    )


if __name__ == "__main__":
    main()
