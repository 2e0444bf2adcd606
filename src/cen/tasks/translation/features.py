"""Feature extractors for FID / KID: torch-fidelity's Inception v3 from a local weights
file, or the project's substitute trained on the generated scenes.

Both take uint8 images (B, 3, H, W) of any size and return float features (B, d):

* ``"inception"``: the 2048-d pool3 features of the Inception v3 of the FID paper
  (TensorFlow's 2015-12-05 graph as converted by torch-fidelity; the file
  ``weights-inception-2015-12-05-6726825d.pth`` of torch-fidelity's releases), through
  torchmetrics' wrapper (resize to 299 x 299). Needs the ``torch-fidelity`` package and
  the weights file on disk: nothing is downloaded.
* ``"scenes"``: :class:`ScenesFeatureNet`, a small CNN trained to label the generated
  scenes (wall, floor, rug, poster, box, cylinder, sphere) from RGB; its features are
  the global average pools of its four stages (16 + 32 + 64 + 128 = 240-d). Scores with
  it are only comparable with scores of the same extractor: tables name it
  (:data:`SCENES_FEATURE_NAME`). The weights ship in the package
  (``scenes_features.pt``); retrain them with
  ``python -m cen.tasks.translation.features --train OUT.pt`` (1.5 minutes on one
  CPU thread; the same weights for the same seed on the same machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Name of the file of torch-fidelity's Inception weights that ``features="inception"`` expects.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FEATURE_NAME = "inception_v3_pool3_2048"
SCENES_FEATURE_NAME = "scenes_cnn_240"
#: The shipped substitute's weights, inside this package.
SCENES_WEIGHTS_FILE = "scenes_features.pt"
#: Side of the square the substitute resizes every image to.
SCENES_INPUT_SIZE = 64
_WIDTHS = (16, 32, 64, 128)


def _to_unit(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"feature extractor input is {images.dtype} of shape {tuple(images.shape)}; expected uint8 (B, 3, H, W)"
        )
    return images.float() / 127.5 - 1.0


class ScenesFeatureNet(nn.Module):
    """Four stride-2 stages of conv3x3-BN-ReLU (16, 32, 64, 128 channels; the last two
    with a second conv) on a 64 x 64 resize of the image, and a 1x1 segmentation head
    on the 8 x 8 grid of stage 3 (used only for training).

    ``forward(uint8 (B, 3, H, W)) -> (B, 240)`` float32: the spatial means of the four
    stages' activations, concatenated. ``segment(float (B, 3, 64, 64) in [-1, 1]) ->
    (B, num_classes, 8, 8)`` logits."""

    num_features = sum(_WIDTHS)

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        stages, c_in = [], 3
        for i, c in enumerate(_WIDTHS):
            layers = [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i >= 2:
                layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(_WIDTHS[2] + _WIDTHS[3], num_classes, 1)

    def _stages(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def segment(self, x: Tensor) -> Tensor:
        """Per-cell class logits on the 8 x 8 grid (training objective)."""
        *_, s3, s4 = self._stages(x)
        s4 = F.interpolate(s4, size=s3.shape[-2:], mode="nearest")
        return self.head(torch.cat([s3, s4], 1))

    def forward(self, images: Tensor) -> Tensor:
        x = _to_unit(images)
        if x.shape[-2:] != (SCENES_INPUT_SIZE, SCENES_INPUT_SIZE):
            x = F.interpolate(
                x, size=(SCENES_INPUT_SIZE, SCENES_INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
            )
        return torch.cat([s.mean(dim=(2, 3)) for s in self._stages(x)], 1)


def scenes_weights_path() -> Path:
    """Path of the shipped substitute weights."""
    return Path(str(resources.files("cen.tasks.translation") / SCENES_WEIGHTS_FILE))


def load_scenes_features(path: str | os.PathLike | None = None) -> ScenesFeatureNet:
    """The substitute extractor in eval mode, frozen, from ``path`` (default: the shipped file).

    Raises FileNotFoundError / ValueError naming the file if it is missing or not a
    ``--train`` output."""
    path = Path(path) if path is not None else scenes_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; expected the scenes feature weights "
            "(python -m cen.tasks.translation.features --train OUT.pt)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = ScenesFeatureNet(int(blob["meta"]["num_classes"]))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    except Exception as err:  # any unpickling / key / shape problem is the same user-facing error
        raise ValueError(
            f"{path}: not a scenes feature weights file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    net.meta = dict(blob["meta"])
    return net.eval().requires_grad_(False)


def load_inception(weights: str | os.PathLike) -> nn.Module:
    """torchmetrics' Inception v3 (torch-fidelity's network) with the 2048-d pool3
    output, weights from the local file ``weights``, in eval mode.

    Raises:
        ModuleNotFoundError: torch-fidelity is not installed (says how to install it).
        FileNotFoundError: ``weights`` does not exist (names it and the expected file).
        ValueError: ``weights`` is not that network's state dict (missing keys or wrong shapes).
    """
    path = Path(weights)
    expected = f"expected torch-fidelity's Inception v3 weights ({INCEPTION_WEIGHTS_FILE})"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {expected}")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            "features='inception' needs the torch-fidelity package: "
            "pip install 'cen[inception]' (or pip install torch-fidelity)"
        ) from None
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
    except Exception as err:  # unpickling errors, missing keys, size mismatches: one line naming the file
        first = str(err).strip().splitlines()
        raise ValueError(
            f"{path}: cannot load as Inception v3 ({type(err).__name__}: {first[0][:200] if first else ''}); {expected}"
        ) from err
    net.num_features = 2048
    return net


# ----------------------------------------------------------------------------- training


def _render_set(num: int, seed: int, size: int) -> tuple[Tensor, Tensor]:
    """``num`` generated scenes rendered in memory, each under both lights of the
    generator (the NYUDv2 and the Taskonomy layout's): uint8 RGB (2N, 3, size, size)
    and int64 labels (2N, size, size), scene ``i`` at rows ``2i`` and ``2i + 1``."""
    from cen.data.synth.layouts import render_sample

    rgb, labels = [], []
    for i in range(num):
        s = render_sample(seed, i, size, size)
        label = torch.from_numpy(s["mask"].astype(np.int64))
        for key in ("rgb", "taskonomy_rgb"):
            rgb.append(torch.from_numpy(s[key]).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(rgb), torch.stack(labels)


def _cell_targets(labels: Tensor, num_classes: int, cells: int) -> Tensor:
    """Share of each class in each cell of a ``cells`` x ``cells`` grid: (N, K, cells, cells)."""
    one_hot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, cells)


def train_scenes_features(
    out: str | os.PathLike,
    *,
    num: int = 1500,
    val: int = 200,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 1234,
    log=print,
) -> dict:
    """Train :class:`ScenesFeatureNet` on ``num`` generated scenes (64 x 64, scene seed
    ``seed``; ``val`` more for a held-out score), each under both of the generator's
    lights, to predict the class shares of each cell of an 8 x 8 grid (soft
    cross-entropy), with horizontal flips; Adam, cosine schedule. Writes
    ``{"state_dict" (float16), "meta"}`` to ``out`` and returns the meta (settings,
    held-out cell accuracy, seconds)."""
    from cen.data.synth import NUM_CLASSES

    start = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = _render_set(num + val, seed, SCENES_INPUT_SIZE)
    x_all = _to_unit(x_all)
    t_all = torch.cat([_cell_targets(y, NUM_CLASSES, 8) for y in y_all.split(256)])
    n_tr = 2 * num
    x_tr, t_tr, x_va, t_va = x_all[:n_tr], t_all[:n_tr], x_all[n_tr:], t_all[n_tr:]
    net = ScenesFeatureNet(NUM_CLASSES)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((n_tr + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n_tr, generator=gen)
        total = 0.0
        for b in range(0, n_tr, batch_size):
            idx = order[b : b + batch_size]
            x, t = x_tr[idx], t_tr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            t = torch.where(flip[:, None, None, None], t.flip(-1), t)
            loss = -(t * F.log_softmax(net.segment(x), 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        with torch.no_grad():
            acc = float((net.segment(x_va).argmax(1) == t_va.argmax(1)).float().mean())
        log(f"epoch {epoch + 1}/{epochs}: train loss {total / n_tr:.4f}, held-out cell accuracy {acc:.3f}")
    meta = {
        "name": SCENES_FEATURE_NAME,
        "num_classes": NUM_CLASSES,
        "num_features": ScenesFeatureNet.num_features,
        "input_size": SCENES_INPUT_SIZE,
        "train_scenes": num,
        "val_scenes": val,
        "scene_seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "val_cell_accuracy": round(acc, 4),
        "seconds": round(time.time() - start, 1),
        "torch": str(torch.__version__),
    }
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"state_dict": state, "meta": meta}, tmp)
    os.replace(tmp, out)
    return meta


def main(argv: list[str] | None = None) -> int:
    """``python -m cen.tasks.translation.features --train OUT.pt [--num N --epochs E --seed S]``."""
    p = argparse.ArgumentParser(
        prog="python -m cen.tasks.translation.features",
        description="Retrain the substitute FID/KID feature extractor on generated scenes.",
    )
    p.add_argument("--train", metavar="OUT", required=True, help="where to write the weights (.pt)")
    p.add_argument("--num", type=int, default=1500, help="training scenes, each under both lights (default 1500)")
    p.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    p.add_argument("--seed", type=int, default=1234, help="scene and training seed (default 1234)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible bytes)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = train_scenes_features(args.train, num=args.num, epochs=args.epochs, seed=args.seed)
    print(f"wrote {args.train}: {meta}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
