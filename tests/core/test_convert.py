import pytest
import torch
import torchvision
from torch import nn

import cen
from cen.core.norms import _ModalityNorm
from cen.nn import ModalityBatchNorm1d, ModalityBatchNorm2d, ModalityInstanceNorm2d


def _norm_param_count(model):
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_parameter_count_is_plain_plus_one_set_of_norms(arch):
    plain = getattr(torchvision.models, arch)()
    n_plain = sum(p.numel() for p in plain.parameters())
    n_norm = _norm_param_count(plain)
    converted = cen.convert(plain, 2)
    assert sum(p.numel() for p in converted.parameters()) == n_plain + n_norm


def test_auto_exchange_places():
    r50 = cen.convert(torchvision.models.resnet50(), 2)
    exchanging = {n for n, m in r50.named_modules() if isinstance(m, _ModalityNorm) and m.exchange}
    assert len(exchanging) == 16
    assert all(n.endswith(".bn2") for n in exchanging)
    r18 = cen.convert(torchvision.models.resnet18(), 2)
    exchanging = {n for n, m in r18.named_modules() if isinstance(m, _ModalityNorm) and m.exchange}
    assert len(exchanging) == 8 and all(n.endswith(".bn1") and n.startswith("layer") for n in exchanging)
    assert all(isinstance(m, ModalityBatchNorm2d) for m in r18.modules() if isinstance(m, _ModalityNorm))


def _randomise_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("training", [False, True])
def test_pretrained_weights_give_each_modality_the_plain_output(training):
    torch.manual_seed(1)
    plain = torchvision.models.resnet50(num_classes=10)
    _randomise_norms(plain)
    reference = torchvision.models.resnet50(num_classes=10)
    reference.load_state_dict(plain.state_dict())
    converted = cen.convert(plain, 2, exchange=False)
    converted.train(training), reference.train(training)
    x0, x1 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    out = cen.unstack(converted(cen.stack([x0, x1])), ["a", "b"])
    torch.testing.assert_close(out["a"], reference(x0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["b"], reference(x1), rtol=1e-4, atol=1e-4)


def test_parameters_and_stats_copied_into_every_slot():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 5.0, 6.0]))
    bn.num_batches_tracked.fill_(7)
    twin = cen.convert(bn, 3, exchange=False)
    assert isinstance(twin, ModalityBatchNorm2d)
    assert twin.gamma.tolist() == [[1.0, 2.0, 3.0]] * 3
    assert twin.running_var.view(3, 3).tolist() == [[4.0, 5.0, 6.0]] * 3
    assert twin.num_batches_tracked.item() == 7


def test_converts_every_supported_norm_type():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.InstanceNorm2d(4), nn.Flatten(1), nn.LazyLinear(5), nn.BatchNorm1d(5)
    )
    model(torch.randn(2, 3, 6, 6))
    cen.convert(model, 2, exchange=True)
    assert isinstance(model[1], ModalityBatchNorm2d) and model[1].exchange
    assert isinstance(model[2], ModalityInstanceNorm2d) and model[2].affine  # needs gamma to exchange
    assert isinstance(model[5], ModalityBatchNorm1d)
    assert model(torch.randn(4, 3, 6, 6)).shape == (4, 5)


def test_exchange_by_names_and_predicate():
    model = torchvision.models.resnet18()
    cen.convert(model, 2, exchange=["layer4.1.bn2", "bn1"])
    flags = {n: m.exchange for n, m in model.named_modules() if isinstance(m, _ModalityNorm)}
    assert {n for n, f in flags.items() if f} == {"layer4.1.bn2", "bn1"}
    model = cen.convert(torchvision.models.resnet18(), 3, exchange=lambda name, m: name.startswith("layer1"))
    assert {n for n, m in model.named_modules() if isinstance(m, _ModalityNorm) and m.exchange} == {
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.1.bn1",
        "layer1.1.bn2",
    }


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_modalities must be an int >= 1"):
        cen.convert(torchvision.models.resnet18(), 0)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        cen.convert(torchvision.models.resnet18(), 2, threshold=-1.0)
    with pytest.raises(ValueError, match="no BatchNorm1d/2d, SyncBatchNorm, InstanceNorm2d, GroupNorm or LayerNorm"):
        cen.convert(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), 2)
    with pytest.raises(ValueError, match=r"exchange names \['layer9.bn'\] are not norms"):
        cen.convert(torchvision.models.resnet18(), 2, exchange=["layer9.bn"])
    with pytest.raises(ValueError, match="not understood"):
        cen.convert(torchvision.models.resnet18(), 2, exchange="everywhere")
    with pytest.raises(TypeError, match="expects an nn.Module"):
        cen.convert("resnet", 2)
    converted = cen.convert(torchvision.models.resnet18(), 2)
    with pytest.raises(ValueError, match="already converted for 2 modalities, not 3"):
        cen.convert(converted, 3)


def test_without_norms_and_without_exchange_is_a_no_op():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert cen.convert(model, 2, exchange=False) is model
