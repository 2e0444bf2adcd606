"""The fast modality norms equal the plain per-modality loop reference."""

import pytest
import torch
from torch import nn

import cen
from cen.nn import ModalityBatchNorm1d, ModalityBatchNorm2d, ModalityInstanceNorm2d
from tests.core.reference_impl import join, reference_exchange, reference_norm

SHAPES = {
    ModalityBatchNorm2d: (5, 4, 3),
    ModalityInstanceNorm2d: (5, 4, 3),
}


def _make(cls, channels, num, threshold, **kw):
    norm = cls(channels, num, exchange=True, threshold=threshold, **kw)
    with torch.no_grad():
        norm.weight.uniform_(-1.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        gamma = norm.gamma
        # make a quarter of the channels exchange, including one channel of every modality
        gamma[:, 0] = 0.001
        gamma[torch.rand_like(gamma) < 0.25] = -0.005
        if norm.running_mean is not None:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return norm


def _compare(cls, num, input_shape, training, threshold=0.02, **kw):
    channels = input_shape[1]
    norm = _make(cls, channels, num, threshold, **kw)
    norm.train(training)
    x = torch.randn(input_shape[0] * num, *input_shape[1:], dtype=torch.float64, requires_grad=True)
    norm = norm.double()
    weight = norm.weight.detach().clone().requires_grad_(True)
    bias = norm.bias.detach().clone().requires_grad_(True)
    rm = None if norm.running_mean is None else norm.running_mean.clone()
    rv = None if norm.running_var is None else norm.running_var.clone()
    kind = "instance" if cls is ModalityInstanceNorm2d else "batch"

    out = norm(x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref_parts = reference_norm(
        x_ref, num, weight, bias, rm, rv, training=training, momentum=norm.momentum, eps=norm.eps, kind=kind
    )
    ref = join(reference_exchange(ref_parts, weight.view(num, channels), threshold))
    torch.testing.assert_close(out, ref)

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(norm.weight.grad, weight.grad)
    torch.testing.assert_close(norm.bias.grad, bias.grad)
    if rm is not None:
        torch.testing.assert_close(norm.running_mean, rm)
        torch.testing.assert_close(norm.running_var, rv)
    return norm


@pytest.fixture(params=["fused", "split"])
def route(request, monkeypatch):
    """Both routes of the batch norms: one batch_norm on (B, M*C, ...), and the compile route on (B, M, C, ...)."""
    monkeypatch.setattr(cen.core.norms, "_split_route", lambda: request.param == "split")
    return request.param


@pytest.mark.parametrize("num", [1, 2, 3, 4])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_matches_loop_reference(num, training, route):
    _compare(ModalityBatchNorm2d, num, (3, 6, 5, 4), training)


@pytest.mark.parametrize("num", [1, 2, 3, 4])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 6), (3, 6, 7)])
def test_batchnorm1d_matches_loop_reference(num, training, shape, route):
    _compare(ModalityBatchNorm1d, num, shape, training)


def test_split_route_keeps_channels_last_and_missing_modalities(monkeypatch):
    norm = _make(ModalityBatchNorm2d, 6, 3, threshold=0.02).eval()
    x = torch.randn(6, 6, 5, 4).contiguous(memory_format=torch.channels_last)
    fused = norm(x)
    with cen.present_modalities((0, 2)):
        fused_subset = norm(x[:4])
    monkeypatch.setattr(cen.core.norms, "_split_route", lambda: True)
    with cen.present_modalities((0, 2)):
        split_subset = norm(x[:4])
    split = norm(x)
    torch.testing.assert_close(split, fused)
    torch.testing.assert_close(split_subset, fused_subset)
    assert split.is_contiguous(memory_format=torch.channels_last)  # no layout round trip
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm.train()(torch.randn(3, 6, 1, 1))


@pytest.mark.parametrize("num", [1, 2, 3, 4])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("track", [False, True])
def test_instancenorm2d_matches_loop_reference(num, training, track):
    _compare(ModalityInstanceNorm2d, num, (2, 6, 5, 4), training, track_running_stats=track)


def test_running_stats_update_per_modality_with_momentum_none(route):
    norm = ModalityBatchNorm2d(3, 2, momentum=None)
    x = torch.randn(8, 3, 4, 4)
    x.view(4, 2, 3, 4, 4)[:, 1] += 10.0  # modality 1 has a different mean
    norm(x)
    norm(x)
    assert norm.num_batches_tracked.item() == 2
    mean = norm.running_mean.view(2, 3)
    assert torch.all(mean[1] - mean[0] > 9.0)


@pytest.mark.parametrize("training", [True, False])
def test_single_modality_is_the_plain_norm(training):
    plain = nn.BatchNorm2d(5)
    with torch.no_grad():
        plain.weight.uniform_(-1, 1)
        plain.running_mean.normal_()
    twin = cen.convert(nn.Sequential(plain), 1)[0]
    plain2 = nn.BatchNorm2d(5)
    plain2.load_state_dict(plain.state_dict())
    twin.train(training), plain2.train(training)
    x = torch.randn(4, 5, 3, 3)
    torch.testing.assert_close(twin(x), plain2(x), rtol=0, atol=0)
    torch.testing.assert_close(twin.running_mean, plain2.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(twin.running_var, plain2.running_var, rtol=0, atol=0)


def test_threshold_zero_exchanges_nothing():
    norm = _make(ModalityBatchNorm2d, 6, 3, threshold=0.0)
    with torch.no_grad():
        norm.gamma[1, 2] = 0.0  # even an exactly-zero gamma is kept: |0| >= 0
    plain = ModalityBatchNorm2d(6, 3, exchange=False)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(6, 6, 4, 4)
    assert not norm.exchange_mask().any()
    torch.testing.assert_close(norm(x), plain(x))


def test_exchange_really_changes_the_output():
    norm = _make(ModalityBatchNorm2d, 6, 2, threshold=0.02)
    plain = ModalityBatchNorm2d(6, 2, exchange=False)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(6, 6, 4, 4)
    out, base = norm(x).view(3, 2, 6, 4, 4), plain(x).view(3, 2, 6, 4, 4)
    mask = norm.exchange_mask()
    assert mask.any() and not mask.all()
    # a replaced channel of modality 0 is modality 1's channel and vice versa
    torch.testing.assert_close(out[:, 0, mask[0]], base[:, 1, mask[0]])
    torch.testing.assert_close(out[:, 1, ~mask[1]], base[:, 1, ~mask[1]])


def test_parameter_layout_and_gamma_view():
    norm = ModalityBatchNorm2d(4, 3)
    assert norm.weight.shape == norm.bias.shape == norm.running_mean.shape == norm.running_var.shape == (12,)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(12.0))
    assert norm.gamma.shape == (3, 4)
    assert norm.gamma[2, 1].item() == 2 * 4 + 1
    assert norm.gamma.data_ptr() == norm.weight.data_ptr()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_features": 4, "num_modalities": 0}, "num_modalities"),
        ({"num_features": 4, "num_modalities": 2, "threshold": -0.1}, "threshold"),
        ({"num_features": 0, "num_modalities": 2}, "num_features"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModalityBatchNorm2d(**kwargs)


def test_batch_not_divisible_by_modalities():
    norm = ModalityBatchNorm2d(4, 3)
    with pytest.raises(ValueError, match=r"batch size 4 is not divisible by the number of modalities 3"):
        norm(torch.randn(4, 4, 2, 2))


def test_wrong_channels_and_rank():
    norm = ModalityBatchNorm2d(4, 2)
    with pytest.raises(ValueError, match="built for 4 channels"):
        norm(torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match="4-d input"):
        norm(torch.randn(4, 4))


def test_convert_sync_batchnorm_marks_modality_batch_norms_and_keeps_cpu_results():
    model = cen.convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.InstanceNorm2d(4)), 2, exchange=False)
    reference = ModalityBatchNorm2d(4, 2)
    reference.load_state_dict(model[1].state_dict())
    assert cen.convert_sync_batchnorm(model) is model
    assert model[1].sync and not getattr(model[2], "sync", False)
    x = torch.randn(4, 4, 3, 3)
    # no process group here: the synchronised norm computes exactly the local one
    torch.testing.assert_close(model[1](x), reference(x))
    # plain batch norms (e.g. a decoder's, a head's) become torch's SyncBatchNorm in the same call
    mixed = cen.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    assert isinstance(mixed[1], nn.SyncBatchNorm)
