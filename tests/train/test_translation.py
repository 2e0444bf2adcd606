"""The translation task on the engine: a CEN U-Net generator and a PatchGAN, two optimisers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

import cen
from cen.atomic import atomic_torch_save
from cen.errors import ConfigError, DataError
from cen.models import PatchDiscriminator, UNetCEN
from cen.tasks import build_task
from cen.train.checkpoint import weights_checkpoint
from cen.train.config import load_config
from cen.train.evaluation import evaluate
from cen.train.runlog import read_metrics
from cen.train.trainer import Trainer
from tests.train.fakes import cen_predict

INPUTS = ("reshading", "edge_texture")


class Domains(Dataset):
    """Target = a fixed mix of the two inputs, all in [-1, 1]; torch-noise augmentation."""

    def __init__(self, n, seed, augment=False, size=32):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.b = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.augment = augment

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        a = self.a[i] + (0.05 * torch.randn_like(self.a[i]) if self.augment else 0)
        return {"reshading": a, "edge_texture": self.b[i], "target": (0.5 * a - 0.5 * self.b[i]).clamp(-1, 1)}


def _data():
    return {"train": Domains(4, 1, augment=True), "val": Domains(3, 2), "test": Domains(3, 3)}


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            "task=translation",
            f"modalities=[{','.join(INPUTS)}]",
            "model.name=unet",
            "model.ngf=4",
            "model.num_downs=5",
            "model.ndf=4",
            "optim.name=adam",
            "optim.weight_decay=0",
            "optim.stages=[{epochs: 2, encoder_lr: 2e-4, decoder_lr: 2e-4}]",
            "loss.sparsity_weight=1e-3",
            "train.batch_size=2",
            "train.progress=false",
            "train.device=cpu",
            "train.log_every=1",
            "eval.batch_size=2",
            "eval.num_images=1",
            "eval.features=scenes",
            f"run.dir={tmp_path}",
            "run.name=run",
            *extra,
        ],
    )


def test_translation_trains_resumes_exactly_and_loads_the_generator(tmp_path, capsys):
    out = Trainer(_cfg(tmp_path, "run.name=full"), datasets=_data()).fit()
    assert set(out["test"]) == {*INPUTS, "ensemble"}
    assert set(out["test"]["ensemble"]) >= {"l1", "rmse", "fid", "kid", "kid_std"}
    table = capsys.readouterr().out
    assert "FID/KID features: scenes" in table and "KID x100" in table
    Trainer(_cfg(tmp_path, "run.name=part", "train.max_steps=3"), datasets=_data()).fit()
    Trainer(_cfg(tmp_path, "run.name=part"), datasets=_data(), resume=True).fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert set(a["models"]) == set(a["optimizers"]) == {"generator", "discriminator"}
    for name in a["models"]:  # dropout, augmentation and both Adams resume exactly
        for key, value in a["models"][name].items():
            assert torch.equal(value, b["models"][name][key]), (name, key)
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert {
        "d_loss",
        "gan/reshading",
        "l1/edge_texture",
        "l1/ensemble",
        "l1_gamma",
        "lr/generator/decoder",
        "lr/discriminator/decoder",
    } <= set(train[0])
    val = [r for r in records if r["kind"] == "val"]
    assert "best_l1" in val[-1] and set(val[-1]["alpha"]) == set(INPUTS)
    l1 = [r["scores"]["ensemble"]["l1"] for r in val]
    assert out["best_epoch"] == 1 + l1.index(min(l1))  # lower L1 is better
    assert any((tmp_path / "full" / "images").rglob("*.png"))
    generator = cen.load_model(tmp_path / "full" / "best.pt")
    assert isinstance(generator, UNetCEN) and generator.names == INPUTS
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["models"]["generator"]
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in best.items())


def test_generator_mode_is_an_evaluation_option(tmp_path):
    scores = {}
    for mode in ("eval", "train"):
        cfg = _cfg(tmp_path, f"eval.generator_mode={mode}", "eval.num_images=0")
        task = build_task(cfg)
        torch.manual_seed(0)
        models = task.build_models()
        task.setup(models)
        loader = torch.utils.data.DataLoader(Domains(3, 2), batch_size=3)
        scores[mode] = evaluate(task, models, loader, device=torch.device("cpu"), progress=False)
        assert models["generator"].training  # its mode is put back
    assert scores["eval"]["ensemble"]["l1"] != scores["train"]["ensemble"]["l1"]


def test_converted_translation_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    g = UNetCEN(list(INPUTS), ngf=4, num_downs=5, threshold=0.03)
    config = {
        "task": "translation",
        "modalities": list(INPUTS),
        "data": {"dataset": "taskonomy", "target": "rgb"},
        "model": {"name": "unet", "ngf": 4, "num_downs": 5, "ndf": 4, "threshold": 0.03, "ensemble": True},
    }
    atomic_torch_save(weights_checkpoint(g.state_dict(), config), tmp_path / "g.pt")
    loaded = cen.load_model(tmp_path / "g.pt").eval()
    x = {k: torch.rand(1, 3, 32, 32) * 2 - 1 for k in INPUTS}
    with torch.no_grad():
        assert torch.equal(g.eval()(x)["ensemble"], loaded(x)["ensemble"])
    assert loaded.threshold == 0.03


def test_translation_bad_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="data.target='reshading' is also an input"):
        Trainer(_cfg(tmp_path, "data.target=reshading"), datasets=_data())
    with pytest.raises(ConfigError, match="model.name='tiny' is not a model of task 'translation'; expected one of"):
        build_task(_cfg(tmp_path, "model.name=tiny"))
    with pytest.raises(DataError, match="data.dataset='nyudv2' has no data for task 'translation'"):
        build_task(_cfg(tmp_path, "data.dataset=nyudv2", f"data.root={tmp_path}")).build_datasets()
    models = build_task(_cfg(tmp_path)).build_models()
    assert isinstance(models["discriminator"], PatchDiscriminator) and models["discriminator"].in_channels == 6


def test_threshold_defaults_to_the_tasks_and_is_recorded(tmp_path):
    assert load_config(None, []).fusion.threshold is None  # "the task's"
    assert build_task(_cfg(tmp_path)).cfg.fusion.threshold == 1e-2
    assert build_task(load_config(None, ["model.name=tiny"])).cfg.fusion.threshold == 2e-2
    assert build_task(_cfg(tmp_path, "fusion.threshold=0.05")).build_model().threshold == 0.05


def test_cen_eval_rejects_segmentation_options_for_translation(tmp_path, capsys):
    from cen.cli.main import main

    torch.manual_seed(0)
    g = build_task(_cfg(tmp_path)).build_model()
    config = {"task": "translation", "modalities": list(INPUTS), "model": {"name": "unet", "ngf": 4, "num_downs": 5}}
    atomic_torch_save(weights_checkpoint(g.state_dict(), config), tmp_path / "g.pt")
    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text(
        f"task: translation\nmodalities: [{', '.join(INPUTS)}]\nmodel: {{name: unet, ngf: 4, num_downs: 5}}\n"
    )
    assert main(["eval", str(cfg_file), "--checkpoint", str(tmp_path / "g.pt"), "--scales", "1", "0.5"]) == 2
    assert "--scales does not apply to task 'translation'" in capsys.readouterr().err


def test_cen_predict_writes_every_branch_of_a_translation_checkpoint(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from cen.tasks.translation.task import image_array

    torch.manual_seed(0)
    g = UNetCEN(list(INPUTS), ngf=4, num_downs=5)
    config = {"task": "translation", "modalities": list(INPUTS), "model": {"name": "unet", "ngf": 4, "num_downs": 5}}
    atomic_torch_save(weights_checkpoint(g.state_dict(), config), tmp_path / "g.pt")
    rng = np.random.default_rng(0)
    shade = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    edges = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    Image.fromarray(shade).save(tmp_path / "shade.png")
    Image.fromarray(edges).save(tmp_path / "edges.png")
    out = tmp_path / "generated"
    assert (
        cen_predict(
            tmp_path / "g.pt",
            "--input",
            f"reshading={tmp_path / 'shade.png'}",
            "--input",
            f"edge_texture={tmp_path / 'edges.png'}",
            "--out",
            out,
        )
        == 0
    )
    # the loaders' linear decoding: 8-bit / 255, 16-bit / 65535, grey to 3 channels, then [-1, 1]
    x = {
        "reshading": torch.from_numpy(shade / 255.0).float().expand(3, -1, -1)[None] * 2 - 1,
        "edge_texture": torch.from_numpy(edges / 65535.0).float().expand(3, -1, -1)[None] * 2 - 1,
    }
    with torch.no_grad():
        want = g.eval()(x)
    for branch in (*INPUTS, "ensemble"):
        got = np.asarray(Image.open(out / f"{branch}.png"))
        assert got.shape == (32, 32, 3)
        assert np.abs(got.astype(int) - image_array(want[branch][0]).astype(int)).max() <= 1, branch
    assert cen_predict(tmp_path / "g.pt", "--input", f"curvature={tmp_path / 'shade.png'}", "--out", out) == 2
    assert "'curvature'" in capsys.readouterr().err


def test_reference_decoding_selects_the_reference_transforms(tmp_path):
    from cen.data.transforms import PILBilinearResize
    from cen.tasks import build_task

    def steps(transform):
        return [type(t) for t in transform.transforms]

    ref = build_task(_cfg(tmp_path, "data.decode=reference", "data.crop_size=32", "data.load_size=36"))
    lin = build_task(_cfg(tmp_path, "data.crop_size=32", "data.load_size=36"))
    assert PILBilinearResize in steps(ref.eval_transform()) and PILBilinearResize not in steps(lin.eval_transform())
