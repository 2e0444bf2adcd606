"""HHA on generated scenes, where the camera pose, the true heights and the true normals are known."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cen.cli.main import main
from cen.data import NYUDv2
from cen.data.constants import REFERENCE_DEPTH_SCALE
from cen.data.hha import (
    DISPARITY_SCALE,
    HEIGHT_MAX_M,
    HHAError,
    Intrinsics,
    compute_hha,
    fill_holes,
    write_hha,
)
from cen.data.synth import NUM_CLASSES, generate
from cen.data.synth.layouts import sample_rng
from cen.data.synth.render import render
from cen.data.synth.scene import sample_scene

H, W, SEED, N = 60, 80, 11, 4
FLOOR, WALLS = 2, (0, 1, 4, 5)  # room surface indices (cen.data.synth.render.SURFACES)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("hha") / "s"
    generate(root, N, height=H, width=W, seed=SEED, progress=False)
    assert main(["data", "hha", str(root), "--quiet"]) == 0  # camera.json: intrinsics and the depth scale (1/5000)
    return root


def truth(index):
    """Surface index, true height above the floor (m) and the camera's up vector (x right, y down, z forward)."""
    scene = sample_scene(sample_rng(SEED, index), H, W)
    buf = render(scene)
    cam = scene.camera
    height = cam.position[1] + buf["depth"] * cam.ray_directions()[:, 1].reshape(H, W)
    r = cam.rotation  # camera-to-world, columns x right, y up, z forward
    up = np.array([r[1, 0], -r[1, 1], r[1, 2]])
    return buf["surface"], height, up


def test_hha_invariants_on_generated_scenes(scenes):
    for i in range(N):
        name = f"{i:06d}.png"
        hha = np.asarray(Image.open(scenes / "hha" / name)).astype(np.float64)
        depth_m = np.asarray(Image.open(scenes / "depth" / name)).astype(np.float64) * REFERENCE_DEPTH_SCALE
        surface, height, _ = truth(i)
        valid = depth_m > 0
        assert hha.shape == (H, W, 3) and valid.mean() > 0.8
        # disparity: 127.5 / z, rounded
        assert np.abs(hha[..., 0] - np.clip(DISPARITY_SCALE / np.where(valid, depth_m, 1), 0, 255))[valid].max() <= 0.51
        # height above the floor within a few cm of the truth (the floor level is estimated)
        h_m = hha[..., 1] * HEIGHT_MAX_M / 255
        inside = valid & (height < HEIGHT_MAX_M - 0.05)
        assert np.median(np.abs(h_m - height)[inside]) < 0.04
        angle = hha[..., 2] * 180 / 255
        floor, walls = valid & (surface == FLOOR), valid & np.isin(surface, WALLS)
        assert np.median(angle[floor]) < 5 and np.median(h_m[floor]) < 0.04
        assert abs(np.median(angle[walls]) - 90) < 3
        # most pixels, not only the median (edges and far, noisy walls at 60x80 pixels miss)
        assert np.mean(np.abs(angle[walls] - 90) < 10) > 0.7 and np.mean(angle[floor] < 10) > 0.6


def test_gravity_is_estimated_not_assumed():
    """The camera pitches down by 9-26 degrees: the estimate must find the tilted up vector."""
    for i in range(N):
        scene = sample_scene(sample_rng(SEED, i), H, W)
        buf = render(scene)
        _, _, up = truth(i)
        k = Intrinsics(scene.camera.focal, scene.camera.focal, W / 2 - 0.5, H / 2 - 0.5)
        g = compute_hha(buf["depth"], k).gravity.double().numpy()
        assert np.degrees(np.arccos(np.clip(g @ up, -1, 1))) < 1.0
        assert np.degrees(np.arccos(-g[1])) > 8  # the camera's own y axis is not the answer


def test_holes_are_filled_from_their_border():
    z = torch.full((9, 9), 2.0)
    z[:, 5:] = 4.0
    z[3:6, 3:7] = 0
    filled = fill_holes(z)
    assert bool((filled > 0).all())
    assert torch.equal(filled[z > 0], z[z > 0])
    assert filled[z == 0].min() >= 2 and filled[z == 0].max() <= 4


def test_hha_is_a_modality_of_the_data_set(scenes):
    ds = NYUDv2(scenes, "train.txt", modalities=("rgb", "depth", "hha"), num_classes=NUM_CLASSES)
    s = ds[0]
    assert ds.kinds["hha"] == "hha" and s["hha"].shape == (3, H, W)
    raw = np.asarray(Image.open(scenes / "hha" / "000000.png"))
    assert torch.allclose(s["hha"], torch.from_numpy(raw.copy()).permute(2, 0, 1).float() / 255)


def test_existing_files_are_kept_unless_overwrite(scenes, capsys):
    assert write_hha(scenes, progress=False) == {"written": 0, "kept": N}
    before = (scenes / "hha" / "000001.png").read_bytes()
    assert write_hha(scenes, progress=False, overwrite=True) == {"written": N, "kept": 0}
    assert (scenes / "hha" / "000001.png").read_bytes() == before  # deterministic


def _cli_error(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_input_is_one_line(scenes, tmp_path, capsys):
    root = tmp_path / "nocam"
    shutil.copytree(scenes, root)
    (root / "camera.json").unlink()
    shutil.rmtree(root / "hha")
    # no intrinsics for an image that is not the Kinect's 640x480
    err = _cli_error(capsys, ["data", "hha", str(root), "--depth-scale", "0.0002", "--quiet"])
    assert "000000.png is 80x60" in err and "640x480" in err and "--intrinsics" in err
    # depth in units of 1/5000 m read as metres: implausible median
    err = _cli_error(
        capsys, ["data", "hha", str(root), "--intrinsics", "70,70,39.5,29.5", "--depth-scale", "1", "--quiet"]
    )
    assert "000000.png" in err and "median depth" in err and "wrong unit" in err
    # intrinsics that do not fit the image
    err = _cli_error(
        capsys, ["data", "hha", str(root), "--intrinsics", "518,519,325,253", "--depth-scale", "0.0002", "--quiet"]
    )
    assert "principal point (325, 253) lies outside the 80x60" in err
    err = _cli_error(capsys, ["data", "hha", str(root), "--intrinsics", "1,2,3", "--quiet"])
    assert "intrinsics '1,2,3'" in err and "fx,fy,cx,cy" in err
    err = _cli_error(capsys, ["data", "hha", str(tmp_path / "empty"), "--quiet"])
    assert "no depth PNG" in err
    # the right ones work, and the modality is then there
    assert (
        main(["data", "hha", str(root), "--intrinsics", "70,70,39.5,29.5", "--depth-scale", "0.0002", "--quiet"]) == 0
    )
    assert (root / "hha" / "000003.png").is_file()
    with pytest.raises(HHAError, match="no measured pixel"):
        compute_hha(np.zeros((4, 4)), Intrinsics(4, 4, 2, 2))


def test_camera_json_per_image_intrinsics_are_used(scenes):
    cam = json.loads((scenes / "camera.json").read_text())
    assert len({tuple(v) for v in cam["intrinsics"].values()}) == N  # one focal length per scene
