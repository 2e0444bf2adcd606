import pytest
import torch

import cen


def test_stack_is_sample_major_and_unstack_inverts_it():
    rgb, depth = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    x = cen.stack({"rgb": rgb, "depth": depth})
    assert x.shape == (6, 2, 4)
    for b in range(3):
        torch.testing.assert_close(x[2 * b], rgb[b])
        torch.testing.assert_close(x[2 * b + 1], depth[b])
    back = cen.unstack(x, ["rgb", "depth"])
    assert list(back) == ["rgb", "depth"]
    torch.testing.assert_close(back["rgb"], rgb)
    torch.testing.assert_close(back["depth"], depth)


def test_stack_orders_by_names_and_accepts_sequences():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    x = cen.stack({"a": a, "b": b}, names=["b", "a"])
    assert x[0].sum() == 3 and x[1].sum() == 0
    torch.testing.assert_close(cen.stack([a, b]), cen.stack({"a": a, "b": b}))


def test_stack_rejects_mismatched_shapes_naming_both():
    with pytest.raises(ValueError, match=r"modality depth has shape \(2, 1, 5\) but rgb has \(2, 3, 5\)"):
        cen.stack({"rgb": torch.randn(2, 3, 5), "depth": torch.randn(2, 1, 5)})


def test_stack_rejects_unknown_and_missing_names():
    with pytest.raises(ValueError, match=r"unknown \['ir'\], missing \['depth'\]"):
        cen.stack({"rgb": torch.randn(1, 2), "ir": torch.randn(1, 2)}, names=["rgb", "depth"])


def test_duplicated_names_are_rejected():
    with pytest.raises(ValueError, match=r"name \['rgb'\] more than once"):
        cen.unstack(torch.randn(4, 2), ["rgb", "rgb"])


def test_unstack_batch_not_divisible():
    with pytest.raises(ValueError, match="batch size 5 is not divisible by the number of modalities 2"):
        cen.unstack(torch.randn(5, 2), ["rgb", "depth"])


def test_empty_inputs_rejected():
    with pytest.raises(ValueError):
        cen.stack({})
    with pytest.raises(TypeError):
        cen.stack("rgb")
