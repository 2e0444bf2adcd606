"""Loading the exact layouts back: values, dtypes, shapes, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cen.data import SUNRGBD, FolderDataset, NYUDv2, Taskonomy, mean_std
from tests.data.conftest import H, W


def test_nyudv2_reads_reference_layout(nyu_root):
    ds = NYUDv2(nyu_root, "train.txt")
    assert len(ds) == 3 and ds.num_classes == 40
    s = ds[1]
    assert set(s) == {"rgb", "depth", "mask"}
    rgb = np.array(Image.open(nyu_root / "rgb" / "000002.png"))
    depth = np.array(Image.open(nyu_root / "depth" / "000002.png")).astype(np.float64)
    mask = np.array(Image.open(nyu_root / "masks" / "000002.png"))
    assert s["rgb"].dtype == torch.float32 and s["rgb"].shape == (3, H, W)
    torch.testing.assert_close(s["rgb"], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    # reference depth: raw (units of 1/5000 m) x 1/5000 = metres, replicated to 3 channels; holes stay 0
    assert s["depth"].shape == (3, H, W)
    expected = torch.from_numpy(depth / 5000).float()
    for c in range(3):
        torch.testing.assert_close(s["depth"][c], expected)
    assert s["depth"][:, 0, 0].eq(0).all()
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (H, W)
    assert torch.equal(s["mask"], torch.from_numpy(mask).long())
    assert s["mask"][-1, -1] == 255


def test_nyudv2_list_path_absolute_or_relative_and_modalities(nyu_root, tmp_path):
    ds = NYUDv2(nyu_root, nyu_root / "test.txt", modalities=("depth",), depth_scale=1e-3, depth_channels=1)
    s = ds[0]
    assert set(s) == {"depth", "mask"} and s["depth"].shape == (1, H, W)
    raw = np.array(Image.open(nyu_root / "depth" / "000001.png")).astype(np.float32)
    torch.testing.assert_close(s["depth"][0], torch.from_numpy(raw) / 1000)
    assert ds.files(0)["depth"].endswith("depth/000001.png")


def test_sunrgbd_defaults_to_37_classes(tmp_path):
    from tests.data.conftest import make_nyudv2

    root = make_nyudv2(tmp_path / "sun", num_classes=37)
    assert SUNRGBD(root, "train.txt").num_classes == 37
    assert len(SUNRGBD(root, "train.txt")[0]) == 3


def test_taskonomy_domains(taskonomy_root):
    ds = Taskonomy(taskonomy_root, "train.txt", inputs=["normal", "depth_zbuffer", "edge_texture"], target="rgb")
    s = ds[0]
    assert set(s) == {"normal", "depth_zbuffer", "edge_texture", "target"}
    for v in s.values():
        assert v.shape == (3, H, W) and v.dtype == torch.float32
    raw = np.array(Image.open(taskonomy_root / "depth_zbuffer" / "point_40_view_0_domain_depth_zbuffer.png"))
    assert raw.dtype == np.uint16
    # 1/512 m units, divided by 16 m; 65535 = invalid -> 0
    torch.testing.assert_close(s["depth_zbuffer"][0, 5, 5], torch.tensor(raw[5, 5] / 512 / 16, dtype=torch.float32))
    assert s["depth_zbuffer"][:, 0, :3].eq(0).all()
    edge = np.array(Image.open(taskonomy_root / "edge_texture" / "point_40_view_0_domain_edge_texture.png"))
    torch.testing.assert_close(s["edge_texture"][1], torch.from_numpy(edge.astype(np.float32) / 65535))
    normal = np.array(Image.open(taskonomy_root / "normal" / "point_40_view_0_domain_normal.png"))
    torch.testing.assert_close(s["normal"], torch.from_numpy(normal).permute(2, 0, 1).float() / 127.5 - 1)
    rgb = np.array(Image.open(taskonomy_root / "rgb" / "point_40_view_0_domain_rgb.png"))
    torch.testing.assert_close(s["target"], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


def test_taskonomy_grey_8bit_replicated(taskonomy_root):
    s = Taskonomy(taskonomy_root, "train.txt", inputs=["reshading"], target=None)[1]
    assert set(s) == {"reshading"} and torch.equal(s["reshading"][0], s["reshading"][2])


def test_folder_dataset(folder_root):
    ds = FolderDataset(folder_root, ["rgb", "depth"], "split.txt", num_classes=5)
    assert len(ds) == 2
    s = ds[1]
    assert s["rgb"].shape == (3, H, W) and s["depth"].shape == (3, H, W) and s["mask"].shape == (H, W)
    raw = np.array(Image.open(folder_root / "depth" / "b.png")).astype(np.float32)
    torch.testing.assert_close(s["depth"][0], torch.from_numpy(raw) / 5000)
    no_mask = FolderDataset(folder_root, ["rgb"], folder_root / "split.txt", mask=None)
    assert set(no_mask[0]) == {"rgb"}


def test_folder_dataset_kind_override(folder_root):
    ds = FolderDataset(folder_root, ["depth"], "split.txt", mask=None, kinds={"depth": "image"})
    raw = np.array(Image.open(folder_root / "depth" / "a.png")).astype(np.float32)
    torch.testing.assert_close(ds[0]["depth"][0], torch.from_numpy(raw) / 65535)


def test_mean_std_excludes_holes(nyu_root):
    ds = NYUDv2(nyu_root, "train.txt", modalities=("depth",))
    mean, std = mean_std(ds, "depth")
    vals = np.concatenate(
        [np.array(Image.open(nyu_root / "depth" / f"{i:06d}.png")).ravel() for i in (1, 2, 3)]
    ).astype(np.float64)
    vals = vals[vals != 0] / 5000
    assert len(mean) == 3
    assert mean[0] == pytest.approx(vals.mean(), rel=1e-5) and std[0] == pytest.approx(vals.std(), rel=1e-4)


def test_dataloader_collates(nyu_root):
    from torch.utils.data import DataLoader

    from cen.data.transforms import segmentation_train

    ds = NYUDv2(nyu_root, "train.txt", transform=segmentation_train(8, scale_range=(0.8, 1.2)))
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["rgb"].shape == (3, 3, 8, 8) and batch["mask"].shape == (3, 8, 8)
    assert batch["mask"].dtype == torch.int64 and type(batch["rgb"]) is torch.Tensor


def test_taskonomy_defaults_are_the_reference_task(taskonomy_root):
    ds = Taskonomy(taskonomy_root, "train.txt")
    assert ds.inputs == ("reshading", "edge_texture") and ds.target == "rgb" and ds.decode == "linear"
    s = ds[0]
    assert set(s) == {"reshading", "edge_texture", "target"}
    assert all(v.shape == (3, H, W) for v in s.values())


def _reference_8bit(raw: np.ndarray, maximum: float, log: bool) -> np.ndarray:
    """The reference's 8-bit values, written out in float64 arithmetic: invalid depth
    (65535) wraps to log(0) and ends at 0; values are truncated."""
    raw = raw.astype(np.float64)
    if log:
        value = np.where(raw == 65535, -np.inf, np.log1p(raw))
    else:
        value = raw
    scaled = np.where(np.isfinite(value), value / maximum * 255, 0)
    return np.clip(np.floor(scaled), 0, 255).astype(np.uint8)


def test_taskonomy_reference_decoding_values(taskonomy_root):
    from tests.data.conftest import write_png

    depth = np.full((H, W), 3000, np.uint16)
    depth[0, :4] = [0, 1, 65534, 65535]
    edges = np.full((H, W), 5000, np.uint16)
    edges[0, :3] = [0, 11355, 20000]  # above the maximum: clipped to 255
    stem = "point_40_view_0_domain_{}.png"
    write_png(taskonomy_root / "depth_zbuffer" / stem.format("depth_zbuffer"), depth)
    write_png(taskonomy_root / "edge_texture" / stem.format("edge_texture"), edges)
    ds = Taskonomy(
        taskonomy_root, "train.txt", inputs=["depth_zbuffer", "edge_texture", "normal", "reshading"], decode="reference"
    )
    s = ds[0]
    for key in ("depth_zbuffer", "edge_texture", "normal", "reshading", "target"):
        assert s[key].shape == (3, H, W) and s[key].dtype == torch.float32
    k_depth = (s["depth_zbuffer"] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(k_depth[0], _reference_8bit(depth, 11.1, log=True))
    assert k_depth[0, 0, :4].tolist() == [0, 15, 254, 0]  # log 0 -> 0; log(65535) / 11.1 * 255 = 254.8; invalid -> 0
    assert np.array_equal(k_depth[0], k_depth[2])  # grey -> 3 channels
    k_edge = (s["edge_texture"] * 255).round().to(torch.uint8).numpy()[1]
    assert np.array_equal(k_edge, _reference_8bit(edges, 11355, log=False))
    assert k_edge[0, :3].tolist() == [0, 255, 255]
    # 8-bit domains are kept as they are (normals are plain images here: no decoding to unit vectors)
    normal = np.array(Image.open(taskonomy_root / "normal" / stem.format("normal")))
    torch.testing.assert_close(s["normal"], torch.from_numpy(normal).permute(2, 0, 1).float() / 255)


def test_taskonomy_reference_pipeline_uses_pil_bilinear(taskonomy_root):
    from cen.data.transforms import (
        translation_reference_eval,
        translation_reference_train,
    )

    ds = Taskonomy(taskonomy_root, "train.txt", decode="reference", transform=translation_reference_eval(20))
    s = ds[1]
    rgb = Image.open(taskonomy_root / "rgb" / "point_41_view_1_domain_rgb.png").resize((20, 20), Image.BILINEAR)
    expected = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(s["target"], expected)
    shade = Image.open(taskonomy_root / "reshading" / "point_41_view_1_domain_reshading.png").resize(
        (20, 20), Image.BILINEAR
    )
    torch.testing.assert_close(s["reshading"][2], torch.from_numpy(np.array(shade)).float() / 127.5 - 1)
    torch.manual_seed(0)
    train = Taskonomy(
        taskonomy_root,
        "train.txt",
        decode="reference",
        transform=translation_reference_train(load_size=24, crop_size=16, hflip_p=1.0),
    )
    t = train[1]
    assert all(v.shape == (3, 16, 16) for v in t.values())
    assert t["target"].min() >= -1 and t["target"].max() <= 1
    # the crop of the flipped 24 x 24 resize: one window shared by every domain
    big = Image.open(taskonomy_root / "rgb" / "point_41_view_1_domain_rgb.png").resize((24, 24), Image.BILINEAR)
    full = torch.from_numpy(np.array(big)).permute(2, 0, 1).flip(-1).float() / 127.5 - 1
    hits = [(i, j) for i in range(9) for j in range(9) if torch.allclose(full[:, i : i + 16, j : j + 16], t["target"])]
    assert hits


def test_generated_scenes_serve_the_default_translation_task(tmp_path):
    from cen.data.synth import generate

    generate(tmp_path / "s", 3, height=24, width=32, progress=False)
    for decode in ("linear", "reference"):
        s = Taskonomy(tmp_path / "s" / "taskonomy", "train.txt", decode=decode)[0]
        assert set(s) == {"reshading", "edge_texture", "target"}
        assert s["edge_texture"].max() > 0 and s["reshading"].std() > 0
