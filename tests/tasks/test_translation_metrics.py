"""Translation metrics: L1/RMSE, FID/KID on streamed batches, the feature extractors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cen.tasks.translation.features import (
    INCEPTION_WEIGHTS_FILE,
    SCENES_FEATURE_NAME,
    ScenesFeatureNet,
    load_scenes_features,
)
from cen.tasks.translation.metrics import (
    TranslationMetrics,
    frechet_distance,
    frechet_distance_of_features,
    to_uint8,
    weights_digest,
)


def scene_images(n: int, size: int = 32, seed: int = 7) -> torch.Tensor:
    """``n`` generated scene RGB images in [-1, 1], (n, 3, size, size)."""
    from cen.data.synth.layouts import render_sample

    rgb = [torch.from_numpy(render_sample(seed, i, size, size)["rgb"]).permute(2, 0, 1) for i in range(n)]
    return torch.stack(rgb).float() / 127.5 - 1


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return scene_images(48)


def stream(metrics: TranslationMetrics, branch_fakes: dict[str, torch.Tensor], real: torch.Tensor, batch: int = 16):
    for b in range(0, len(real), batch):
        r = real[b : b + batch]
        for name, fake in branch_fakes.items():
            metrics.update(name, fake[b : b + batch], r)


def numpy_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 on all of x and y (equal sizes)."""
    d, m = x.shape[1], x.shape[0]

    def k(a, b):
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def test_l1_rmse_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(10, 3, 16, 16, generator=g) * 2 - 1
    fake = torch.rand(10, 3, 16, 16, generator=g) * 2 - 1
    m = TranslationMetrics(["a"], features="scenes")
    stream(m, {"a": fake}, real, batch=4)
    out = m.compute()["a"]
    assert out["l1"] == pytest.approx(float((fake - real).abs().mean()), rel=1e-5)
    assert out["rmse"] == pytest.approx(float((fake - real).pow(2).mean().sqrt()), rel=1e-5)


def test_fid_kid_zero_for_the_same_set_and_larger_for_a_shifted_one(real):
    darker = (real - 0.4).clamp(-1, 1)
    shuffled = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(1))]
    m = TranslationMetrics(["same", "dark", "order"], features="scenes")
    name, digest = m.feature_name.split("@")
    assert name == SCENES_FEATURE_NAME and len(digest) == 8  # the weights' hash: FIDs of other weights differ by name
    other = load_scenes_features()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)  # retrained weights, however slightly: another name
    assert weights_digest(other) != digest == weights_digest(load_scenes_features())
    stream(m, {"same": real, "dark": darker, "order": shuffled}, real)
    out = m.compute()
    assert abs(out["same"]["fid"]) < 1e-4
    # the unbiased KID of a set against itself is slightly negative (the cross term keeps
    # the i = j pairs), the same whatever the order of the images
    assert -2.0 < out["same"]["kid"] < 0 and out["order"]["kid"] == pytest.approx(out["same"]["kid"], rel=1e-4)
    assert abs(out["order"]["fid"]) < 1e-4 and out["order"]["l1"] > 0.1
    assert out["dark"]["fid"] > 100 * abs(out["same"]["fid"]) + 1.0
    assert out["dark"]["kid"] > out["same"]["kid"] + 5.0
    assert out["dark"]["l1"] == pytest.approx(float((darker - real).abs().mean()), rel=1e-5)


def test_kid_is_the_unbiased_polynomial_mmd_of_the_features(real):
    fake = torch.flip(real, dims=[-1]) * 0.8
    m = TranslationMetrics(["a"], features="scenes")
    stream(m, {"a": fake}, real)
    before = torch.get_rng_state()
    out = m.compute()["a"]
    assert torch.equal(before, torch.get_rng_state())  # KID subsets use their own seed
    f_real = m.features(real).double().numpy()
    f_fake = m.features(fake).double().numpy()
    assert f_real.shape == (48, ScenesFeatureNet.num_features)
    expected = numpy_kid(f_real, f_fake)
    assert expected > 0
    # 48 < 1000 images: every subset is the whole set, so KID is exact and its std 0
    assert out["kid"] == pytest.approx(100 * expected, rel=1e-4)
    assert out["kid_std"] < 1e-3 * abs(out["kid"])  # only float32 summation order differs


@pytest.mark.parametrize("n", [12, 60])  # fewer images than features (the n x n route) and more
def test_frechet_of_features_is_the_covariance_formula(n):
    g = torch.Generator().manual_seed(n)
    real = torch.randn(3, n, 40, generator=g, dtype=torch.float64)
    fake = 1.3 * torch.randn(3, n, 40, generator=g, dtype=torch.float64) + 0.2
    cov = lambda x: torch.stack([torch.cov(s.T) for s in x])  # noqa: E731
    expected = frechet_distance(real.mean(1), cov(real), fake.mean(1), cov(fake))
    assert torch.allclose(
        frechet_distance_of_features(real, fake), expected, rtol=1e-6
    )  # eigh of a singular covariance loses digits
    assert float(frechet_distance_of_features(real[0], real[0])) == pytest.approx(0.0, abs=1e-9)


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_images(real):
    fake = (real * 0.7 + 0.1).clamp(-1, 1)
    widths = {}
    for n in (16, 48):
        m = TranslationMetrics(["a"], features="scenes")
        stream(m, {"a": fake[:n]}, real[:n])
        out, again = m.compute()["a"], m.compute()["a"]
        assert out == again  # seeded resamples: the same interval every time
        assert out["fid_low"] < out["fid"] < out["fid_high"]
        assert out["kid_low"] < out["kid"] < out["kid_high"]
        widths[n] = out["fid_high"] - out["fid_low"]
    assert widths[48] < widths[16]


def test_scores_under_bf16_autocast_are_the_fp32_scores(real):
    # the engine evaluates inside autocast when train.precision is bf16; FID/KID must not see it
    fake = torch.flip(real, dims=[-1]) * 0.8
    scores = []
    for precision in ("fp32", "bf16"):
        m = TranslationMetrics(["a"], features="scenes")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            stream(m, {"a": fake}, real)
            scores.append(m.compute()["a"])
    assert scores[1] == scores[0]


def test_inputs_are_quantised_like_saved_pngs():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255, 255]


def test_reset_and_bad_calls(real):
    m = TranslationMetrics(["a", "ensemble"], features="scenes")
    stream(m, {"a": real}, real)
    assert set(m.compute()) == {"a"}  # a branch without images is left out
    m.reset()
    assert m.compute() == {}
    with pytest.raises(ValueError, match="unknown branch 'b'; expected one of"):
        m.update("b", real[:2], real[:2])
    with pytest.raises(ValueError, match=r"branch 'a': fake \(2, 3, 32, 32\) and real \(3, 3, 32, 32\)"):
        m.update("a", real[:2], real[:3])
    m.update("a", real[:1], real[:1])
    with pytest.raises(ValueError, match="need at least 2"):
        m.compute()
    with pytest.raises(ValueError, match="features='vgg' unknown"):
        TranslationMetrics(["a"], features="vgg")
    with pytest.raises(ValueError, match="distinct names"):
        TranslationMetrics(["a", "a"])
    with pytest.raises(ValueError, match="needs weights=PATH"):
        TranslationMetrics(["a"], features="inception")


def test_substitute_extractor_is_trained_not_random():
    net = load_scenes_features()
    assert net.meta["name"] == SCENES_FEATURE_NAME
    imgs = to_uint8(scene_images(6, size=48))
    f = net(imgs)
    assert f.shape == (6, net.num_features) and f.dtype == torch.float32
    # it labels unseen scenes (another seed) much better than the most frequent class does
    from cen.data.synth.layouts import render_sample
    from cen.tasks.translation.features import _cell_targets

    samples = [render_sample(4242, i, 64, 64) for i in range(40)]
    x = torch.stack([torch.from_numpy(s["rgb"]).permute(2, 0, 1) for s in samples]).float() / 127.5 - 1
    y = torch.stack([torch.from_numpy(s["mask"].astype(np.int64)) for s in samples])
    cells = _cell_targets(y, net.meta["num_classes"], 8).argmax(1)
    with torch.no_grad():
        acc = float((net.segment(x).argmax(1) == cells).float().mean())
    baseline = float(torch.bincount(cells.flatten()).max()) / cells.numel()
    assert acc > baseline + 0.15, (acc, baseline)


def test_bad_weights_files_name_the_path(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such file; expected torch-fidelity's Inception"):
        TranslationMetrics(["a"], features="inception", weights=str(missing))
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        TranslationMetrics(["a"], weights=str(missing))  # auto picks inception when weights are given
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"{junk}: not a scenes feature weights file"):
        TranslationMetrics(["a"], features="scenes", weights=str(junk))


def test_inception_weights_of_the_wrong_shape(tmp_path):
    pytest.importorskip("torch_fidelity")
    bad = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(4, 3, 3, 3)}, bad)
    with pytest.raises(ValueError) as err:
        TranslationMetrics(["a"], features="inception", weights=str(bad))
    msg = str(err.value)
    assert str(bad) in msg and INCEPTION_WEIGHTS_FILE in msg and "\n" not in msg


def test_inception_from_a_local_file(tmp_path, monkeypatch):
    """A state dict of the right shapes (random values: the real file cannot be downloaded
    here) loads from disk and gives 2048-d features."""
    tf = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    monkeypatch.setattr(tf, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    state = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(state, path)
    m = TranslationMetrics(["a"], weights=str(path))
    assert m.feature_name.startswith("inception_v3_pool3_2048@") and m.num_features == 2048
    real = scene_images(3, size=24)
    assert m.features(real).shape == (3, 2048)
    m.update("a", real.flip(-1), real)
    assert set(m.compute()["a"]) == {
        "l1",
        "rmse",
        "fid",
        "kid",
        "kid_std",
        "fid_low",
        "fid_high",
        "kid_low",
        "kid_high",
    }


def _ddp_worker(rank: int, world: int, port: int, real: torch.Tensor, fake: torch.Tensor, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = TranslationMetrics(["a"], features="scenes")
        half = len(real) // world
        sl = slice(rank * half, (rank + 1) * half)
        stream(m, {"a": fake[sl]}, real[sl], batch=8)
        out = m.compute()
        if rank == 0:
            queue.put(out)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_gathers_every_process(real):
    import socket

    import torch.multiprocessing as mp

    fake = (real * 0.7 + 0.1).clamp(-1, 1)
    single = TranslationMetrics(["a"], features="scenes")
    stream(single, {"a": fake}, real)
    expected = single.compute()["a"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, real, fake, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = queue.get(timeout=120)["a"]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for key in ("l1", "rmse", "fid", "kid"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
