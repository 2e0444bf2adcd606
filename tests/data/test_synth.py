"""The scene generator: determinism, layouts, class design, generate-once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cen.data import NYUDv2, Taskonomy
from cen.data.constants import REFERENCE_DEPTH_SCALE
from cen.data.synth import (
    CLASS_NAMES,
    GENERATED_DOMAINS,
    NUM_CLASSES,
    ensure_generated,
    generate,
    read_marker,
)
from cen.data.synth.classes import BOX, CYLINDER, FLOOR, POSTER, RUG, SPHERE, WALL
from cen.data.synth.layouts import sample_rng
from cen.data.synth.render import render
from cen.data.synth.scene import sample_scene
from cen.data.synth.sensor import depth_sigma, sensor_depth

SMALL = {"height": 24, "width": 32}


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = files_of(generate(tmp_path / "a", 4, seed=7, progress=False, **SMALL) and tmp_path / "a")
    b = files_of(generate(tmp_path / "b", 4, seed=7, progress=False, workers=2, **SMALL) and tmp_path / "b")
    assert a == b
    c = files_of(generate(tmp_path / "c", 4, seed=8, progress=False, **SMALL) and tmp_path / "c")
    assert a["rgb/000000.png"] != c["rgb/000000.png"]


def test_layouts_lists_and_metadata(tmp_path):
    root = tmp_path / "s"
    info = generate(root, 10, seed=1, splits=(0.6, 0.2, 0.2), progress=False, **SMALL)
    assert info["num_classes"] == NUM_CLASSES == 7 and [c["name"] for c in info["classes"]] == list(CLASS_NAMES)
    assert info["splits"] == {"train": 6, "val": 2, "test": 2}
    lines = (root / "val.txt").read_text().splitlines()
    assert lines == [
        "rgb/000006.png\tmasks/000006.png\tdepth/000006.png",
        "rgb/000007.png\tmasks/000007.png\tdepth/000007.png",
    ]
    assert (root / "taskonomy" / "test.txt").read_text().splitlines()[
        0
    ] == "{domain}/point_8_view_0_domain_{domain}.png"
    meta = json.loads((root / "classes.json").read_text())
    assert meta["settings"]["seed"] == 1 and {c["separated_by"] for c in meta["classes"]} == {
        "rgb",
        "depth",
        "rgb+depth",
    }
    assert "| 4 | box | depth |" in (root / "README.md").read_text()
    assert read_marker(root)["num"] == 10

    ds = NYUDv2(root, "train.txt", num_classes=NUM_CLASSES)
    s = ds[0]
    assert s["rgb"].shape == (3, 24, 32) and s["mask"].max() < NUM_CLASSES
    holes = [bool((ds[i]["depth"] == 0).any()) for i in range(len(ds))]
    assert any(holes)  # the sensor model leaves holes (depth 0) in some scenes
    t = Taskonomy(root / "taskonomy", "train.txt", inputs=[d for d in GENERATED_DOMAINS if d != "rgb"], target="rgb")
    st = t[3]
    assert set(st) == {"depth_zbuffer", "normal", "reshading", "edge_texture", "target"}
    # the same scene in both layouts, under another light: depth agrees (1/5000 m vs 1/512 m)
    assert st["target"].shape == ds[3]["rgb"].shape and not torch.equal(st["target"], ds[3]["rgb"])
    nyu_m = ds[3]["depth"][0]  # the default depth scale 1/5000 gives metres
    tk_m = st["depth_zbuffer"][0] * 16
    valid = (nyu_m > 0) & (tk_m > 0)
    assert torch.equal(nyu_m > 0, tk_m > 0)
    assert (nyu_m[valid] - tk_m[valid]).abs().max() < 2e-3


def scenes(n, h=30, w=40, seed=0):
    for i in range(n):
        rng = sample_rng(seed, i)
        scene = sample_scene(rng, h, w)
        yield rng, scene, render(scene)


def _plane_residual(depth, sel_fit, sel_test):
    """Fit 1/z = a u + b v + c on sel_fit pixels; max relative depth error on sel_test."""
    v, u = np.nonzero(sel_fit)
    A = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(A, 1.0 / depth[sel_fit].astype(np.float64), rcond=None)
    v, u = np.nonzero(sel_test)
    pred = 1.0 / (np.stack([u, v, np.ones_like(u)], 1) @ coef)
    return np.abs(pred - depth[sel_test]) / depth[sel_test]


def test_posters_and_rugs_have_the_geometry_of_their_wall_or_floor():
    checked = {POSTER: 0, RUG: 0}
    for rng, _scene, buf in scenes(40):
        label, surface, depth = buf["label"], buf["surface"], buf["depth"]
        noisy, valid = sensor_depth(depth, rng)
        for cls, host in ((POSTER, WALL), (RUG, FLOOR)):
            for s in np.unique(surface[label == cls]):
                on = surface == s
                flat, base = on & (label == cls), on & (label == host)
                if flat.sum() < 3 or base.sum() < 10:
                    continue
                assert s < 6  # on a room surface, not on an object
                assert _plane_residual(depth, base, flat).max() < 1e-3  # same plane as the wall/floor
                # the sensor depth of the poster/rug is the wall's depth within noise
                ok = flat & valid
                err = np.abs(noisy[ok] - depth[ok])
                assert (err < 5 * depth_sigma(depth[ok])).all()
                checked[cls] += 1
    assert checked[POSTER] >= 5 and checked[RUG] >= 5


def test_shape_only_classes_share_the_albedo_distribution():
    ratios = {BOX: [], CYLINDER: [], SPHERE: [], WALL: []}
    for _, scene, buf in scenes(150, h=24, w=32):
        base = scene.base_albedo
        for solid in scene.solids:
            ratios[solid.kind].append(solid.albedo / base)
        ratios[WALL].extend(a / base for a in scene.surface_albedo)
        # rendered object pixels carry the plain material, never a pattern
        obj = np.isin(buf["label"], [BOX, CYLINDER, SPHERE])
        if obj.any():
            rel = buf["albedo"][obj] / base
            assert np.abs(rel - 1).max() < 0.5
    stats = {k: (np.mean(v), np.std(v)) for k, v in ratios.items()}
    for k in (BOX, CYLINDER, SPHERE):
        assert len(ratios[k]) > 50
        assert stats[k][0] == pytest.approx(1.0, abs=0.02)
        assert stats[k][1] == pytest.approx(stats[WALL][1], rel=0.3)


def test_depth_encoding_units_and_holes(tmp_path):
    from PIL import Image

    root = tmp_path / "s"
    generate(root, 6, progress=False, height=48, width=64)
    depth = np.stack([np.array(Image.open(root / "depth" / f"{i:06d}.png")) for i in range(6)])
    tk = np.stack(
        [
            np.array(Image.open(root / "taskonomy" / "depth_zbuffer" / f"point_{i}_view_0_domain_depth_zbuffer.png"))
            for i in range(6)
        ]
    )
    assert depth.dtype == np.uint16 and tk.dtype == np.uint16
    assert np.array_equal(depth == 0, tk == 65535)  # holes coincide
    valid = depth > 0
    metres = depth[valid] * REFERENCE_DEPTH_SCALE  # NYUDv2's unit of 1/5000 m, as the reference data
    assert 0.5 < np.median(metres) < 8.0  # a room
    # the same depth as Taskonomy's z-buffer (1/512 m), up to the coarser unit's rounding
    assert np.abs(metres - tk[valid] / 512.0).max() <= 0.5 / 512 + 0.5 / 5000 + 1e-9
    assert json.loads((root / "camera.json").read_text())["depth_scale"] == REFERENCE_DEPTH_SCALE
    assert 0 < (depth == 0).mean() < 0.2  # holes: discontinuities, blobs, out of range
    edges = np.array(Image.open(root / "taskonomy" / "edge_texture" / "point_0_view_0_domain_edge_texture.png"))
    assert edges.dtype == np.uint16


def test_class_coverage_over_a_few_scenes():
    counts = np.zeros(NUM_CLASSES)
    for _, _, buf in scenes(40):
        counts += np.bincount(buf["label"].ravel(), minlength=NUM_CLASSES)
    assert (counts > 0).all() and counts[WALL] / counts.sum() < 0.7


def test_ensure_generated_only_once(tmp_path, monkeypatch):
    root = tmp_path / "gen" / "synth"
    info = ensure_generated(root, 3, seed=2, **SMALL)
    assert info["root"] == str(root) and read_marker(root)["num"] == 3
    stamp = (root / "rgb" / "000000.png").stat().st_mtime_ns

    import cen.data.synth.build as g

    monkeypatch.setattr(g, "generate", lambda *a, **k: pytest.fail("regenerated"))
    again = ensure_generated(root, 3, seed=2, **SMALL)
    assert again["num_classes"] == NUM_CLASSES and (root / "rgb" / "000000.png").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        ensure_generated(root, 4, seed=2, **SMALL)
    with pytest.raises(FileExistsError, match="other settings"):  # generate()'s default height, not SMALL's
        ensure_generated(root, 3, seed=2, width=SMALL["width"])
    with pytest.raises(TypeError, match="'heigth'; the scene settings are height, width, seed, splits"):
        ensure_generated(root, 3, seed=2, heigth=24)


def test_interrupted_generation_is_never_complete(tmp_path, monkeypatch):
    from cen.data.synth import layouts

    root = tmp_path / "synth"
    real = layouts.write_sample
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(layouts, "write_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(root, 3, **SMALL)
    assert not root.exists() and list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # temp copy removed
    # a direct generate() interrupted in place leaves no marker: not taken as complete
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        generate(root, 3, progress=False, **SMALL)
    assert read_marker(root) is None
    with pytest.raises(FileExistsError, match="not a completed generation"):
        ensure_generated(root, 3, **SMALL)
    monkeypatch.setattr(layouts, "write_sample", real)
    (tmp_path / "empty").mkdir()
    assert ensure_generated(tmp_path / "empty", 3, **SMALL)["splits"] == {"train": 1, "val": 1, "test": 1}


def test_bad_settings():
    with pytest.raises(ValueError, match="splits must be three"):
        generate("/nonexistent/never", 3, splits=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="num must be >= 1"):
        generate("/nonexistent/never", 0)


def test_taskonomy_layout_inputs_each_carry_what_the_other_lacks():
    """Taskonomy layout: rgb = albedo x reshading (+ noise), with a strong directional
    light; reshading is blind to posters and rugs (flat on their host), edge_texture is
    blind to shading (computed from the albedo alone)."""
    from cen.data.synth.layouts import (
        TASKONOMY_AMBIENT,
        relight,
        render_sample,
        taskonomy_rng,
    )

    shading_spread, poster_edges = [], []
    for i in range(30):
        rng = sample_rng(0, i)
        scene = sample_scene(rng, 30, 40)
        buf = render(scene)
        s = render_sample(0, i, 30, 40)
        ambient = float(taskonomy_rng(0, i).uniform(*TASKONOMY_AMBIENT))
        shading = relight(buf["shading"], scene.ambient, ambient)
        assert TASKONOMY_AMBIENT[0] <= ambient <= TASKONOMY_AMBIENT[1]
        assert np.abs(s["reshading"] / 255.0 - shading).max() <= 0.5 / 255 + 1e-6
        clean = buf["albedo"] * shading[..., None]
        assert np.abs(s["taskonomy_rgb"] / 255.0 - clean).mean() < 0.04  # sensor noise only
        # the NYUDv2 layout keeps its own (mostly ambient) light
        assert np.abs(s["rgb"] / 255.0 - buf["albedo"] * (buf["shading"] * scene.exposure)[..., None]).mean() < 0.04
        shading_spread.append(np.percentile(shading, 95) - np.percentile(shading, 5))
        # edges: the same for any light (albedo only); strong at poster and rug borders
        flat = np.isin(buf["label"], [POSTER, RUG])
        if flat.sum() > 20:
            poster_edges.append(s["edge_texture"][flat].mean() / max(1.0, s["edge_texture"][~flat].mean()))
        # reshading does not see posters or rugs: the same shading as the host surface
        for cls, host in ((POSTER, WALL), (RUG, FLOOR)):
            for surf in np.unique(buf["surface"][buf["label"] == cls]):
                on, base = (
                    (buf["surface"] == surf) & (buf["label"] == cls),
                    (buf["surface"] == surf) & (buf["label"] == host),
                )
                if on.sum() and base.sum():
                    assert abs(shading[on].mean() - shading[base].mean()) < 1e-4
    assert np.median(shading_spread) > 0.2  # shading changes RGB a lot in this layout
    assert len(poster_edges) >= 5 and np.median(poster_edges) > 2


def test_ensure_generated_replaces_an_older_generator_version(tmp_path):
    from cen.data.synth.build import GENERATOR_VERSION, MARKER

    root = tmp_path / "synth"
    ensure_generated(root, 3, seed=2, **SMALL)
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "generator_version": GENERATOR_VERSION - 1}))
    (root / "rgb" / "000000.png").write_bytes(b"old")
    ensure_generated(root, 3, seed=2, **SMALL)
    assert read_marker(root)["generator_version"] == GENERATOR_VERSION
    assert (root / "rgb" / "000000.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no temporary or old copy left
    # an older version with *other* settings is still refused
    (root / MARKER).write_text(json.dumps({**marker, "generator_version": 1, "seed": 9}))
    with pytest.raises(FileExistsError, match="other settings"):
        ensure_generated(root, 3, seed=2, **SMALL)
