"""Any set of modalities in the NYUDv2 layout: the generator's extra folders, kinds, transforms, check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cen.cli.main import main
from cen.data import NYUDv2
from cen.data.constants import IMAGENET_MEAN, IMAGENET_STD, REFERENCE_DEPTH_SCALE
from cen.data.kinds import infer_kind
from cen.data.synth import NUM_CLASSES, generate
from cen.data.synth import sensor as synth_sensor
from cen.data.synth.layouts import NYUDV2_EXTRA, render_sample, sample_rng
from cen.data.synth.render import render
from cen.data.synth.scene import sample_scene
from cen.data.transforms import NormalizeModalities, default_normalization, segmentation_eval, segmentation_train
from cen.data.tvtensors import Depth, NormalMap, wrap

MODS = ("rgb", "depth", "normal", "shading", "texture")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes") / "s"
    generate(root, 6, height=24, width=32, seed=2, progress=False)
    return root


def test_extra_modalities_keep_the_bytes_of_rgb_depth_and_masks():
    """The version-2 recipe, replayed here: rgb, depth and the mask come from one random
    stream, and the new outputs (normal, shading, texture) draw nothing from it."""
    for index in range(3):
        rng = sample_rng(4, index)
        scene = sample_scene(rng, 24, 32)
        buf = render(scene)
        noisy, valid = synth_sensor.sensor_depth(buf["depth"], rng)
        rgb = synth_sensor.sensor_rgb(buf["albedo"], buf["shading"], scene.exposure, rng)
        got = render_sample(4, index, 24, 32)
        assert np.array_equal(got["rgb"], rgb)
        assert np.array_equal(got["depth"], synth_sensor.encode_depth_nyudv2(noisy, valid))
        assert np.array_equal(got["mask"], buf["label"])
        assert np.array_equal(got["shading"], synth_sensor.encode_unit(buf["shading"]))


def test_generated_layout_has_every_modality_and_camera_json(scenes):
    for m in NYUDV2_EXTRA:
        assert (scenes / m / "000000.png").is_file()
    cam = json.loads((scenes / "camera.json").read_text())
    assert cam["depth_scale"] == REFERENCE_DEPTH_SCALE and len(cam["intrinsics"]) == 6
    fx, fy, cx, cy = cam["intrinsics"]["000003.png"]
    assert fx == fy and 0.85 * 32 < fx < 0.95 * 32 and (cx, cy) == (15.5, 11.5)
    # the taskonomy normal and edge domains are the same files as the NYUDv2 layout's
    assert (scenes / "normal" / "000002.png").read_bytes() == (
        scenes / "taskonomy" / "normal" / "point_2_view_0_domain_normal.png"
    ).read_bytes()


def test_any_modalities_are_decoded_by_kind(scenes):
    ds = NYUDv2(scenes, "train.txt", modalities=MODS, num_classes=NUM_CLASSES)
    assert ds.kinds == {"rgb": "image", "depth": "depth", "normal": "normal", "shading": "image", "texture": "image"}
    s = ds[1]
    assert list(s) == [*MODS, "mask"] and all(s[m].shape == (3, 24, 32) for m in MODS)
    n = s["normal"]
    assert n.min() >= -1 and n.max() <= 1
    assert torch.allclose(n.norm(dim=0), torch.ones(24, 32), atol=0.02)  # 8-bit unit normals
    raw = np.asarray(Image.open(scenes / "texture" / ds.files(1)["texture"].split("/")[-1]))
    assert raw.dtype == np.uint16 and torch.allclose(s["texture"][0], torch.from_numpy(raw / 65535.0).float())
    assert torch.equal(s["shading"][0], s["shading"][2])  # grey, replicated


def test_unknown_modality_lists_the_ones_the_data_set_has(scenes):
    with pytest.raises(
        ValueError,
        match=r"modality 'lidar' is not in the data set .*it has: rgb, depth, normal, "
        r"shading, texture$",
    ):
        NYUDv2(scenes, "train.txt", modalities=("rgb", "lidar"), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="it has: rgb, depth, normal"):
        NYUDv2(scenes, "train.txt", modalities=("masks",), num_classes=NUM_CLASSES)


def test_kinds_from_names():
    assert [infer_kind(m) for m in ("rgb", "depth", "depth_raw", "normal", "hha", "shading", "HHA_v2")] == [
        "image",
        "depth",
        "depth",
        "normal",
        "hha",
        "image",
        "hha",
    ]


def test_flip_negates_normal_x_and_mirrors_every_modality(scenes):
    plain = NYUDv2(scenes, "val.txt", modalities=MODS, num_classes=NUM_CLASSES, transform=segmentation_eval())[0]
    flip = segmentation_train((24, 32), scale_range=None, hflip_p=1.0)
    flipped = NYUDv2(scenes, "val.txt", modalities=MODS, num_classes=NUM_CLASSES, transform=flip)[0]
    for m in ("rgb", "depth", "shading", "texture"):
        assert torch.allclose(flipped[m], plain[m].flip(-1))
    assert torch.allclose(flipped["normal"][0], -plain["normal"][0].flip(-1))
    assert torch.allclose(flipped["normal"][1:], plain["normal"][1:].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))


def test_default_normalisation_is_per_kind(scenes):
    raw = NYUDv2(scenes, "val.txt", modalities=MODS, num_classes=NUM_CLASSES)[0]
    out = NYUDv2(scenes, "val.txt", modalities=MODS, num_classes=NUM_CLASSES, transform=segmentation_eval())[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for m in ("rgb", "shading", "texture"):  # every image kind, whatever its name
        assert torch.allclose(out[m], (raw[m] - mean) / std, atol=1e-6)
    assert torch.equal(out["depth"], raw["depth"]) and torch.equal(out["normal"], raw["normal"])
    # a sample key wins over its kind; plain tensors take the kind of their name
    norm = NormalizeModalities({**default_normalization(), "shading": (0.5, 0.25)})
    x = torch.rand(3, 4, 4)
    got = norm({"shading": wrap(x, "image"), "rgb": x, "depth": wrap(x, "depth")})
    assert torch.allclose(got["shading"], (x - 0.5) / 0.25) and torch.allclose(got["rgb"], (x - mean) / std)
    assert isinstance(got["depth"], Depth) and torch.equal(got["depth"].as_subclass(torch.Tensor), x)
    assert isinstance(NormalizeModalities({})({"n": wrap(x, "normal")})["n"], NormalMap)
    with pytest.raises(ValueError, match="'@radar' names no modality kind"):
        NormalizeModalities({"@radar": (0.0, 1.0)})


def test_check_reads_every_modality_folder_by_kind(scenes, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(scenes, root)
    assert main(["data", "check", str(root), "--layout", "nyudv2", "--quiet"]) == 0
    # an 8-bit normal map as 16-bit, and a truncated shading image: each one problem naming the file
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(root / "normal" / "000000.png")
    (root / "shading" / "000001.png").write_bytes((root / "shading" / "000001.png").read_bytes()[:40])
    capsys.readouterr()
    assert main(["data", "check", str(root), "--layout", "nyudv2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "normal/000000.png: 16-bit image; expected 8-bit for normal" in out
    assert "shading/000001.png" in out and "cannot decode" in out
    assert main(["data", "check", str(root), "--layout", "nyudv2", "--modalities", "hha", "--quiet"]) == 1
    assert "modality 'hha' is not in the data set" in capsys.readouterr().out


def test_three_modality_recipes_load_and_read_their_data(tmp_path):
    from pathlib import Path

    from cen.tasks import build_task
    from cen.train.config import load_config

    from .conftest import make_nyudv2

    configs = Path(__file__).resolve().parents[2] / "configs"
    scenes = load_config(configs / "scenes_rgb_depth_normal.yaml")
    assert list(scenes.modalities) == ["rgb", "depth", "normal"] and scenes.data.dataset == "scenes"
    nyu = load_config(
        configs / "nyudv2_r101_rgb_depth_hha.yaml",
        [f"data.root={tmp_path}", "model.pretrained=null", "model.bn_stats=train"],
    )
    assert list(nyu.modalities) == ["rgb", "depth", "hha"] and nyu.model.backbone == "resnet101"
    make_nyudv2(tmp_path, n=3)
    with pytest.raises(ValueError, match="modality 'hha' is not in the data set .*cen data hha"):
        build_task(nyu).build_datasets(splits=("test",))
    assert (
        main(["data", "hha", str(tmp_path), "--intrinsics", "14,14,7.5,5.5", "--depth-scale", "2e-4", "--quiet"]) == 0
    )
    sample = build_task(nyu).build_datasets(splits=("test",))["test"][0]
    assert list(sample) == ["rgb", "depth", "hha", "mask"]  # resized as the recipe says (shorter side 350)
    assert sample["hha"].shape == sample["rgb"].shape == (3, 350, 466) and sample["mask"].shape == (350, 466)
