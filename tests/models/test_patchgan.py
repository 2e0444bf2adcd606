"""The reference PatchGAN: size, receptive field, norms it applies, shared use across branches."""

from __future__ import annotations

import pytest
import torch

from cen.models import PatchDiscriminator, count_parameters


def test_parameter_count_equals_the_references_applied_parameters():
    with torch.device("meta"):
        disc = PatchDiscriminator()
    assert count_parameters(disc) == 2_769_601


def test_norms_only_where_the_reference_applies_them():
    disc = PatchDiscriminator(ndf=8)
    norms = {n for n, m in disc.named_modules() if isinstance(m, torch.nn.InstanceNorm2d)}
    assert norms == {"norm2", "norm3", "norm4"}
    assert all(disc.get_submodule(n).affine and disc.get_submodule(n).track_running_stats for n in norms)
    assert [disc.get_submodule(f"conv{i}").stride for i in range(1, 6)] == [(2, 2)] * 3 + [(1, 1)] * 2


@pytest.mark.parametrize(("size", "patches"), [(256, 30), (64, 6), (24, 1)])
def test_output_is_a_grid_of_patch_logits(size, patches):
    disc = PatchDiscriminator(in_channels=6, ndf=8)
    assert disc(torch.randn(2, 6, size, size)).shape == (2, 1, patches, patches)


def test_receptive_field_is_70():
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=2, ndf=4).eval()  # running statistics: no mixing across pixels
    x = torch.randn(1, 2, 256, 256, requires_grad=True)
    disc(x)[0, 0, 15, 15].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)))[:, 0]
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)))[:, 0]
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_stacked_branches_equal_separate_calls():
    """Shared by all branches: pairs (input_m, image) of every branch may run in one batch (instance norms)."""
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=6, ndf=8).train()
    image = torch.randn(2, 3, 32, 32)
    pairs = [torch.cat([torch.randn(2, 3, 32, 32), image], dim=1) for _ in range(2)]
    together = disc(torch.cat(pairs))
    apart = torch.cat([disc(p) for p in pairs])
    torch.testing.assert_close(together, apart)


def test_bad_input():
    disc = PatchDiscriminator(in_channels=6, ndf=4)
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\): the input concatenated .* got shape \(1, 3, 64, 64\)"):
        disc(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="at least 24x24, got 16x64"):
        disc(torch.zeros(1, 6, 16, 64))
    with pytest.raises(ValueError, match="ndf must be a positive int"):
        PatchDiscriminator(ndf=0)
