"""The present modalities travel in a context, not on the modules: threads and shared modules do not interfere."""

import threading

import pytest
import torch
from torch import nn

import cen
from cen.core.context import current_present

NAMES = ("rgb", "depth", "normal")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


def _model():
    torch.manual_seed(0)
    net = cen.convert(TinyNet(), 3, threshold=0.1, exchange=["bn"])
    with torch.no_grad():
        net.bn.weight.uniform_(-1, 1)
        net.bn.gamma[:, :3] = 0.01
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2)
    return cen.MultiModal(net, NAMES, ensemble=True).eval()


def test_two_threads_one_with_a_missing_modality_match_sequential_calls():
    model = _model()
    other = cen.MultiModal(model.model, NAMES)  # a second model sharing every module
    inputs = [{name: torch.randn(2, 3, 8, 8) for name in NAMES} for _ in range(4)]
    partial = [{k: v for k, v in batch.items() if k != "depth"} for batch in inputs]
    with torch.no_grad():
        expected_full = [other(batch) for batch in inputs]
        expected_partial = [model(batch) for batch in partial]
        expected_direct = [model.model(cen.stack(batch, names=NAMES)) for batch in inputs]
    barrier, errors, rounds = threading.Barrier(3), [], 40

    def worker(call, batches, expected):
        try:
            barrier.wait()
            with torch.no_grad():
                for r in range(rounds):
                    i = r % len(batches)
                    out = call(batches[i])
                    if isinstance(out, dict):
                        for key, value in expected[i].items():
                            torch.testing.assert_close(out[key], value, rtol=0, atol=0)
                    else:
                        torch.testing.assert_close(out, expected[i], rtol=0, atol=0)
        except (AssertionError, RuntimeError, ValueError) as error:  # reported in the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=worker, args=(model, partial, expected_partial)),
        threading.Thread(target=worker, args=(other, inputs, expected_full)),
        threading.Thread(
            target=worker,
            args=(lambda b: model.model(cen.stack(b, names=NAMES)), inputs, expected_direct),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_no_state_on_the_modules_and_the_context_is_restored():
    model = _model()
    with torch.no_grad():
        model({"rgb": torch.randn(2, 3, 8, 8)})
    assert current_present() is None
    assert not any(hasattr(m, "present") for m in model.modules())
    with cen.present_modalities((0, 2)):
        assert current_present() == (0, 2)
        with cen.present_modalities(None):
            assert current_present() is None
        assert current_present() == (0, 2)
    assert current_present() is None


def test_direct_call_of_the_converted_network_with_a_declared_subset():
    model = _model()
    rgb, normal = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model({"rgb": rgb, "normal": normal})
        with cen.present_modalities((0, 2)):
            direct = cen.unstack(model.model(cen.stack([rgb, normal])), ["rgb", "normal"])
    torch.testing.assert_close(direct["rgb"], expected["rgb"])
    torch.testing.assert_close(direct["normal"], expected["normal"])


@pytest.mark.parametrize(
    "indices, error, message",
    [
        ((), ValueError, "non-empty"),
        ((1, 0), ValueError, "strictly increasing"),
        ((0, -1), ValueError, ">= 0"),
        ("01", TypeError, "sequence of modality indices"),
    ],
)
def test_bad_indices(indices, error, message):
    with pytest.raises(error, match=message), cen.present_modalities(indices):
        pass


def test_indices_beyond_the_norm_and_subsets_in_training_are_errors():
    model = _model()
    with cen.present_modalities((0, 5)), pytest.raises(ValueError, match=r"present modalities \(0, 5\) given"):
        model.model(torch.randn(4, 3, 8, 8))
    model.train()
    with cen.present_modalities((0, 1)), pytest.raises(RuntimeError, match="only at inference"):
        model.model(torch.randn(4, 3, 8, 8))
