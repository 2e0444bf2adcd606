"""GammaTracker: the per-scale history behind the Theorem 1 statistics."""

import io

import pytest
import torch
from torch import nn

from cen.core.norms import ModalityBatchNorm2d
from cen.core.sparsity import sparsity_shrink_
from cen.train.gamma import GammaTracker, summarize_state

THETA = 0.1


class Toy(nn.Module):
    """Two exchanging norms (2 modalities x 4 channels) and one that does not exchange."""

    def __init__(self):
        super().__init__()
        self.low = ModalityBatchNorm2d(4, 2, exchange=True, threshold=THETA)
        self.high = ModalityBatchNorm2d(4, 2, exchange=True, threshold=THETA)
        self.plain = ModalityBatchNorm2d(4, 2, exchange=False, threshold=THETA)
        self.names = ["rgb", "depth"]


# gamma[m, c] of layer "low" at steps 1..6. Penalised (disjoint): rgb channels 0, 1; depth channels 2, 3.
#   rgb c0: falls at step 2 and stays                       -> ever, under, first 2, 0 rises
#   rgb c1: falls at 1, rises at 3, falls at 4, rises at 6   -> ever, recovered, back now, first 1, 2 rises
#   depth c2: never falls
#   depth c3: falls at step 5 (exactly 0, as the proximal step makes it)
#   rgb c3 / depth c0: NOT penalised, fall at step 1 (must not count)
LOW = [
    [[1.0, 0.05, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]],
    [[0.05, 0.05, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]],
    [[0.01, 0.5, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]],
    [[0.02, -0.01, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]],
    [[0.0, 0.02, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]],
    [[0.0, -0.3, 1.0, 0.0], [0.0, 1.0, 0.5, 0.0]],
]


def _set(model, step):
    with torch.no_grad():
        model.low.weight.copy_(torch.tensor(LOW[step - 1]).view(-1))
        model.high.weight.fill_(1.0)
        model.plain.weight.fill_(0.0)  # not exchanging: never tracked


def _run(tracker, model, steps):
    for step in steps:
        _set(model, step)
        tracker.update(step)


def test_statistics_of_hand_set_history():
    model = Toy()
    tracker = GammaTracker(model)
    assert tracker.layers == ["low", "high"]
    _run(tracker, model, range(1, 7))
    s = tracker.summary()
    rgb, depth = s["layers"]["low"]["rgb"], s["layers"]["low"]["depth"]
    got = (rgb["penalised"], rgb["ever"], rgb["under"], rgb["recovered"], rgb["back_now"], rgb["rises"])
    assert got == (2, 2, 1, 1, 1, 2)
    assert rgb["share_ever"] == 1.0 and rgb["share_under"] == 0.5 and rgb["share_recovered"] == 0.5
    assert (depth["penalised"], depth["ever"], depth["under"], depth["recovered"], depth["rises"]) == (2, 1, 1, 0, 0)
    assert depth["share_recovered"] == 0.0
    high = s["layers"]["high"]["rgb"]
    assert high["ever"] == 0 and high["share_recovered"] is None and high["share_under"] == 0.0
    total = s["total"]
    assert (total["penalised"], total["ever"], total["under"], total["recovered"], total["rises"]) == (8, 3, 2, 1, 2)
    assert total["share_recovered"] == pytest.approx(1 / 3)
    assert s["threshold"] == THETA and s["updates"] == 6 and s["mode"] == "disjoint"
    first = tracker.state["low"]["first_step"]
    assert first[0, :2].tolist() == [2, 1] and first[1, 3].item() == 5 and first[1, 2].item() == -1
    assert tracker.state["low"]["recoveries"][0].tolist() == [0, 2, 0, 0]


def test_mode_all_counts_every_channel_and_threshold_override():
    model = Toy()
    tracker = GammaTracker(model, mode="all", threshold=0.03)
    _run(tracker, model, range(1, 7))
    rgb = tracker.summary()["layers"]["low"]["rgb"]
    # with theta 0.03 rgb c0 first falls at step 3 (0.01), c1 at 4 (-0.01), c3 (unpenalised before) at 1
    assert rgb["penalised"] == 4 and rgb["ever"] == 3
    assert tracker.state["low"]["first_step"][0].tolist() == [3, 4, -1, 1]
    with pytest.raises(ValueError, match="mode="):
        GammaTracker(model, mode="some")


def test_state_dict_round_trip_mid_run_continues_exactly():
    model = Toy()
    whole = GammaTracker(model)
    _run(whole, model, range(1, 7))

    first_half = GammaTracker(model)
    _run(first_half, model, range(1, 4))
    buf = io.BytesIO()
    torch.save(first_half.state_dict(), buf)  # as in a checkpoint, loaded with weights_only
    other = Toy()
    _set(other, 3)
    resumed = GammaTracker(other)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    _run(resumed, other, range(4, 7))
    assert resumed.summary() == whole.summary()
    for layer in whole.state:
        for key, t in whole.state[layer].items():
            assert torch.equal(t, resumed.state[layer][key]), (layer, key)
    assert summarize_state(whole.state_dict()) == whole.summary()


def test_load_state_dict_rejects_another_model():
    model = Toy()
    tracker = GammaTracker(model)
    state = tracker.state_dict()
    del state["layers"]["high"]
    with pytest.raises(ValueError, match="other layers"):
        GammaTracker(model).load_state_dict(state)
    state = GammaTracker(model).state_dict()
    state["layers"]["low"]["ever"] = torch.zeros(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        GammaTracker(model).load_state_dict(state)


def test_update_does_no_host_sync(monkeypatch):
    model = Toy()
    tracker = GammaTracker(model)
    _set(model, 1)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync in GammaTracker.update")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    tracker.update(1)
    tracker.update(2)
    monkeypatch.undo()
    assert tracker.summary()["total"]["ever"] == 1


def test_works_with_the_proximal_solver():
    model = Toy()
    with torch.no_grad():
        model.low.weight.fill_(0.25)
        model.high.weight.fill_(0.25)
    tracker = GammaTracker(model)
    for step in range(1, 5):
        sparsity_shrink_(model, 0.1)  # 0.15, 0.05 (< theta), 0, 0 on the penalised half
        tracker.update(step)
    s = tracker.summary()["total"]
    assert s["ever"] == s["under"] == s["penalised"] == 8 and s["recovered"] == 0
    assert torch.all(tracker.state["low"]["first_step"][tracker.penalised["low"]] == 2)


def test_histograms_are_penalised_magnitudes():
    model = Toy()
    _set(model, 6)
    h = GammaTracker(model).histograms()
    assert set(h) == {"low/rgb", "low/depth", "high/rgb", "high/depth"}
    assert torch.allclose(h["low/rgb"], torch.tensor([0.0, 0.3]))
    assert torch.allclose(h["low/depth"], torch.tensor([0.5, 0.0]))


def test_model_without_exchange_gives_empty_summary():
    tracker = GammaTracker(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    tracker.update(1)
    s = tracker.summary()
    assert s["layers"] == {} and s["total"]["penalised"] == 0 and s["total"]["share_ever"] is None
    assert tracker.histograms() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks for device-to-host syncs")
def test_update_does_no_cuda_sync():
    model = Toy().cuda()
    tracker = GammaTracker(model)
    _set(model, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            tracker.update(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tracker.summary()["total"]["ever"] == 1


def test_the_loss_gradient_near_zero_against_lambda_is_counted():
    # Theorem 1's quantity: a scale under theta stays while |dL/dgamma| < lambda; here rgb c1 rises after a strong
    # gradient and rgb c0 after a weak one (which the theorem does not expect, and the count must show).
    model = Toy()
    tracker = GammaTracker(model)
    norm, lam = model.low, 0.5
    steps = [  # (gamma of rgb c0, c1), (dL/dgamma of rgb c0, c1)
        ((0.05, 0.05), (0.1, 0.9)),  # both under theta: c0 weak, c1 strong
        ((0.5, 0.5), (0.0, 0.0)),  # both rise: c0 after a weak gradient, c1 after a strong one
        ((0.0, 0.0), (0.2, 0.2)),  # both back under, weak
    ]
    for step, (gammas, grads) in enumerate(steps, 1):
        with torch.no_grad():
            norm.gamma.fill_(1.0)
            norm.gamma[0, :2] = torch.tensor(gammas)
        norm.weight.grad = torch.zeros_like(norm.weight)
        norm.weight.grad.view(2, 4)[0, :2] = torch.tensor(grads)
        tracker.update(step, lam=lam)
    rgb = tracker.summary()["layers"]["low"]["rgb"]
    assert (rgb["rises_after_weak_gradient"], rgb["rises_after_strong_gradient"]) == (1, 1)
    assert rgb["under_weak_gradient"] == 2 and rgb["under"] == 2
    # the gradient solver's l1 subgradient is taken off: at gamma > 0 the loss gradient is grad - lambda
    tracker2 = GammaTracker(model)
    with torch.no_grad():
        norm.gamma.fill_(1.0)
        norm.gamma[0, 0] = 0.05
    norm.weight.grad = torch.zeros_like(norm.weight)
    norm.weight.grad.view(2, 4)[0, 0] = 0.6  # 0.6 - 0.5: a weak loss gradient
    tracker2.update(1, lam=0.5, l1_in_grad=0.5)
    assert tracker2.summary()["layers"]["low"]["rgb"]["under_weak_gradient"] == 1
    # a saved state of the first version (without the gradient fields) still loads
    state = tracker.state_dict()
    for entry in state["layers"].values():
        for key in ("weak", "rises_weak", "rises_strong"):
            entry.pop(key)
    GammaTracker(model).load_state_dict(state)
