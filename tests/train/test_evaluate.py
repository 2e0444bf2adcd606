"""The engine's evaluation loop with the segmentation task, predict_scores and the table, on tiny converted models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import cen
from cen.tasks import build_task
from cen.tasks.segmentation.evaluate import format_per_class, predict_scores
from cen.tasks.segmentation.metrics import SegmentationMetrics
from cen.train.config import load_config
from tests.train.fakes import evaluate_segmenter as evaluate

K = 4


def tiny_model(num_classes: int = K, names=("rgb", "depth")) -> cen.MultiModal:
    """A converted conv net at 1/4 resolution, with the alpha-ensemble."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, num_classes, 1),
    )
    cen.convert(net, len(names), exchange=True)
    return cen.MultiModal(net, names, ensemble=True)


def batches(n=3, b=2, h=16, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.randint(0, K, (b, h, w), generator=g)
        mask[:, 0, :3] = 255
        out.append(
            {
                "rgb": torch.randn(b, 3, h, w, generator=g),
                "depth": torch.rand(b, 3, h, w, generator=g),
                "mask": mask,
                "name": [f"s{i}" for i in range(b)],
            }
        )
    return out


def test_every_branch_scored_as_by_hand():
    torch.manual_seed(0)
    model = tiny_model()
    data = batches()
    results = evaluate(model, data, K, progress=False)
    assert list(results) == ["rgb", "depth", "ensemble"]
    model.eval()
    ref = {k: SegmentationMetrics(K) for k in results}
    with torch.no_grad():
        for batch in data:
            out = model({"rgb": batch["rgb"], "depth": batch["depth"]})
            for k, m in ref.items():
                up = F.interpolate(out[k], size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
                m.update(up.argmax(1), batch["mask"])
    for k in results:
        assert results[k] == ref[k].compute()
        assert set(results[k]) == {"pixel_acc", "mean_acc", "miou", "per_class_acc", "per_class_iou"}
        assert len(results[k]["per_class_iou"]) == K


def test_module_modes_are_restored_and_no_grad_is_used():
    model = tiny_model()
    model.train()
    frozen = model.model[1]
    frozen.eval()  # e.g. the reference's frozen BN statistics
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    evaluate(model, batches(1), K, progress=False)
    assert seen == [(False, False)]
    assert model.training and not frozen.training


def test_missing_modality_and_dataloader():
    model = tiny_model()
    data = [{k: v for k, v in b.items() if k != "name"} for b in batches(2)]
    loader = DataLoader([{k: v[i] for k, v in b.items()} for b in data for i in range(2)], batch_size=2)
    results = evaluate(model, loader, K, progress=False, modalities=("depth",))
    assert list(results) == ["depth", "ensemble"]
    assert results["depth"] == results["ensemble"]  # one modality: the ensemble is that branch


def _pointwise(num_classes=K):
    """Flip-equivariant and size-agnostic: a 1x1 conv per modality, full resolution."""
    net = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, num_classes, 1))
    cen.convert(net, 2, exchange=False)
    return cen.MultiModal(net, ("rgb", "depth"), ensemble=True).eval()


def test_flip_is_undone_and_probabilities_are_summed():
    torch.manual_seed(1)
    model = _pointwise()
    x = {"rgb": torch.randn(1, 3, 8, 10), "depth": torch.randn(1, 3, 8, 10)}
    plain = predict_scores(model, x)
    flipped = predict_scores(model, x, flip=True)
    for k in plain:
        assert torch.allclose(flipped[k], 2 * plain[k].softmax(1), atol=1e-5)


def test_scales_resize_inputs_and_outputs_come_back_at_the_mask_size():
    model = _pointwise()
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0]["rgb"].shape[-2:])))
    x = {"rgb": torch.randn(1, 3, 8, 10), "depth": torch.randn(1, 3, 8, 10)}
    out = predict_scores(model, x, (16, 20), scales=(0.5, 1.0, 1.5), flip=True)
    assert sizes == [(4, 5), (4, 5), (8, 10), (8, 10), (12, 15), (12, 15)]
    for v in out.values():
        assert v.shape == (1, K, 16, 20)
        assert torch.allclose(v.sum(1), torch.full((1, 16, 20), 6.0), atol=1e-4)  # 3 scales x 2 flips
    with pytest.raises(ValueError, match="scales"):
        predict_scores(model, x, scales=(0.0,))


def test_upsample_mode_resizes_the_logits_as_asked():
    model = tiny_model().eval()  # logits at 1/4 resolution
    x = {"rgb": torch.randn(1, 3, 16, 20), "depth": torch.randn(1, 3, 16, 20)}
    with torch.no_grad():
        logits = model(x)
    for mode in ("bilinear", "bicubic"):
        out = predict_scores(model, x, (16, 20), upsample=mode)
        for name, v in out.items():
            expected = F.interpolate(logits[name], size=(16, 20), mode=mode, align_corners=False)
            assert torch.allclose(v, expected, atol=1e-6), (mode, name)
    bicubic, bilinear = predict_scores(model, x, upsample="bicubic"), predict_scores(model, x)
    assert not torch.allclose(bicubic["rgb"], bilinear["rgb"])
    with pytest.raises(ValueError, match="upsample='nearest' .*bilinear"):
        predict_scores(model, x, upsample="nearest")


def _cubic_resize_1d(x, size: int, a: float = -0.75):
    """OpenCV's INTER_CUBIC along the last axis, written out: pixel-centre sampling, Keys' cubic with
    a = -0.75 over the 4 nearest pixels, borders replicated."""
    import numpy as np

    n = x.shape[-1]

    def w(t):
        t = abs(t)
        return (
            (a + 2) * t**3 - (a + 3) * t**2 + 1
            if t <= 1
            else (a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0)
        )

    out = np.zeros((*x.shape[:-1], size))
    for j in range(size):
        src = (j + 0.5) * n / size - 0.5
        base = int(np.floor(src))
        for k in range(base - 1, base + 3):
            out[..., j] += w(src - k) * x[..., min(max(k, 0), n - 1)]
    return out


def test_bicubic_is_opencv_inter_cubic():
    """The reference resizes logits with cv2.INTER_CUBIC; torch's bicubic is the same filter (written out here)."""
    import numpy as np

    logits = torch.randn(1, K, 12, 16, dtype=torch.float64)
    ours = predict_scores(
        lambda inputs: {"rgb": logits}, {"rgb": torch.zeros(1, 3, 12, 16)}, (45, 61), upsample="bicubic"
    )["rgb"]
    rows = _cubic_resize_1d(logits[0].numpy(), 61)  # (K, 12, 61)
    theirs = np.swapaxes(_cubic_resize_1d(np.swapaxes(rows, -1, -2), 45), -1, -2)  # (K, 45, 61)
    assert torch.allclose(ours[0].double(), torch.from_numpy(theirs), atol=1e-4)


def test_multiscale_flip_evaluate_runs_and_is_close_to_single_scale_for_pointwise_model():
    model = _pointwise()
    data = [{k: v for k, v in b.items() if k != "name"} for b in batches(2)]
    single = evaluate(model, data, K, progress=False)
    flip = evaluate(model, data, K, progress=False, flip=True)
    assert single == flip  # flip-equivariant model: same argmax


def test_saves_prediction_images(tmp_path):
    evaluate(tiny_model(), batches(2), K, progress=False, image_dir=tmp_path, num_images=3)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["pred_0000_ensemble.png", "pred_0001_ensemble.png", "pred_0002_ensemble.png"]


def test_bad_batches_raise_clearly():
    with pytest.raises(ValueError, match="lacks the modalities \\['depth'\\]"):
        evaluate(
            tiny_model(),
            [{"rgb": torch.randn(1, 3, 8, 8), "mask": torch.zeros(1, 8, 8, dtype=torch.long)}],
            K,
            progress=False,
        )
    with pytest.raises(ValueError, match="no batches"):
        evaluate(tiny_model(), [], K, progress=False)
    bad = batches(1)
    bad[0]["mask"][0, 1, 1] = 9
    with pytest.raises(ValueError, match="label 9 .*num_classes=4"):
        evaluate(tiny_model(), bad, K, progress=False)


def test_format_table():
    results = {
        "rgb": {"pixel_acc": 0.5, "mean_acc": 0.25, "miou": 0.125, "per_class_iou": [0.1, None]},
        "ensemble": {"pixel_acc": 0.765, "mean_acc": 0.628, "miou": math.nan, "per_class_iou": [1.0, 0.5]},
    }
    table = build_task(load_config(None, [])).format_table(results, title="scores (%)")
    lines = table.splitlines()
    assert lines[0] == "scores (%)"
    assert lines[1].split() == ["branch", "pixel", "acc", "%", "mean", "acc", "%", "mIoU", "%"]
    assert lines[3].split() == ["rgb", "50.00", "25.00", "12.50"]
    assert lines[4].split() == ["ensemble", "76.50", "62.80", "-"]
    per_class = format_per_class(results, ["wall", "floor"]).splitlines()
    assert per_class[2].split() == ["wall", "10.00", "100.00"]
    assert per_class[3].split() == ["floor", "-", "50.00"]
