"""Training configuration: a typed schema, YAML files with inheritance, ``key=value`` overrides.

A config file is YAML whose keys follow :class:`Config`. It may start from
another file with ``base: other.yaml`` (a path relative to the file; chains are
allowed): the base is loaded first and the file's keys are merged over it,
mappings key by key, lists and scalars replaced whole. Command-line overrides
``key.sub=value`` (OmegaConf dotlist syntax, e.g. ``modalities=[rgb]``) are
merged last. Every key is checked against the schema; an unknown key is an
error that lists the valid keys at that level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cen.core.fusions import FUSIONS, build_fusion, check_fusion_options
from cen.data.constants import IGNORE_INDEX
from cen.models.heads import HEADS, check_head
from cen.tasks.errors import ConfigError
from cen.tasks.registry import DATASETS, MODELS, TASKS

__all__ = ["Config", "ConfigError", "from_container", "load_config", "validate"]


@dataclass
class GenerateConfig:
    """Generated scenes (``data.dataset: scenes``): made once into ``data.root`` and cached."""

    num: int = 600
    height: int = 120
    width: int = 160
    seed: int = 0
    workers: int = 2  # processes rendering the scenes


@dataclass
class DataConfig:
    dataset: str = "scenes"  # a name of cen.tasks.DATASETS: scenes | nyudv2 | sunrgbd | taskonomy | folder
    root: str = "data/generated/scenes"
    train_list: str = "train.txt"
    val_list: str | None = "val.txt"  # model selection (best.pt); must not be the test list
    val_fraction: float = 0.1  # with val_list null: hold out this share of train_list for validation
    val_seed: int = 0  # which samples are held out
    test_list: str = "test.txt"  # final evaluation only
    num_classes: int = 40  # segmentation
    target: str | None = "rgb"  # translation: the target domain (sample key "target")
    decode: str = "linear"  # translation (taskonomy, scenes): linear | reference (cen.data.Taskonomy decode=)
    load_size: int | None = None  # translation: resize to this square before the random crop (null: crop_size)
    # training augmentation (the reference: shorter side 350, scale 0.5-2.0, crop 500)
    short_side: int | None = None
    crop_size: Any = None  # crop, padded with ignore: an int (square) or [H, W]; null = whole images
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    num_workers: int = 0
    cache_dir: str | None = None  # segmentation: folder keeping decoded pixels (each PNG decoded once); null: none
    num_points: int = 1024  # presence: points sampled from each depth map (a fixed N per cloud)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


@dataclass
class ModelConfig:
    name: str = "refinenet"  # a name of cen.tasks.MODELS: refinenet | tiny (a small smoke-test network) | unet
    backbone: str = "resnet18"
    pretrained: str | None = None  # None, "imagenet" (torchvision weights) or a local file
    threshold: float | None = None  # theta; null: the task's (segmentation 2e-2, translation 1e-2)
    exchange: bool = True
    ensemble: bool = True
    head: str = "ensemble"  # the fused output: ensemble (alpha, the paper) | concat (a concat-fusion block, Table A)
    fusion: str = "exchange"  # the strategy at the fusion points, a name of cen.fusion_names() (docs/core.md)
    fusion_options: dict[str, Any] = field(default_factory=dict)  # its keyword options, e.g. {fraction: 0.3}
    shared_convs: bool = True  # false: private convolutions per modality (one grouped convolution)
    decoder_widths: list[int] | None = None  # RefineNet stage widths, deepest first; null = the reference's
    decoder: str = "refinenet"  # refinenet (the reference's, any backbone) | mlp (SegFormer's all-MLP decoder)
    decoder_dim: int | None = None  # mlp decoder: its common width; null = 256 (SegFormer B0/B1; B2-B5 use 768)
    bn_stats: str = "train"  # train | frozen (reference: norms in eval mode, gamma/beta still train)
    ngf: int = 64  # translation: generator width (pix2pix U-Net)
    num_downs: int = 8  # translation: U-Net levels (input sides must be divisible by 2**num_downs)
    ndf: int = 64  # translation: discriminator width (PatchGAN)
    embed_dim: int = 128  # presence: common width D of the encoders' embeddings and the shared MLP


@dataclass
class StageConfig:
    epochs: int = 1
    encoder_lr: float = 5e-4
    decoder_lr: float = 3e-3


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    momentum: float = 0.9
    weight_decay: float = 1e-5
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    betas: list[float] | None = None  # Adam's; null: the task's (segmentation torch's, translation [0.5, 0.999])
    reset_each_stage: bool = True  # fresh optimiser state per stage, as the reference re-creates them
    gamma_lr_scale: float = 1.0  # the exchanging norms' gamma in a group of their own at this times their lr


@dataclass
class LossConfig:
    sparsity_weight: float = 2e-4  # lambda
    sparsity_mode: str = "disjoint"  # disjoint | all | none
    sparsity_per_output: bool = False  # reference: the l1 term once per output (M+1 times)
    sparsity_solver: str = "gradient"  # gradient: l1 in the loss (paper) | proximal: soft-threshold after each step
    ensemble_weight: float = 1.0
    l1_weight: float = 100.0  # translation: weight of the L1 to the target per branch (pix2pix)
    ignore_index: int = IGNORE_INDEX
    resize: str = (
        "logits"  # logits: upsample logits (bilinear) to the mask | masks: downsample masks (nearest), as the reference
    )


@dataclass
class TrainConfig:
    batch_size: int = 6  # global batch (split over processes)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # epochs between validations (and best.pt selection)
    checkpoint_every_steps: int = 0  # 0: last.pt at epoch ends only
    log_every: int = 10  # steps between loss records in metrics.jsonl / TensorBoard
    max_steps: int = 0  # stop after this many optimiser steps in all (0: run every epoch)
    select: str = "auto"  # branch whose val score picks best.pt; auto: ensemble if present, else the first modality
    select_metric: str = "auto"  # the score of that branch: auto = the task's (segmentation miou, translation l1)
    progress: bool = True
    precision: str = "fp32"  # fp32 | bf16 (autocast; the CPU's choice) | fp16 (autocast + gradient scaling; CUDA only)
    channels_last: bool = False  # channels-last parameters and inputs (faster convolutions, most of all in bf16/fp16)
    compile: bool = False  # torch.compile (Inductor) the training forward; minutes to compile, needs a C compiler
    recast_weights: bool = False  # bf16/fp16: backward recasts the weights instead of keeping autocast's copies
    step_in_backward: bool = False  # step each parameter as soon as its gradient is complete, then free it


@dataclass
class EvalConfig:
    batch_size: int = 1
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    upsample: str = "bilinear"  # logits to the mask size: bilinear | bicubic (the reference's cv2.INTER_CUBIC)
    num_images: int = 4  # prediction images saved after each evaluation
    test: bool = True  # evaluate best.pt on data.test_list at the end
    generator_mode: str = "eval"  # translation: run the generator in eval mode, or train mode as the reference
    features: str = "auto"  # translation FID/KID features: auto | inception | scenes
    feature_weights: str | None = None  # local weights file of those features (inception needs one)


@dataclass
class RunConfig:
    dir: str = "runs"
    name: str = ""  # default: the config file's stem


@dataclass
class Config:
    task: str = "segmentation"  # a name of cen.tasks.TASKS
    modalities: list[str] = field(default_factory=lambda: ["rgb", "depth"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


#: Keys whose values are registry names: checked against the registry (one place to add a name).
REGISTERED = {"task": TASKS, "data.dataset": DATASETS, "model.name": MODELS, "model.fusion": FUSIONS}

CHOICES = {
    "model.bn_stats": ("train", "frozen"),
    "model.head": HEADS,
    "optim.name": ("sgd", "adam"),
    "loss.sparsity_mode": ("disjoint", "all", "none"),
    "loss.sparsity_solver": ("gradient", "proximal"),
    "loss.resize": ("logits", "masks"),
    "eval.upsample": ("bilinear", "bicubic"),
    "eval.generator_mode": ("eval", "train"),
    "eval.features": ("auto", "inception", "scenes"),
    "train.precision": ("fp32", "bf16", "fp16"),
}

BASE_KEY = "base"


def _schema_of(tp: Any):
    """The dataclass a field holds (directly or as list items), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = getattr(tp, "__args__", None) or ()
    for arg in args:
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _field_types(schema) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def check_keys(data: Any, schema=Config, where: str = "", source: str = "") -> None:
    """Raise :class:`ConfigError` for any key of ``data`` not in ``schema``, naming the valid keys."""
    if not isinstance(data, dict):
        if where:
            return
        raise ConfigError(
            f"{source or 'config'}: expected a mapping of keys at the top level, got {type(data).__name__}"
        )
    types = _field_types(schema)
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in types:
            raise ConfigError(
                f"{source + ': ' if source else ''}unknown config key {path!r}; valid keys"
                f"{' under ' + repr(where) if where else ''} are: {', '.join(sorted(types))}"
            )
        sub = _schema_of(types[key])
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                check_keys(item, sub, f"{path}[{i}]", source)
        elif isinstance(value, dict):
            check_keys(value, sub, path, source)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config inheritance loops: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001  (yaml syntax errors of any kind)
        raise ConfigError(f"{path}: not a valid YAML config: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    check_keys(data, source=str(path))
    if base is None:
        return data
    parent = _read_yaml((path.parent / str(base)), (*seen, path))
    return OmegaConf.to_container(OmegaConf.merge(parent, data), resolve=False)


def _check_path(key: str) -> None:
    """Check a dotted override key (list items by index: ``optim.stages.0.epochs``) against the schema."""
    schema, where = Config, ""
    parts = key.split(".")
    i = 0
    while i < len(parts):
        part = parts[i]
        types = _field_types(schema)
        if part not in types:
            raise ConfigError(
                f"command line: unknown config key {key!r}; valid keys"
                f"{' under ' + repr(where) if where else ''} are: {', '.join(sorted(types))}"
            )
        where = f"{where}.{part}" if where else part
        sub = _schema_of(types[part])
        i += 1
        if sub is None:
            if getattr(types[part], "__origin__", None) is dict:
                return  # a free-form mapping (model.fusion_options): any key below it
            if i < len(parts) and not (parts[i].isdigit() and i == len(parts) - 1):
                raise ConfigError(f"command line: {where!r} is a value, not a group; cannot set {key!r}")
            return
        if i < len(parts) and parts[i].isdigit() and getattr(types[part], "__origin__", None) is list:
            where += f".{parts[i]}"
            i += 1
        schema = sub


def _parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip().lstrip("+")
        if not eq or not key:
            raise ConfigError(f"overrides must look like key=value (e.g. train.batch_size=4), got {item!r}")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse override {item!r}: {exc}") from None
        _check_path(key)
        if isinstance(value, dict) and _schema_at(key) is not None:
            check_keys(value, _schema_at(key), key, "command line")
        elif isinstance(value, list) and _schema_at(key) is not None:
            for i, elem in enumerate(value):
                check_keys(elem, _schema_at(key), f"{key}[{i}]", "command line")
        parsed.append((key, value))
    return parsed


def _schema_at(key: str):
    schema = Config
    for part in key.split("."):
        if part.isdigit():
            continue
        sub = _schema_of(_field_types(schema).get(part))
        if sub is None:
            return None
        schema = sub
    return schema


def validate(cfg: DictConfig) -> None:
    """Value checks the type schema cannot express."""
    for key, registry in REGISTERED.items():
        value = OmegaConf.select(cfg, key)
        if value not in registry:
            raise ConfigError(f"{key}={value!r} is not valid; expected one of {list(registry.names())}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not valid; expected one of {list(allowed)}")
    mods = list(cfg.modalities)
    if not mods:
        raise ConfigError("modalities must name at least one modality, e.g. modalities=[rgb,depth]")
    if len(set(mods)) != len(mods):
        raise ConfigError(f"modalities {mods} name a modality more than once")
    if not cfg.optim.gamma_lr_scale > 0:
        raise ConfigError(f"optim.gamma_lr_scale={cfg.optim.gamma_lr_scale!r}: expected a learning-rate factor > 0")
    if not cfg.optim.stages:
        raise ConfigError("optim.stages must hold at least one stage {epochs, encoder_lr, decoder_lr}")
    for i, stage in enumerate(cfg.optim.stages):
        if stage.epochs < 1:
            raise ConfigError(f"optim.stages[{i}].epochs must be >= 1, got {stage.epochs}")
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "eval.batch_size": cfg.eval.batch_size,
        "data.num_classes": cfg.data.num_classes,
        "train.eval_every": cfg.train.eval_every,
        "model.ngf": cfg.model.ngf,
        "model.num_downs": cfg.model.num_downs,
        "model.ndf": cfg.model.ndf,
        "data.num_points": cfg.data.num_points,
        "model.embed_dim": cfg.model.embed_dim,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.loss.sparsity_weight < 0:
        raise ConfigError(f"loss.sparsity_weight (lambda) must be >= 0, got {cfg.loss.sparsity_weight}")
    if cfg.model.threshold is not None and cfg.model.threshold < 0:
        raise ConfigError(f"model.threshold (theta) must be >= 0, got {cfg.model.threshold}")
    if not cfg.eval.scales or any(s <= 0 for s in cfg.eval.scales):
        raise ConfigError(f"eval.scales must be positive numbers, got {list(cfg.eval.scales)}")
    if cfg.data.val_list is None and not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_list is null, so data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.data.val_list is not None and cfg.data.val_list == cfg.data.test_list:
        raise ConfigError(
            f"data.val_list and data.test_list are both {cfg.data.val_list!r}: model selection must not see the "
            "test split; point val_list at a held-out part of the training data"
        )
    crop = cfg.data.crop_size
    if crop is not None and not (
        (isinstance(crop, int) and crop > 0)
        or (OmegaConf.is_list(crop) and len(crop) == 2 and all(isinstance(c, int) and c > 0 for c in crop))
    ):
        raise ConfigError(f"data.crop_size must be null, a positive int or [H, W], got {crop!r}")
    if not cfg.data.scale_min <= cfg.data.scale_max:
        raise ConfigError(f"data.scale_min {cfg.data.scale_min} > data.scale_max {cfg.data.scale_max}")
    _check_fusion(cfg)


#: Channels of the norm on which :func:`_check_fusion` tries the strategy (the model's own are checked when built).
_PROBE_CHANNELS = 64


def _check_fusion(cfg: DictConfig) -> None:
    """``model.fusion_options`` and ``model.head`` against the strategy, the modalities and ``model.ensemble``."""
    m, mods = cfg.model, list(cfg.modalities)
    options = OmegaConf.to_container(m.fusion_options)
    try:
        check_fusion_options(m.fusion, options)
    except ValueError as err:
        raise ConfigError(f"model.fusion_options={options}: {err}") from None
    fraction = options.get("fraction")
    if "fraction" in options and (
        isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1
    ):
        raise ConfigError(f"model.fusion_options.fraction={fraction!r} is not valid; expected a number in (0, 1)")
    try:
        build_fusion(m.fusion, _PROBE_CHANNELS, len(mods), options)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"model.fusion={m.fusion!r} with modalities {mods} and model.fusion_options={options} "
            f"(tried on a {_PROBE_CHANNELS}-channel norm): {err}"
        ) from None
    try:
        check_head(m.head, len(mods), bool(m.ensemble))
    except ValueError as err:
        raise ConfigError(
            f"model.head={m.head!r} with modalities {mods} and model.ensemble={m.ensemble}: {err}"
        ) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved, checked config: schema defaults < ``path`` (with its bases) < ``overrides``."""
    layers = [OmegaConf.structured(Config)]
    if path is not None:
        layers.append(_read_yaml(Path(path)))
    parsed = _parse_overrides(overrides)
    try:
        cfg = OmegaConf.merge(*layers)
        for key, value in parsed:
            OmegaConf.update(cfg, key, value, merge=True)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()
        raise ConfigError(f"{path or 'config'}: {' | '.join(line.strip() for line in msg if line.strip())}") from None
    if not cfg.run.name:
        cfg.run.name = Path(path).stem if path is not None else "run"
    validate(cfg)
    return cfg


def from_container(data: dict) -> DictConfig:
    """A config saved in a checkpoint back into the schema (keys checked)."""
    check_keys(data, source="checkpoint config")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), data)
    validate(cfg)
    return cfg
