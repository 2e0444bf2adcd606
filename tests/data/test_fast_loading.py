"""The torchvision.io loading path computes what the PIL + float-transform path computes.

Today's path is ``MultiModalDataset`` (PIL decode, float decoders, the v2 steps one by one);
the loaders' path is ``RawDecodingDataset`` (torchvision.io decode, ``SegmentationTrain.from_raw``
on integer pixels). Both get the same ``torch.manual_seed`` before each sample, so they draw
the same scale, crop and flip.

Tolerance, only for 8-bit bilinear images with ``uint8_resize=True`` (the default): torchvision's
uint8 resize rounds its horizontal and its vertical pass to 8 bits (at most 0.5 level each,
carried through the second pass's convex weights) and quantises its weights to fixed point
(measured < 0.004 level over noise images at scales 0.3-1.6), so a pixel is at most
``UINT8_LEVELS`` = 1.01 levels of 1/255 away from the float resize before normalisation: as
much as the 8-bit file's own rounding. Depth, masks and every output with ``uint8_resize=False``
are compared bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cen.data import NYUDv2
from cen.data.base import MultiModalDataset
from cen.data.constants import IMAGENET_STD
from cen.data.synth import NUM_CLASSES, generate
from cen.data.tensor_images import read_image_tensor
from cen.data.transforms import segmentation_train
from tests.data.conftest import write_png

UINT8_LEVELS = 1.01
#: The reference recipe at NYUDv2 size; the small scenes use the same scales on a smaller crop.
NYU = {"crop": 500, "shorter_side": 350}
SMALL = {"crop": 44, "shorter_side": 40}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Generated scenes at 48x64 (rgb, depth in 1/5000 m, masks, normal, shading, texture)."""
    root = tmp_path_factory.mktemp("scenes")
    generate(root, 4, height=48, width=64, seed=3, splits=(1.0, 0.0, 0.0), progress=False)
    return root


@pytest.fixture(scope="module")
def nyu_size(tmp_path_factory) -> Path:
    """Two 480x640 samples: textured RGB (noise on a ramp), 16-bit depth with holes, labels with ignore."""
    root = tmp_path_factory.mktemp("nyu_size")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:480, 0:640]
    lines = []
    for i in range(2):
        name = f"{i:06d}.png"
        ramp = (xx * 0.3 + yy * 0.2)[..., None] + np.array([0, 60, 120])
        rgb = (ramp + rng.normal(0, 25, (480, 640, 3))) % 256
        write_png(root / "rgb" / name, rgb.astype(np.uint8))
        depth = (5000 + 30 * xx + rng.integers(0, 2000, (480, 640))).astype(np.uint16)
        depth[rng.random((480, 640)) < 0.05] = 0
        write_png(root / "depth" / name, depth)
        mask = ((xx // 37 + yy // 29) % NUM_CLASSES).astype(np.uint8)
        mask[rng.random((480, 640)) < 0.1] = 255
        write_png(root / "masks" / name, mask)
        lines.append(f"rgb/{name}\tmasks/{name}\tdepth/{name}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def pipelines(root: Path, recipe: dict, modalities=("rgb", "depth"), uint8_resize: bool = True, **kwargs):
    """(today's dataset, the loaders' dataset) with the same files, decoders and transform."""
    transform = segmentation_train(
        recipe["crop"], scale_range=(0.5, 2.0), shorter_side=recipe["shorter_side"], uint8_resize=uint8_resize, **kwargs
    )
    fast = NYUDv2(root, "train.txt", modalities=modalities, num_classes=NUM_CLASSES, transform=transform)
    return MultiModalDataset(fast.entries, fast.decoders, transform), fast


def draw(dataset, index: int, seed: int) -> dict:
    torch.manual_seed(seed)
    return dataset[index]


def assert_same(old: dict, new: dict, kinds: dict[str, str], uint8_resize: bool) -> None:
    assert list(old) == list(new)
    for key in old:
        assert new[key].dtype == old[key].dtype and new[key].shape == old[key].shape, key
        if not uint8_resize or kinds.get(key) in ("depth", None):  # None: the mask
            assert torch.equal(new[key], old[key]), key
            continue
        diff = (new[key] - old[key]).abs()
        if kinds[key] == "normal":  # x / 127.5 - 1, not normalised
            bound = torch.full((3, 1, 1), UINT8_LEVELS / 127.5)
        else:  # x / 255, then ImageNet normalisation divides by std
            bound = UINT8_LEVELS / 255 / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        assert (diff <= bound + 1e-6).all(), f"{key}: {(diff / bound).max():.3f} x the bound"
        assert diff.mean() <= 0.5 * bound.max(), key  # rounding, not an offset


@pytest.mark.parametrize("uint8_resize", [False, True])
def test_small_scenes_match_todays_pipeline(scenes, uint8_resize):
    mods = ("rgb", "depth", "normal", "shading")
    old, new = pipelines(scenes, SMALL, mods, uint8_resize)
    _, unflipped = pipelines(scenes, SMALL, mods, uint8_resize, hflip_p=0.0)  # same scale and crop draws
    flipped, padded = set(), set()
    for index in range(len(new)):
        for seed in range(6):
            a, b = draw(old, index, seed), draw(new, index, seed)
            assert_same(a, b, new.kinds, uint8_resize)
            assert b["rgb"].shape == (3, 44, 44) and b["mask"].shape == (44, 44)
            plain = draw(unflipped, index, seed)["mask"]
            flipped.add(not torch.equal(b["mask"], plain))
            padded.add(bool((b["mask"] == 255).all(0).any()))  # a whole padded column
    assert flipped == {False, True} and padded == {False, True}  # both cases were compared


def test_nyudv2_size_matches_todays_pipeline(nyu_size):
    for uint8_resize in (False, True):
        old, new = pipelines(nyu_size, NYU, uint8_resize=uint8_resize)
        shapes = set()
        for seed in (0, 1, 2):  # three draws of the scale (0.5-2.0 x 350/480), of the crop and the flip
            a, b = draw(old, seed % 2, seed), draw(new, seed % 2, seed)
            assert_same(a, b, new.kinds, uint8_resize)
            shapes.add(int((b["mask"] != 255).sum()))
        assert len(shapes) > 1


def test_other_recipes_and_normalisation_match(scenes):
    """No random scale (one fixed resize), no flip, per-dataset depth normalisation, odd crop."""
    cases = [
        {"scale_range": None, "shorter_side": 40, "hflip_p": 0.5},
        {"scale_range": None, "shorter_side": None, "hflip_p": 0.0},
        {
            "scale_range": (0.5, 2.0),
            "shorter_side": None,
            "hflip_p": 1.0,
            "normalization": {"depth": (0.5, 2.0), "@image": ([0.5] * 3, [0.25] * 3)},
        },
    ]
    for kwargs in cases:
        t = segmentation_train((30, 50), uint8_resize=False, **kwargs)
        new = NYUDv2(scenes, "train.txt", modalities=("rgb", "depth", "normal"), num_classes=NUM_CLASSES, transform=t)
        old = MultiModalDataset(new.entries, new.decoders, t)
        for seed in range(4):
            assert_same(draw(old, seed % len(new), seed), draw(new, seed % len(new), seed), new.kinds, False)


def test_comparison_sees_a_different_scale_crop_or_flip(scenes):
    """The checks above can fail: a different draw (other seed) or a missing flip is caught."""
    old, new = pipelines(scenes, SMALL)
    a = draw(old, 0, 0)
    with pytest.raises(AssertionError):
        assert_same(a, draw(new, 0, 1), new.kinds, True)
    flipped = {k: v.flip(-1) for k, v in draw(new, 0, 0).items()}
    with pytest.raises(AssertionError):
        assert_same(a, flipped, new.kinds, True)


def test_same_samples_without_transform_and_with_eval_transform(scenes):
    from cen.data.transforms import segmentation_eval

    for transform in (None, segmentation_eval(shorter_side=40)):
        new = NYUDv2(
            scenes, "train.txt", modalities=("rgb", "depth", "texture"), num_classes=NUM_CLASSES, transform=transform
        )
        old = MultiModalDataset(new.entries, new.decoders, transform)
        for i in range(len(new)):
            assert_same(old[i], new[i], new.kinds, False)
            assert new[i]["rgb"].is_contiguous() and new[i]["depth"].is_contiguous()


def test_tensor_reader_gives_pils_values_for_every_png_kind(tmp_path):
    from PIL import Image

    from cen.data.images import read_image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    images = {
        "L": Image.fromarray(grey),
        "RGB": Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
        "RGBA": Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
        "LA": Image.fromarray(grey).convert("LA"),
        "I16": Image.fromarray(rng.integers(0, 65536, (5, 7)).astype(np.uint16)),
        "P": Image.fromarray(grey % 7).convert("P"),
        "1": Image.fromarray(grey > 127),
    }
    for name, img in images.items():
        path = tmp_path / f"{name}.png"
        img.save(path)
        arr = read_image(path)
        got = read_image_tensor(path)
        assert got.dtype == torch.from_numpy(arr).dtype, name
        assert np.array_equal(got.permute(1, 2, 0).numpy().reshape(arr.shape), arr), name
    Image.fromarray(grey).save(tmp_path / "trns.png", transparency=3)
    assert np.array_equal(read_image_tensor(tmp_path / "trns.png")[0].numpy(), read_image(tmp_path / "trns.png"))
    Image.fromarray(grey).save(tmp_path / "grey.jpg")  # not a PNG: PIL decodes it, as before
    assert np.array_equal(read_image_tensor(tmp_path / "grey.jpg")[0].numpy(), read_image(tmp_path / "grey.jpg"))


def test_errors_describe_the_file_as_before(nyu_root):
    """The two-step decoders word their errors as the array decoders did (shape as H, W[, C])."""
    from cen.data.decode import MaskDecoder, NormalDecoder

    write_png(nyu_root / "masks" / "000001.png", np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"masks/000001\.png: label image has shape \(12, 16, 3\); expected a single"):
        NYUDv2(nyu_root, "train.txt")[0]
    write_png(nyu_root / "masks" / "000002.png", np.full((12, 16), 255, np.uint8))
    assert (NYUDv2(nyu_root, "train.txt")[1]["mask"] == 255).all()  # all ignore is fine
    grey = read_image_tensor(nyu_root / "masks" / "000002.png")
    with pytest.raises(ValueError, match=r"x\.png: normal map is uint8 with shape \(12, 16\); expected an 8-bit RGB"):
        NormalDecoder().raw(grey, Path("x.png"))
    with pytest.raises(ValueError, match=r"label value\(s\) 255 out of range; expected class ids 0\.\.3 or 7"):
        MaskDecoder(4, ignore_index=7).raw(grey, Path("y.png"))


def test_unreadable_files_are_value_errors_naming_them(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    write_png(tmp_path / "full.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:45])
    for name in ("empty.png", "cut.png"):
        with pytest.raises(ValueError, match=rf"{name}: cannot decode image .*expected a readable PNG/JPEG") as err:
            read_image_tensor(tmp_path / name)
        assert "\n" not in str(err.value)
