"""Run folders made by hand (no training): config.yaml, metrics.jsonl, checkpoints, results.json, images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cen.core.norms import ModalityBatchNorm2d
from cen.train.gamma import GammaTracker

THETA = 0.02
LAYERS = ["encoder.layer1.bn2", "encoder.layer2.bn2", "encoder.layer3.bn2"]


class ToyNet(nn.Module):
    """Three exchanging norms of 8 channels and one private, non-exchanging one."""

    def __init__(self, modalities, exchange=True):
        super().__init__()
        self.names = list(modalities)
        m = len(modalities)
        self.encoder = nn.Module()
        for i in (1, 2, 3):
            block = nn.Module()
            block.bn2 = ModalityBatchNorm2d(8, m, exchange=exchange, threshold=THETA)
            setattr(self.encoder, f"layer{i}", block)
        self.head = ModalityBatchNorm2d(4, m, threshold=THETA)


def set_gammas(model, fractions):
    """Layer i, modality m: the first ``round(fractions[i][m] * 8)`` channels get |gamma| = 0 (others 1)."""
    with torch.no_grad():
        for i, frac in enumerate(fractions):
            g = getattr(model.encoder, f"layer{i + 1}").bn2.gamma
            g.fill_(1.0)
            for m, f in enumerate(frac):
                g[m, : round(f * 8)] = 0.0


def _seg_scores(base):
    return {"pixel_acc": base + 0.3, "mean_acc": base + 0.1, "miou": base}


@pytest.fixture
def make_run(tmp_path):
    """``make_run(name, **options)`` -> path of a run folder.

    Options: modalities, task ("segmentation" | "translation"), exchange (bool), tracker (bool: gamma
    records and tracker state), checkpoint ("v2" | "v1" | "corrupt" | None), results (bool), images (bool),
    evaluations (int), final (per-layer exchanged fractions of best.pt).
    """

    def make(
        name="run",
        *,
        modalities=("rgb", "depth"),
        task="segmentation",
        exchange=True,
        tracker=True,
        checkpoint="v2",
        results=True,
        images=True,
        evaluations=3,
        final=((0.0, 0.25), (0.25, 0.25), (0.5, 0.75)),
    ):
        run = tmp_path / name
        run.mkdir()
        mods = list(modalities)
        (run / "config.yaml").write_text(
            f"modalities: [{', '.join(mods)}]\n"
            "data: {dataset: scenes, num_classes: 7}\n"
            f"model: {{name: toy}}\nfusion: {{threshold: {THETA}, points: {'auto' if exchange else 'false'}}}\n"
            "loss: {sparsity_weight: 10.0, sparsity_mode: disjoint, sparsity_solver: proximal}\n",
            encoding="utf-8",
        )
        model = ToyNet(mods, exchange=exchange)
        track = GammaTracker(model) if tracker else None
        records = [{"kind": "info", "step": 0, "event": "start"}]
        branches = mods + (["ensemble"] if len(mods) > 1 else [])
        step = 0
        for e in range(1, evaluations + 1):
            for _ in range(4):
                step += 1
                frac = [[f * e / evaluations for f in layer] for layer in final]
                set_gammas(model, [[x[m % len(x)] for m in range(len(mods))] for x in frac])
                if track is not None:
                    track.update(step)
                records.append(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": e,
                        "loss": 3.0 - 0.1 * step,
                        "ce/rgb": 1.0,
                        "l1": 8.0 - step * 0.2,
                        "lr/encoder": 1e-3,
                        "images_per_s": 50.0,
                    }
                )
            if task == "segmentation":
                scores = {b: _seg_scores(0.1 * e + 0.01 * i) for i, b in enumerate(branches)}
            else:
                scores = {b: {"l1": 0.5 / e, "rmse": 0.7 / e, "fid": 200.0 / e, "kid": 0.05 / e} for b in branches}
            rec = {"kind": "val", "step": step, "epoch": e, "scores": scores}
            if len(mods) > 1:
                rec["alpha"] = {m: 1.0 / len(mods) + 0.01 * e * (i - 0.5) for i, m in enumerate(mods)}
            if exchange:
                fr = {
                    layer: {
                        m: float((getattr(model.encoder, f"layer{i + 1}").bn2.gamma[j].abs() < THETA).float().mean())
                        for j, m in enumerate(mods)
                    }
                    for i, layer in enumerate(LAYERS)
                }
                rec["exchange"] = fr
                rec["exchange_mean"] = {m: sum(fr[la][m] for la in LAYERS) / 3 for m in mods}
            records.append(rec)
            if track is not None:
                records.append({"kind": "gamma", "step": step, "epoch": e, **track.summary()})
        with (run / "metrics.jsonl").open("w") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        test = {b: dict(s) for b, s in records[-2 if track else -1]["scores"].items()}
        if task == "segmentation":
            for i, b in enumerate(branches):
                test[b]["per_class_iou"] = [0.9, 0.5 + 0.1 * i, None, 0.2, 0.1, 0.0, 0.3]
                test[b]["per_class_acc"] = [0.95, 0.6, None, 0.3, 0.2, 0.1, 0.4]
        if results:
            (run / "results.json").write_text(json.dumps({"best_epoch": evaluations, "steps": step, "test": test}))
        if checkpoint:
            ckpt = {"format": "cen-checkpoint", "config": {}, "progress": {"global_step": step, "epoch": evaluations}}
            if checkpoint == "v1":
                ckpt.update(version=1, model=model.state_dict())
            else:
                ckpt.update(version=2, kind="training", models={"model": model.state_dict()})
            if track is not None:
                ckpt["gamma_tracker"] = track.state_dict()
            for file in ("best.pt", "last.pt"):
                if checkpoint == "corrupt":
                    (run / file).write_bytes(b"not a checkpoint")
                else:
                    torch.save(ckpt, run / file)
        if images:
            (run / "images" / "test_best").mkdir(parents=True)
            for i in range(2):
                arr = np.zeros((24, 96, 3), np.uint8)
                arr[:, :, i] = 200
                Image.fromarray(arr).save(run / "images" / "test_best" / f"pred_{i:04d}_ensemble.png")
        return run

    return make
