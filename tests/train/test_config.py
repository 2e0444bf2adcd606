from pathlib import Path

import pytest

from cen.train.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_reference_recipes_hold_the_reference_hyperparameters():
    r101 = load_config(CONFIGS / "nyudv2_r101.yaml")
    assert r101.model.backbone == "resnet101" and r101.data.num_classes == 40
    assert [s.epochs for s in r101.optim.stages] == [100, 100, 100]
    assert [s.encoder_lr for s in r101.optim.stages] == [5e-4, 2.5e-4, 1e-4]
    assert [s.decoder_lr for s in r101.optim.stages] == [3e-3, 1.5e-3, 7e-4]
    assert (r101.optim.name, r101.optim.momentum, r101.optim.weight_decay) == ("sgd", 0.9, 1e-5)
    assert (r101.loss.sparsity_weight, r101.fusion.threshold, r101.train.batch_size) == (2e-4, 2e-2, 6)
    assert (r101.data.crop_size, r101.data.scale_min, r101.data.scale_max) == (500, 0.5, 2.0)
    assert r101.data.val_list is None and r101.data.test_list == "test.txt"  # selection off the test split
    r152 = load_config(CONFIGS / "nyudv2_r152.yaml")  # inherits r101 through `base:`
    assert r152.model.backbone == "resnet152" and [s.epochs for s in r152.optim.stages] == [150] * 3
    assert r152.loss.sparsity_weight == 2e-4 and r152.run.name == "nyudv2_r152"
    sun = load_config(CONFIGS / "sunrgbd_r101.yaml")
    assert (sun.data.dataset, sun.data.num_classes, sun.model.backbone) == ("sunrgbd", 37, "resnet101")
    scenes = load_config(CONFIGS / "scenes.yaml")
    assert scenes.data.dataset == "scenes" and scenes.data.num_classes == 7
    assert str(scenes.data.generate.num) in scenes.data.root  # one cache folder per generation setting


def test_overrides_merge_with_lists_and_indices():
    cfg = load_config(
        CONFIGS / "scenes.yaml", ["modalities=[rgb]", "optim.stages.1.epochs=7", "loss.sparsity_mode=none"]
    )
    assert list(cfg.modalities) == ["rgb"] and cfg.optim.stages[1].epochs == 7 and cfg.loss.sparsity_mode == "none"
    cfg = load_config(None, ["optim.stages=[{epochs: 2, encoder_lr: 0.1}]"])
    assert len(cfg.optim.stages) == 1 and cfg.optim.stages[0].decoder_lr == 3e-3  # schema default filled in


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.bogus=1"], "unknown config key 'train.bogus'; valid keys under 'train' are: batch_size"),
        (["optim.stages=[{epoch: 2}]"], "valid keys under 'optim.stages[0]' are: decoder_lr, encoder_lr, epochs"),
        (
            ["nonsense=1"],
            "valid keys are: data, eval, fusion, loss, modalities, model, optim, plugins, run, task, train",
        ),
        (["task=detection"], "task='detection' is not valid; expected one of ['segmentation'"),
        (["model.name=vgg"], "model.name='vgg' is not valid; expected one of ["),
        (["data.dataset=imagenet"], "data.dataset='imagenet' is not valid; expected one of ["),
        (["task=translation", "model.name=unet", "model.ngf=0"], "model.ngf must be >= 1"),
        (["model.ngf=8"], "config key 'model.ngf' belongs to task 'translation', not to task 'segmentation'"),
        (["model.threshold=0.1"], "config key 'model.threshold' was renamed 'fusion.threshold'"),
        (["train.batch_size=abc"], "train.batch_size"),
        (["model.bn_stats=sometimes"], "expected one of ['train', 'frozen']"),
        (["loss.sparsity_mode=half"], "expected one of ['disjoint', 'all', 'none']"),
        (["eval.upsample=nearest"], "eval.upsample='nearest' is not valid; expected one of ['bilinear', 'bicubic']"),
        (["data.val_list=test.txt"], "model selection must not see the test split"),
        (["modalities=[rgb,rgb]"], "more than once"),
        (["train.batch_size"], "key=value"),
    ],
)
def test_bad_overrides_are_named(overrides, expected):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


def test_unknown_key_in_a_file_names_the_file_and_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: resnet18\n  treshold: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "'model.treshold' (did you mean 'fusion.threshold'?)" in str(err.value)


def test_base_chain_and_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {batch_size: 3, seed: 5}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {batch_size: 4}\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.log_every=2"])
    assert (cfg.train.batch_size, cfg.train.seed, cfg.train.log_every) == (4, 5, 2)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
