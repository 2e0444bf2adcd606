"""SegmentationMetrics: hand-computed example, brute force on random data, bad labels, sync."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cen.tasks.segmentation.metrics import SegmentationMetrics, scores_from_confusion


def _one_hot_logits(labels: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(labels, k).permute(0, 3, 1, 2).float()


def test_hand_computed_example():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    # valid (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the (255, 2) pixel is ignored.
    m = SegmentationMetrics(4)
    m.update(pred, target)
    cm = m.sync()
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    s = m.compute()
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    assert s["per_class_acc"] == [pytest.approx(0.5), pytest.approx(1.0), 0.0, None]
    assert s["mean_acc"] == pytest.approx(0.5)
    # IoU: 1/(2+2-1), 2/(2+3-2), 0/(1+0-0); class 3 is in neither GT nor prediction.
    assert s["per_class_iou"] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 0.0, None]
    assert s["miou"] == pytest.approx(1 / 3)


def test_class_only_predicted_counts_in_miou_not_in_mean_acc():
    target = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])  # class 2 never in the ground truth
    m = SegmentationMetrics(3)
    m.update(pred, target)
    s = m.compute()
    assert s["per_class_iou"] == [pytest.approx(0.5), 1.0, 0.0]
    assert s["miou"] == pytest.approx(0.5)
    assert s["per_class_acc"] == [0.5, 1.0, None]
    assert s["mean_acc"] == pytest.approx(0.75)


def _brute_force(preds: np.ndarray, target: np.ndarray, k: int, ignore: int):
    cm = np.zeros((k, k), np.int64)
    for p, t in zip(preds.ravel(), target.ravel()):
        if t != ignore:
            cm[t, p] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(cm) / cm.sum(1)
        iou = np.diag(cm) / (cm.sum(1) + cm.sum(0) - np.diag(cm))
    return cm, np.diag(cm).sum() / cm.sum(), np.nanmean(acc), np.nanmean(iou), iou


def test_random_batches_match_brute_force_numpy():
    g = torch.Generator().manual_seed(1)
    k, ignore = 7, 255
    m = SegmentationMetrics(k, ignore_index=ignore)
    all_p, all_t = [], []
    for _ in range(3):
        target = torch.randint(0, k - 1, (2, 9, 11), generator=g)  # class k-1 never in GT
        target[torch.rand(target.shape, generator=g) < 0.2] = ignore
        logits = torch.randn(2, k, 9, 11, generator=g)
        m.update(logits, target)
        all_p.append(logits.argmax(1).numpy())
        all_t.append(target.numpy())
    cm, pa, ma, miou, iou = _brute_force(np.stack(all_p), np.stack(all_t), k, ignore)
    assert m.sync().numpy().tolist() == cm.tolist()
    s = m.compute()
    assert s["pixel_acc"] == pytest.approx(pa)
    assert s["mean_acc"] == pytest.approx(ma)
    assert s["miou"] == pytest.approx(miou)
    assert [math.nan if v is None else v for v in s["per_class_iou"]] == pytest.approx(iou.tolist(), nan_ok=True)


def test_small_logits_are_upsampled_bilinearly_to_the_target():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (2, 16, 24), generator=g)
    m = SegmentationMetrics(5)
    m.update(logits, target)
    up = F.interpolate(logits, size=(16, 24), mode="bilinear", align_corners=False).argmax(1)
    ref = SegmentationMetrics(5)
    ref.update(up, target)
    assert torch.equal(m.sync(), ref.sync())
    assert int(m.sync().sum()) == 2 * 16 * 24


def test_single_image_logits_and_reset():
    m = SegmentationMetrics(3)
    m.update(torch.randn(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))
    assert int(m.sync().sum()) == 16
    m.reset()
    assert int(m.sync().sum()) == 0


def test_label_out_of_range_raises_naming_value_and_num_classes():
    m = SegmentationMetrics(4)
    target = torch.tensor([[0, 1], [7, 255]])
    with pytest.raises(ValueError, match=r"label 7 .*num_classes=4"):
        m.update(torch.zeros(2, 2, dtype=torch.long), target)
    with pytest.raises(ValueError, match=r"label -1 "):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, -1], [1, 1]]))


def test_shape_and_class_mismatches_raise():
    m = SegmentationMetrics(4)
    with pytest.raises(ValueError, match="5 classes"):
        m.update(torch.randn(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="differ from target"):
        m.update(torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index=2"):
        SegmentationMetrics(4, ignore_index=2)


def test_empty_scores_are_nan():
    s = SegmentationMetrics(3).compute()
    direct = scores_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert s.keys() == direct.keys()
    for key, value in s.items():  # NaN != NaN: compare the NaN-ness, then the rest
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(direct[key]), key
        else:
            assert value == direct[key], key
    assert math.isnan(s["pixel_acc"]) and math.isnan(s["miou"]) and s["per_class_iou"] == [None] * 3


def test_state_stays_on_the_given_device_and_deterministic_mode_works():
    m = SegmentationMetrics(3, device="cpu")
    assert m.confmat.device.type == "cpu" and m.confmat.dtype == torch.long
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        m.update(torch.randn(1, 3, 64, 64), torch.randint(0, 3, (1, 64, 64)))
    finally:
        torch.use_deterministic_algorithms(before)
    assert int(m.sync().sum()) == 64 * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(5)
        logits = torch.randn(4, 6, 8, 8, generator=g)
        target = torch.randint(0, 6, (4, 8, 8), generator=g)
        m = SegmentationMetrics(6)
        m.update(logits[rank::world], target[rank::world])  # each process sees half
        scores = m.compute()
        cm = m.sync()
        local = m.confmat.clone()
        if rank == 0:
            torch.save({"scores": scores, "cm": cm, "local": local}, out)
    finally:
        dist.destroy_process_group()


def test_compute_sums_over_processes(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank0.pt")
    # fork: the children inherit the imported torch (spawn re-imports it: ~10 s each here)
    mp.start_processes(_dist_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="fork")
    got = torch.load(out)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 8, 8, generator=g)
    target = torch.randint(0, 6, (4, 8, 8), generator=g)
    full = SegmentationMetrics(6)
    full.update(logits, target)
    assert torch.equal(got["cm"], full.sync())
    assert got["scores"] == full.compute()
    assert int(got["local"].sum()) == 2 * 8 * 8  # the local state is left unsynced


def test_deterministic_cuda_counting_path_agrees_with_bincount():
    from cen.tasks.segmentation.metrics import _count_pairs

    idx = torch.randint(0, 17, (1000,))
    assert torch.equal(_count_pairs(idx, 17, accumulate=True), torch.bincount(idx, minlength=17))
