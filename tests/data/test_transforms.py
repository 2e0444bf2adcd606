"""Joint transforms: every modality and the mask stay aligned; normals flip correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from cen.data import IMAGENET_MEAN, IMAGENET_STD, NYUDv2
from cen.data.transforms import (
    NormalizeModalities,
    segmentation_eval,
    segmentation_train,
    translation_train,
)
from cen.data.tvtensors import Depth, NormalMap, unwrap_sample
from tests.data.conftest import write_png


def block_sample(h: int = 24, w: int = 32, block: int = 4) -> dict:
    """Piecewise-constant blocks: block id k -> rgb k/100, depth k, normal x (k/100), mask k % 200."""
    ids = (torch.arange(h)[:, None] // block) * (w // block) + torch.arange(w)[None] // block
    f = ids.float()
    return {
        "rgb": tv_tensors.Image((f / 100).expand(3, h, w).clone()),
        "depth": Depth(f.expand(3, h, w).clone()),
        "normal": NormalMap(torch.stack([f / 100, -f / 100, torch.ones_like(f)])),
        "mask": tv_tensors.Mask(ids.to(torch.uint8)),
    }


@pytest.mark.parametrize("seed", range(6))
def test_scale_crop_flip_keep_modalities_aligned(seed):
    torch.manual_seed(seed)
    t = segmentation_train(crop_size=(20, 28), scale_range=(0.5, 2.0), normalization={})
    out = unwrap_sample(t(block_sample()))
    assert out["rgb"].shape == (3, 20, 28) and out["depth"].shape == (3, 20, 28)
    assert out["mask"].shape == (20, 28) and out["mask"].dtype == torch.int64
    valid = out["mask"] != 255
    assert valid.any()
    # depth and mask are both resampled with nearest: identical block ids everywhere
    assert torch.equal(out["depth"][0][valid], out["mask"][valid].float())
    # padding: images 0 where the mask is ignore
    assert out["depth"][:, ~valid].eq(0).all() and out["rgb"][:, ~valid].eq(0).all()
    # rgb (bilinear) agrees in block interiors: pixels whose 3x3 neighbourhood is one block
    m = out["mask"].float()
    pad = torch.nn.functional.pad(m[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    win = torch.stack([pad[i : i + 20, j : j + 28] for i in range(3) for j in range(3)])
    interior = valid & (win.amax(0) == win.amin(0))
    if interior.any():
        torch.testing.assert_close(out["rgb"][0][interior], m[interior] / 100, atol=0.02, rtol=0)
        # normals: |x| follows the block id, y is untouched by flips
        torch.testing.assert_close(out["normal"][0][interior].abs(), m[interior] / 100, atol=0.02, rtol=0)
        torch.testing.assert_close(out["normal"][1][interior], -m[interior] / 100, atol=0.02, rtol=0)


def test_hflip_negates_normal_x_and_mirrors_everything():
    t = segmentation_train(crop_size=(24, 32), scale_range=None, hflip_p=1.0, normalization={})
    s = block_sample()
    out = unwrap_sample(t(s))
    assert torch.equal(out["mask"], s["mask"].long().flip(-1))
    assert torch.equal(out["depth"], s["depth"].as_subclass(torch.Tensor).flip(-1))
    ref = s["normal"].as_subclass(torch.Tensor).flip(-1)
    assert torch.equal(out["normal"][0], -ref[0])
    assert torch.equal(out["normal"][1:], ref[1:])
    assert (out["normal"][0] <= 0).all()  # originally x >= 0


def test_pad_uses_ignore_for_mask_and_mean_for_normalised_rgb():
    t = segmentation_train(crop_size=40, scale_range=None, hflip_p=0.0)
    out = unwrap_sample(t(block_sample(24, 32)))
    ignore = out["mask"] == 255
    assert out["rgb"].shape == (3, 40, 40) and ignore.sum() == 40 * 40 - 24 * 32
    assert out["rgb"][:, ignore].eq(0).all()  # 0 after normalisation = the ImageNet mean colour


def test_random_crop_shapes_differ_between_calls_but_stay_aligned():
    torch.manual_seed(0)
    t = segmentation_train(crop_size=8, scale_range=(1.0, 1.0), hflip_p=0.0, normalization={})
    tops = set()
    for _ in range(5):
        out = unwrap_sample(t(block_sample()))
        assert torch.equal(out["depth"][0], out["mask"].float())
        tops.add(int(out["mask"][0, 0]))
    assert len(tops) > 1


def test_eval_normalises_rgb_and_keeps_depth(nyu_root):
    plain = NYUDv2(nyu_root, "train.txt")[0]
    out = NYUDv2(nyu_root, "train.txt", transform=segmentation_eval())[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out["rgb"], (plain["rgb"] - mean) / std)
    torch.testing.assert_close(out["depth"], plain["depth"])
    assert torch.equal(out["mask"], plain["mask"])


def test_depth_normalisation_option(nyu_root):
    t = segmentation_eval(normalization={"rgb": (IMAGENET_MEAN, IMAGENET_STD), "depth": (0.5, 0.25)})
    plain = NYUDv2(nyu_root, "train.txt")[0]
    out = NYUDv2(nyu_root, "train.txt", transform=t)[0]
    torch.testing.assert_close(out["depth"], (plain["depth"] - 0.5) / 0.25)


def test_shorter_side_resize(nyu_root):
    out = NYUDv2(nyu_root, "train.txt", transform=segmentation_eval(shorter_side=24))[0]
    assert out["rgb"].shape == (3, 24, 32) and out["depth"].shape == (3, 24, 32) and out["mask"].shape == (24, 32)


def test_depth_resize_is_nearest_no_blending_of_holes():
    d = torch.zeros(3, 8, 8)
    d[:, :, 4:] = 2.0
    d[:, 0, 0] = 0.0
    out = segmentation_eval(shorter_side=13, normalization={})({"depth": Depth(d)})["depth"]
    assert set(out.unique().tolist()) <= {0.0, 2.0}


def test_normalize_rejects_bad_stats():
    with pytest.raises(ValueError, match="std of 'depth' must be positive"):
        NormalizeModalities({"depth": (0.0, 0.0)})
    with pytest.raises(ValueError, match="3 channels but mean/std have 2/2"):
        NormalizeModalities({"rgb": ((0, 0), (1, 1))})({"rgb": torch.zeros(3, 2, 2)})


def test_translation_pipeline_range():
    torch.manual_seed(0)
    s = {
        "reshading": tv_tensors.Image(torch.rand(3, 40, 40)),
        "normal": NormalMap(torch.rand(3, 40, 40) * 2 - 1),
        "target": tv_tensors.Image(torch.ones(3, 40, 40)),
    }
    out = unwrap_sample(translation_train(load_size=36, crop_size=32)(s))
    assert out["target"].shape == (3, 32, 32) and torch.allclose(out["target"], torch.ones(()))
    assert out["reshading"].min() >= -1 and out["reshading"].max() <= 1
    assert out["normal"].min() >= -1.0001 and out["normal"].max() <= 1.0001


def test_full_pipeline_on_dataset_with_mismatching_aspect(tmp_path):
    root = tmp_path / "nyu"
    for d, arr in (
        ("rgb", np.zeros((30, 50, 3), np.uint8)),
        ("depth", np.full((30, 50), 5000, np.uint16)),
        ("masks", np.full((30, 50), 3, np.uint8)),
    ):
        write_png(root / d / "000001.png", arr)
    (root / "train.txt").write_text("rgb/000001.png\tmasks/000001.png\tdepth/000001.png\n")
    torch.manual_seed(1)
    ds = NYUDv2(root, "train.txt", transform=segmentation_train(64, shorter_side=40))
    out = ds[0]
    assert out["rgb"].shape == (3, 64, 64)
    assert set(out["mask"].unique().tolist()) <= {3, 255}
    assert torch.equal(out["depth"][0] == 1.0, out["mask"] == 3)


def test_shorter_side_and_random_scale_in_one_resize():
    from cen.data.transforms import RandomScale

    torch.manual_seed(0)
    t = RandomScale((1.0, 1.0), shorter_side=12)
    out = t(block_sample(24, 32))
    assert out["mask"].shape == (12, 16) and out["depth"].shape == (3, 12, 16)
    sizes = {tuple(RandomScale((0.5, 2.0), shorter_side=12)(block_sample(24, 32))["mask"].shape) for _ in range(10)}
    assert all(6 <= h <= 24 and w == round(h * 4 / 3) or abs(w - h * 4 / 3) <= 1 for h, w in sizes)
    assert len(sizes) > 1
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 1.0))
