"""``cen data synth`` and ``cen data check``."""

from __future__ import annotations

import numpy as np

from cen.cli.main import main
from tests.data.conftest import make_folder, write_png


def test_synth_then_check_both_layouts(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert (
        main(["data", "synth", str(out), "--num", "3", "--height", "24", "--width", "32", "--seed", "5", "--quiet"])
        == 0
    )
    assert "7 classes: wall, floor, rug, poster, box, cylinder, sphere" in capsys.readouterr().out
    assert main(["data", "check", str(out), "--layout", "nyudv2", "--quiet"]) == 0
    assert main(["data", "check", str(out / "taskonomy"), "--layout", "taskonomy", "--quiet"]) == 0


def test_check_reports_every_problem_with_the_file(nyu_root, capsys):
    (nyu_root / "rgb" / "000001.png").unlink()
    (nyu_root / "depth" / "000002.png").write_bytes(b"garbage")
    mask = np.zeros((12, 16), np.uint8)
    mask[0, 0] = 77
    write_png(nyu_root / "masks" / "000003.png", mask)
    write_png(nyu_root / "depth" / "000003.png", np.ones((10, 16), np.uint16))
    (nyu_root / "val.txt").write_text("")
    code = main(["data", "check", str(nyu_root), "--layout", "nyudv2", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    text = "\n".join(out)
    assert any("rgb/000001.png: no such file" in line and "train.txt:1" in line for line in out)
    assert "rgb/000001.png" in text and "test.txt:1" in text  # listed twice, reported for both lists
    assert any("depth/000002.png: cannot decode image" in line for line in out)
    assert any("masks/000003.png: label value(s) 77 out of range" in line for line in out)
    assert any("depth/000003.png: size 10x16 (HxW) differs from" in line for line in out)
    assert any("val.txt: list file is empty" in line for line in out)


def test_check_explicit_list_and_class_count(nyu_root, capsys):
    assert (
        main(
            [
                "data",
                "check",
                str(nyu_root),
                "--layout",
                "nyudv2",
                "--list",
                str(nyu_root / "test.txt"),
                "--num-classes",
                "2",
                "--quiet",
            ]
        )
        == 1
    )
    assert "out of range; expected class ids 0..1" in capsys.readouterr().out


def test_check_taskonomy_bit_depth_and_unknown_domain(taskonomy_root, capsys):
    write_png(taskonomy_root / "edge_texture" / "point_40_view_0_domain_edge_texture.png", np.zeros((12, 16), np.uint8))
    assert main(["data", "check", str(taskonomy_root), "--layout", "taskonomy", "--quiet"]) == 1
    assert "8-bit image; expected 16-bit for edge_texture" in capsys.readouterr().out
    assert (
        main(["data", "check", str(taskonomy_root), "--layout", "taskonomy", "--domains", "rgb,curv", "--quiet"]) == 1
    )
    assert "unknown Taskonomy domain 'curv'" in capsys.readouterr().out


def test_check_folder_layout(tmp_path, capsys):
    root = make_folder(tmp_path / "own")
    assert main(["data", "check", str(root), "--layout", "folder", "--list", "split.txt", "--quiet"]) == 0
    assert main(["data", "check", str(root), "--layout", "folder", "--quiet"]) == 1
    assert "needs a split file" in capsys.readouterr().out
    (root / "depth" / "b.png").unlink()
    assert main(["data", "check", str(root), "--layout", "folder", "--list", "split.txt", "--quiet"]) == 1
    assert "depth/b.png: no such file" in capsys.readouterr().out


def test_check_missing_root_and_lists(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing"), "--layout", "nyudv2", "--quiet"]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty"), "--layout", "nyudv2", "--quiet"]) == 1
    assert "no list file found" in capsys.readouterr().out


def test_check_8bit_depth_is_a_problem_that_states_the_unit(nyu_root, capsys):
    write_png(nyu_root / "depth" / "000002.png", np.ones((12, 16), np.uint8))
    assert main(["data", "check", str(nyu_root), "--layout", "nyudv2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "depth/000002.png: 8-bit image; expected 16-bit for depth" in out and "1/5000 m" in out
