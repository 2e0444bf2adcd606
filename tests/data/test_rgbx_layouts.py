"""The layouts of the RGB-X methods: RGB-X packs (NYUDv2, SUN RGB-D), MFNet and DELIVER.

Values as loaded, the list formats, the bad inputs of the issue (one-line errors naming the file
and what was expected) and ``cen data check --layout rgbx|mfnet|deliver``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cen.cli.main import main
from cen.data.decoded_cache import DecodedCache
from cen.data.deliver import DELIVER, case_of
from cen.data.layouts import LAYOUT_INFO, voc_palette
from cen.data.mfnet import MFNet
from cen.data.rgbx import RGBXPack
from cen.data.transforms import segmentation_train
from cen.tasks.segmentation.visualize import palette
from tests.data.layout_fixtures import H, W, _save, make_deliver, make_mfnet, make_rgbx


def _png(path):
    return np.array(Image.open(path))


# -- RGB-X packs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_rgbx_values_depth_bits_and_label_shift(tmp_path, bits):
    root = make_rgbx(tmp_path / "pack", depth_bits=bits, hha=True)
    ds = RGBXPack(root, "train.txt", ("rgb", "depth", "hha"), image_size=(H, W))
    assert len(ds) == 4 and ds.kinds == {"rgb": "image", "depth": "depth", "hha": "hha"}
    s = ds[0]
    assert {k: tuple(v.shape) for k, v in s.items()} == {
        "rgb": (3, H, W),
        "depth": (3, H, W),
        "hha": (3, H, W),
        "mask": (H, W),
    }
    raw_depth = _png(root / "Depth" / "1.png").astype(np.float64)
    want = raw_depth / 255.0 if bits == 8 else raw_depth * 1e-3  # 8-bit: relative; 16-bit: mm -> m
    assert np.allclose(s["depth"][0].numpy(), want, atol=1e-6)
    assert torch.equal(s["depth"][0], s["depth"][2]) and float(s["depth"][0, 0, 0]) == 0.0  # the hole stays 0
    label = _png(root / "Label" / "1.png").astype(np.int64)
    assert torch.equal(s["mask"], torch.from_numpy(np.where(label == 0, 255, label - 1)))
    assert s["mask"][0, :3].tolist() == [255, 0, 39]  # stored 0, 1, 40
    assert ds.classes[0] == "wall" and len(ds.classes) == 40 and ds.palette == voc_palette(40)


def test_rgbx_sunrgbd_labels_folder_bare_names_and_extra_columns(tmp_path):
    root = make_rgbx(tmp_path / "sun", num_classes=37, labels="labels", n_train=2, n_test=1)
    (root / "bare.txt").write_text("1\n2 some other column\n")
    ds = RGBXPack(root, "bare.txt", ("rgb", "depth"), num_classes=37)
    assert [str(p.relative_to(root)) for p in ds.entries[1].files.values()] == [
        "RGB/2.jpg",
        "Depth/2.png",
        "labels/2.png",
    ]
    assert ds[0]["mask"][0, :3].tolist() == [255, 0, 36] and len(ds.classes) == 37
    assert RGBXPack(root, "train.txt", "rgb", num_classes=37).entries[0].text == "RGB/1.jpg labels/1.png"


def test_rgbx_bad_inputs_name_the_file_and_expectation(tmp_path):
    root = make_rgbx(tmp_path / "pack")
    (root / "bad.txt").write_text("RGB/1.jpg\nDepth/2.png\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: malformed line 'Depth/2.png': expected the RGB file"):
        RGBXPack(root, "bad.txt")
    (root / "Depth" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Depth/3\.png: no such file \(depth\), named by .*train\.txt:3"):
        RGBXPack(root, "train.txt")
    label = np.full((H, W), 41, np.uint8)
    _save(root / "Label" / "5.png", label)
    with pytest.raises(ValueError, match=r"Label/5\.png: label value\(s\) 41 out of range; expected 0 \(unlabelled\)"):
        RGBXPack(root, "test.txt")[0]
    _save(root / "Depth" / "6.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"Depth/6\.png: depth image is uint8 with shape \(32, 48, 3\); expected a single"
    ):
        RGBXPack(root, "test.txt")[1]
    with pytest.raises(ValueError, match=r"RGB/6\.jpg is 32x48 \(HxW\); expected 480x640 \(data\.image_size\)"):
        RGBXPack(root, "test.txt", image_size=(480, 640))[1]
    (root / "Label").rename(root / "Labels_elsewhere")
    with pytest.raises(FileNotFoundError, match="no label folder; expected Label/ or labels/"):
        RGBXPack(root, "test.txt")


# -- MFNet ------------------------------------------------------------------------------------------------


def test_mfnet_splits_one_4_channel_png_into_rgb_and_thermal(tmp_path):
    root = make_mfnet(tmp_path / "mfnet")
    ds = MFNet(root, "train.txt", image_size=(H, W))
    assert ds.kinds == {"rgb": "image", "thermal": "thermal"} and ds.classes[0] == "unlabelled"
    rgbt = _png(root / "images" / "00001D.png")
    assert rgbt.shape == (H, W, 4)
    s = ds[0]
    assert torch.allclose(s["rgb"], torch.from_numpy(rgbt[..., :3]).permute(2, 0, 1) / 255.0)
    thermal = torch.from_numpy(rgbt[..., 3]).float() / 255.0
    assert all(torch.allclose(s["thermal"][c], thermal) for c in range(3))  # replicated to 3 channels
    label = torch.from_numpy(_png(root / "labels" / "00001D.png").astype(np.int64))
    assert torch.equal(s["mask"], label) and s["mask"][0, :2].tolist() == [0, 8]  # 0 is a class, not ignored


def test_mfnet_cache_keeps_the_fourth_channel(tmp_path):
    root = make_mfnet(tmp_path / "mfnet")
    plain = MFNet(root, "val.txt")[1]
    cached = MFNet(root, "val.txt", cache_dir=tmp_path / "cache")
    for _ in range(2):  # fill, then read the cache
        got = cached[1]
        assert all(torch.equal(got[k], plain[k]) for k in plain)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2  # the RGB-T image (once) and the labels
    # the default reader drops alpha: it must not share entries with MFNet's
    image = root / "images" / "00006N.png"
    assert DecodedCache(tmp_path / "cache").read(image).shape[0] == 3


def test_mfnet_bad_inputs(tmp_path):
    root = make_mfnet(tmp_path / "mfnet")
    _save(root / "images" / "00002N.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images/00002N\.png: image is uint8 with shape \(32, 48, 3\); expected a "
                       r"4-channel PNG \(R, G, B, thermal"):  # fmt: skip
        MFNet(root, "train.txt")[1]
    label = np.zeros((H, W), np.uint8)
    label[5, 5] = 9
    _save(root / "labels" / "00003D.png", label)
    with pytest.raises(
        ValueError, match=r"labels/00003D\.png: label value\(s\) 9 out of range; expected class ids 0\.\.8"
    ):
        MFNet(root, "train.txt")[2]
    with pytest.raises(ValueError, match=r"images/00001D\.png is 32x48 \(HxW\); expected 480x640"):
        MFNet(root, "train.txt", image_size=(480, 640))[0]
    with pytest.raises(ValueError, match="MFNet has the modalities"):
        MFNet(root, "train.txt", modalities=("rgb", "depth"))
    with pytest.raises(ValueError, match="MFNet has 9 classes"):
        MFNet(root, "train.txt", num_classes=8)


# -- DELIVER --------------------------------------------------------------------------------------------------


def test_deliver_four_modalities_labels_and_eventlowres(tmp_path):
    root = make_deliver(tmp_path / "DELIVER")
    ds = DELIVER(root, "train", image_size=(H, W))
    assert len(ds) == 4 and ds.kinds == {"rgb": "image", "depth": "depth", "event": "event", "lidar": "lidar"}
    assert [e.text for e in ds.entries][:2] == [
        "img/cloud/train/MAP_1_point1/000050_rgb_front.png",
        "img/cloud/train/MAP_2_point7_eventlowres/000100_rgb_front.png",
    ]
    s = ds[0]
    assert {k: tuple(v.shape) for k, v in s.items()} == {**{m: (3, H, W) for m in ds.kinds}, "mask": (H, W)}
    stored = _png(root / "semantic/cloud/train/MAP_1_point1/000050_semantic_front.png")[..., 0].astype(np.int64)
    assert torch.equal(s["mask"], torch.from_numpy(np.where((stored == 0) | (stored == 255), 255, stored - 1)))
    assert s["mask"][0, :3].tolist() == [255, 0, 24] and int(s["mask"][1, 0]) == 255
    lidar = _png(root / "lidar/cloud/train/MAP_1_point1/000050_lidar_front.png")
    assert torch.allclose(s["lidar"][1], torch.from_numpy(lidar).float() / 255)
    # the event frame of the event-low-resolution scene is half size on disk, upsampled (nearest) to the frame
    small = _png(root / "event/cloud/train/MAP_2_point7_eventlowres/000100_event_front.png")
    assert small.shape == (H // 2, W // 2, 3)
    event = ds[1]["event"]
    assert torch.allclose(
        event, torch.from_numpy(small).permute(2, 0, 1).float().repeat_interleave(2, 1).repeat_interleave(2, 2) / 255
    )


def test_deliver_conditions_cases_and_hha(tmp_path):
    root = make_deliver(tmp_path / "DELIVER")
    assert case_of("MAP_2_point7_eventlowres") == "eventlowres" and case_of("MAP_1_point1") == "normal"
    night = DELIVER(root, "train", ("rgb", "hha"), conditions=["night"], cases=["normal"])
    assert [e.text for e in night.entries] == ["img/night/train/MAP_1_point1/000250_rgb_front.png"]
    assert str(night.entries[0].files["hha"]).endswith("hha/night/train/MAP_1_point1/000250_depth_front.png")
    assert night.kinds["hha"] == "hha" and night[0]["hha"].shape == (3, H, W)
    with pytest.raises(ValueError, match=r"DELIVER cases \['snow'\]: expected some of"):
        DELIVER(root, "train", cases=["snow"])
    with pytest.raises(ValueError, match=r"DELIVER split 'dev' unknown"):
        DELIVER(root, "dev")
    with pytest.raises(ValueError, match=r"no DELIVER frame img/<condition>/test/<scene>/<frame>_rgb_front\.png"):
        DELIVER(root, "test", conditions=["fog"])


def test_deliver_bad_inputs(tmp_path):
    root = make_deliver(tmp_path / "DELIVER")
    frame = "cloud/val/MAP_3_point2/000150"
    (root / f"lidar/{frame}_lidar_front.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        DELIVER(root, "val")
    msg = str(err.value)
    assert f"lidar/{frame}_lidar_front.png: no such file (lidar)" in msg and f"img/{frame}_rgb_front.png" in msg
    assert len(DELIVER(root, "val", ("rgb", "depth", "event"))) == 2  # without LiDAR the frame is complete
    label = np.zeros((H, W, 3), np.uint8)
    label[3, 3, 0] = 26
    _save(root / f"semantic/{frame}_semantic_front.png", label)
    with pytest.raises(ValueError, match=r"_semantic_front\.png: label value\(s\) 26 out of range; expected 0 or 255"):
        DELIVER(root, "val", ("rgb",))[0]
    # a smaller event frame outside the eventlowres case is not resized: a size error
    _save(root / "event/night/val/MAP_3_point2/000350_event_front.png", np.zeros((H // 2, W // 2), np.uint8))
    with pytest.raises(
        ValueError, match=r"000350_event_front\.png is 16x24 \(HxW\) but .*000350_rgb_front\.png is 32x48"
    ):
        DELIVER(root, "val", ("rgb", "event"))[1]


def test_layout_palettes_match_the_prediction_images():
    assert LAYOUT_INFO["rgbx_nyudv2"].palette == tuple(map(tuple, palette(41)[:40].tolist()))
    assert [i.num_classes for i in LAYOUT_INFO.values()] == [40, 37, 9, 25]
    assert all(len(i.palette) == i.num_classes for i in LAYOUT_INFO.values())


def test_training_pipeline_runs_on_every_layout(tmp_path):
    layouts = [
        RGBXPack(make_rgbx(tmp_path / "a"), "train.txt", transform=segmentation_train(24)),
        MFNet(make_mfnet(tmp_path / "b"), "train.txt", transform=segmentation_train(24)),
        DELIVER(make_deliver(tmp_path / "c"), "train", transform=segmentation_train(24)),
    ]
    for ds in layouts:
        s = ds[1]
        assert all(tuple(v.shape) == (3, 24, 24) for k, v in s.items() if k != "mask") and s["mask"].shape == (24, 24)


# -- cen data check ------------------------------------------------------------------------------------------------


def test_check_each_layout_names_the_first_bad_file_and_line(tmp_path, capsys):
    pack, mfnet, deliver = make_rgbx(tmp_path / "pack"), make_mfnet(tmp_path / "mf"), make_deliver(tmp_path / "dl")
    for root, layout in ((pack, "rgbx"), (mfnet, "mfnet"), (deliver, "deliver")):
        assert main(["data", "check", str(root), "--layout", layout, "--quiet", "--image-size", "32x48"]) == 0
    capsys.readouterr()
    (pack / "Depth" / "2.png").unlink()
    assert main(["data", "check", str(pack), "--layout", "rgbx", "--quiet"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "Depth/2.png: no such file" in out[0] and "train.txt:2 ('RGB/2.jpg Label/2.png')" in out[0]
    _save(mfnet / "images" / "00007D.png", np.zeros((H, W, 3), np.uint8))
    assert main(["data", "check", str(mfnet), "--layout", "mfnet", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "images/00007D.png: image is uint8 with shape (32, 48, 3); expected a 4-channel PNG" in out
    assert "test.txt:1 ('00007D')" in out
    assert (
        main(
            [
                "data",
                "check",
                str(mfnet),
                "--layout",
                "mfnet",
                "--quiet",
                "--list",
                "val.txt",
                "--image-size",
                "480x640",
            ]
        )
        == 1
    )
    assert "images/00005D.png is 32x48 (HxW); expected 480x640" in capsys.readouterr().out
    (deliver / "event/cloud/test/MAP_4_point3/000200_event_front.png").unlink()
    assert main(["data", "check", str(deliver), "--layout", "deliver", "--quiet", "--list", "test"]) == 1
    out = capsys.readouterr().out
    assert "000200_event_front.png: no such file" in out and "DELIVER split 'test'" in out
    assert main(["data", "check", str(deliver), "--layout", "deliver", "--quiet", "--image-size", "480"]) == 2
    assert "--image-size '480': expected HxW" in capsys.readouterr().err
