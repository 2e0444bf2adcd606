"""Every bad input of the issue gets a clear error naming the file, line or value."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cen.data import FolderDataset, NYUDv2, Taskonomy
from tests.data.conftest import write_png


def test_missing_file_names_file_and_list_line(nyu_root):
    (nyu_root / "depth" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        NYUDv2(nyu_root, "train.txt")
    msg = str(err.value)
    assert "depth/000002.png" in msg and "train.txt:2" in msg and "rgb/000002.png\\tmasks" in msg


def test_missing_list_file(nyu_root):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        NYUDv2(nyu_root, "nope.txt")


def test_corrupt_and_truncated_png_name_the_file(nyu_root):
    (nyu_root / "rgb" / "000001.png").write_bytes(b"not a png at all")
    data = (nyu_root / "depth" / "000002.png").read_bytes()
    (nyu_root / "depth" / "000002.png").write_bytes(data[: len(data) // 2])
    ds = NYUDv2(nyu_root, "train.txt")
    with pytest.raises(ValueError, match=r"rgb/000001\.png: cannot decode image"):
        ds[0]
    with pytest.raises(ValueError, match=r"depth/000002\.png: cannot decode image") as err:
        ds[1]
    assert "train.txt:2" in str(err.value)


def test_size_mismatch_names_both_files_and_sizes(nyu_root):
    write_png(nyu_root / "depth" / "000003.png", np.ones((10, 16), np.uint16))
    with pytest.raises(ValueError) as err:
        NYUDv2(nyu_root, "train.txt")[2]
    msg = str(err.value)
    assert "depth/000003.png is 10x16" in msg and "rgb/000003.png is 12x16" in msg


def test_label_out_of_range_names_file_and_value(nyu_root):
    mask = np.zeros((12, 16), np.uint8)
    mask[3, 3] = 41
    mask[4, 4] = 255  # ignore is fine
    write_png(nyu_root / "masks" / "000001.png", mask)
    with pytest.raises(
        ValueError, match=r"masks/000001\.png: label value\(s\) 41 out of range; expected class ids 0\.\.39"
    ):
        NYUDv2(nyu_root, "train.txt")[0]
    # with the class count of the generated scenes, 7 is already out of range
    mask[3, 3] = 7
    write_png(nyu_root / "masks" / "000001.png", mask)
    with pytest.raises(ValueError, match="7 out of range"):
        NYUDv2(nyu_root, "train.txt", num_classes=7)[0]


def test_depth_must_be_16bit(nyu_root):
    write_png(nyu_root / "depth" / "000001.png", np.ones((12, 16), np.uint8))
    with pytest.raises(ValueError, match=r"depth/000001\.png: depth image is uint8.*expected a 16-bit"):
        NYUDv2(nyu_root, "train.txt")[0]


def test_empty_and_malformed_list(nyu_root):
    (nyu_root / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.txt: list file is empty"):
        NYUDv2(nyu_root, "empty.txt")
    (nyu_root / "bad.txt").write_text(
        "rgb/000001.png\tmasks/000001.png\tdepth/000001.png\nrgb/000002.png masks/000002.png\n"
    )
    with pytest.raises(ValueError, match=r"bad\.txt:2: malformed line .*expected 3 tab-separated paths"):
        NYUDv2(nyu_root, "bad.txt")


def test_unknown_taskonomy_domain_lists_known(taskonomy_root):
    with pytest.raises(ValueError, match=r"unknown Taskonomy domain 'depht'; known domains: rgb, normal, reshading"):
        Taskonomy(taskonomy_root, "train.txt", inputs=["depht"], target="rgb")
    with pytest.raises(ValueError, match="also an input"):
        Taskonomy(taskonomy_root, "train.txt", inputs=["rgb"], target="rgb")


def test_taskonomy_template_without_domain(taskonomy_root):
    (taskonomy_root / "bad.txt").write_text("rgb/point_40_view_0_domain_rgb.png\n")
    with pytest.raises(ValueError, match=re.escape("bad.txt:1: malformed line") + ".*'{domain}'"):
        Taskonomy(taskonomy_root, "bad.txt", inputs=["reshading"])


def test_taskonomy_missing_domain_file(taskonomy_root):
    (taskonomy_root / "normal" / "point_41_view_1_domain_normal.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"point_41_view_1_domain_normal\.png: no such file \(normal\).*train\.txt:2"
    ):
        Taskonomy(taskonomy_root, "train.txt", inputs=["normal"], target="rgb")


def test_folder_bad_arguments(folder_root):
    with pytest.raises(ValueError, match="num_classes is required"):
        FolderDataset(folder_root, ["rgb"], "split.txt")
    with pytest.raises(ValueError, match="kind 'radar'"):
        FolderDataset(folder_root, ["rgb"], "split.txt", mask=None, kinds={"rgb": "radar"})
    (folder_root / "bad.txt").write_text("rgb/a\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: malformed line 'rgb/a': expected one file stem"):
        FolderDataset(folder_root, ["rgb"], "bad.txt", mask=None)


def test_bad_modality_and_class_count(nyu_root):
    with pytest.raises(ValueError, match=r"modality 'hha' is not in the data set .*cen data hha.*it has: rgb, depth$"):
        NYUDv2(nyu_root, "train.txt", modalities=("rgb", "hha"))
    with pytest.raises(ValueError, match=r"NYUDv2: modalities \['rgb', 'rgb'\] name \['rgb'\] more than once"):
        NYUDv2(nyu_root, "train.txt", modalities=("rgb", "rgb"))
    with pytest.raises(ValueError, match=r"NYUDv2: modalities \['rgb', 'mask'\] include 'mask', the labels' role"):
        NYUDv2(nyu_root, "train.txt", modalities=("rgb", "mask"))
    assert NYUDv2(nyu_root, "train.txt", modalities="depth").modalities == ("depth",)  # one name as a string
    with pytest.raises(ValueError, match="num_classes must be in"):
        NYUDv2(nyu_root, "train.txt", num_classes=0)


def test_taskonomy_bad_arguments_are_one_line_errors(taskonomy_root):
    cases = [
        ({"decode": "tf"}, r"decode='tf' unknown; expected one of \('linear', 'reference'\)"),
        ({"inputs": ["reshading", "reshading"]}, "repeat a domain"),
        ({"inputs": ["reshading", "rgb"]}, "target domain 'rgb' is also an input"),
        ({"inputs": ["normal"], "target": "nromal"}, "unknown Taskonomy domain 'nromal'"),
        ({"channels": 1, "decode": "reference"}, "decode='reference' gives 3 channels"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as err:
            Taskonomy(taskonomy_root, "train.txt", **kwargs)
        assert "\n" not in str(err.value)


def test_taskonomy_view_missing_a_default_domain(taskonomy_root):
    (taskonomy_root / "edge_texture" / "point_40_view_0_domain_edge_texture.png").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"point_40_view_0_domain_edge_texture\.png: no such file "
        r"\(edge_texture\), named by .*train\.txt:1",
    ) as err:
        Taskonomy(taskonomy_root, "train.txt")
    assert "\n" not in str(err.value)


def test_taskonomy_sizes_differ_within_a_sample(taskonomy_root):
    write_png(taskonomy_root / "reshading" / "point_41_view_1_domain_reshading.png", np.zeros((10, 16), np.uint8))
    ds = Taskonomy(taskonomy_root, "train.txt")
    with pytest.raises(ValueError, match="all modalities of a sample must have the same size") as err:
        ds[1]
    msg = str(err.value)
    assert "point_41_view_1_domain_edge_texture.png is 12x16" in msg and "reshading.png is 10x16" in msg
    assert "train.txt:2" in msg and "\n" not in msg


def test_taskonomy_reference_decoding_of_other_16bit_domains(taskonomy_root):
    write_png(taskonomy_root / "keypoints2d" / "point_40_view_0_domain_keypoints2d.png", np.ones((12, 16), np.uint16))
    write_png(taskonomy_root / "keypoints2d" / "point_41_view_1_domain_keypoints2d.png", np.ones((12, 16), np.uint16))
    ds = Taskonomy(taskonomy_root, "train.txt", inputs=["keypoints2d"], decode="reference")
    with pytest.raises(ValueError, match="domain 'keypoints2d'; decode='reference' knows fixed maxima only for"):
        ds[0]
    assert Taskonomy(taskonomy_root, "train.txt", inputs=["keypoints2d"])[0]["keypoints2d"].shape == (3, 12, 16)
