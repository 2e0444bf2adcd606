"""The config schema: the part every task shares, and how a task's own part joins it.

A config has the groups ``data``, ``model``, ``fusion``, ``optim``, ``loss``, ``train``,
``eval`` and ``run``, plus ``task``, ``modalities`` and ``plugins``. The dataclasses here
hold the keys every task reads. A task adds its own keys to ``data``, ``model``, ``loss`` and
``eval`` through :attr:`cen.tasks.base.Task.config` (``{"data": SegmentationData, ...}``,
dataclasses of its own fields), and :func:`schema_for` makes the schema of that task: each
group the union of the shared fields and the task's. So ``model.ngf`` exists in a translation
config and is an error, naming the task that has it, in a segmentation config.

Loading (YAML files with ``base:`` inheritance, ``key=value`` overrides, value checks) is
:mod:`cen.train.config`'s job; this module is only the shape.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any


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
    dataset: str = "scenes"  # a name of cen.tasks.DATASETS (cen data check --help lists the layouts)
    root: str = "data/generated/scenes"
    train_list: str = "train.txt"
    val_list: str | None = "val.txt"  # model selection (best.pt); must not be the test list
    val_fraction: float = 0.1  # with val_list null: hold out this share of train_list for validation
    val_seed: int = 0  # which samples are held out
    test_list: str = "test.txt"  # final evaluation only
    # training augmentation (the reference: shorter side 350, scale 0.5-2.0, crop 500)
    short_side: int | None = None
    crop_size: Any = None  # crop, padded with ignore: an int (square) or [H, W]; null = whole images
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    num_workers: int = 0
    # sensor corruptions as a training augmentation: null | {p: 0.5, names: [depth_holes, ...], severities: [1, 3]}
    # (cen.data.corruptions; names and severities default to all)
    corruptions: Any = None
    generate: GenerateConfig = field(default_factory=GenerateConfig)


@dataclass
class ModelConfig:
    name: str = "refinenet"  # a name of cen.tasks.MODELS the task builds
    ensemble: bool = True  # a fused output (two or more modalities)
    head: str = "ensemble"  # the fused output: ensemble (alpha, the paper) | concat (a concat-fusion block, Table A)


@dataclass
class FusionConfig:
    """Where modalities meet and what happens there: :class:`cen.FusionSpec` (``cen.convert`` takes it)."""

    strategy: str = "exchange"  # a name of cen.fusion_names(): exchange (paper Eq. 6), sum, fixed, ... (docs/core.md)
    options: dict[str, Any] = field(default_factory=dict)  # the strategy's keyword options, e.g. {fraction: 0.3}
    threshold: float | None = None  # theta; null: the task's (segmentation 2e-2, translation 1e-2)
    points: Any = "auto"  # auto (the registered blocks) | false (private norms, no fusion) | true | [norm names]
    shared_convs: bool = True  # false: private convolutions per modality (one grouped convolution)


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
    # the gamma of every fusion-point norm (all modalities' channels) in a group of its own at this times
    # its rate, in every run alike (cen.tasks.optim)
    gamma_lr_scale: float = 1.0


@dataclass
class LossConfig:
    sparsity_weight: float = 2e-4  # lambda
    sparsity_mode: str = "disjoint"  # disjoint | all | none
    sparsity_per_output: bool = False  # reference: the l1 term once per output (M+1 times)
    sparsity_solver: str = "gradient"  # gradient: l1 in the loss (paper) | proximal: soft-threshold after each step
    # the share of penalised channels to have exchanged at the end: lambda is steered towards it during training
    # (loss.sparsity_weight is its start; cen.train.callbacks.SparsityTarget); null: lambda stays as given
    sparsity_target: float | None = None
    ensemble_weight: float = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 6  # global batch (split over processes)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # epochs between validations (and best.pt selection)
    checkpoint_every_steps: int = 0  # 0: last.pt at epoch ends only
    log_every: int = 10  # steps between loss records in metrics.jsonl / TensorBoard
    max_steps: int = 0  # stop after this many optimiser steps in all (0: run every epoch)
    select: str = "auto"  # branch whose val score picks best.pt; auto: the ensemble if present, else the first output
    select_metric: str = "auto"  # the score of that branch: auto = the task's first score (segmentation miou, ...)
    progress: bool = True
    # auto: the fastest this device runs natively (cen.train.hardware; cen env shows it) | fp32 | bf16 (autocast) |
    # fp16 (autocast + gradient scaling; CUDA only). The schema's default stays fp32 (exact arithmetic for library
    # use); every shipped recipe says auto. The resolved value is what config.yaml and checkpoints record.
    precision: str = "fp32"
    channels_last: Any = False  # true | false | auto: channels-last parameters and inputs (faster convolutions)
    threads: Any = "auto"  # torch threads: auto (OMP_NUM_THREADS, else this process's share of the cores) or an int
    compile: bool = False  # torch.compile (Inductor) the training forward; minutes to compile, needs a C compiler
    # training for missing sensors: null | a probability p (a step keeps a random proper subset with probability
    # p) | {subset: weight} such as {rgb+depth: 2, rgb: 1, depth: 1} (cen.train.modality_dropout)
    modality_dropout: Any = None
    recast_weights: bool = False  # bf16/fp16: backward recasts the weights instead of keeping autocast's copies
    step_in_backward: bool = False  # step each parameter as soon as its gradient is complete, then free it


@dataclass
class EvalConfig:
    batch_size: int = 1
    num_images: int = 4  # prediction images saved after each evaluation
    test: bool = True  # evaluate best.pt on data.test_list at the end


@dataclass
class RunConfig:
    dir: str = "runs"
    name: str = ""  # default: the config file's stem


@dataclass
class Config:
    task: str = "segmentation"  # a name of cen.tasks.TASKS
    plugins: list[str] = field(default_factory=list)  # modules imported first (a user's own tasks, models, fusions)
    modalities: list[str] = field(default_factory=lambda: ["rgb", "depth"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


#: The groups a task may extend, and their shared schema.
TASK_GROUPS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "eval": EvalConfig}

#: Keys renamed in the config's history: old dotted key -> new dotted key (a user's old key is a one-line error
#: naming the new one; an old checkpoint's config is migrated, see cen.train.config.migrate).
RENAMED: dict[str, str] = {
    "model.fusion": "fusion.strategy",
    "model.fusion_options": "fusion.options",
    "model.threshold": "fusion.threshold",
    "model.exchange": "fusion.points",
    "model.shared_convs": "fusion.shared_convs",
}

_SCHEMAS: dict[type, type] = {}


def schema_for(task_cls) -> type:
    """The :class:`Config` of ``task_cls``: each group of :data:`TASK_GROUPS` joined with the task's own part.

    The classes are made once per task and kept as attributes of this module (so configs of
    them pickle, e.g. into data-loader workers).
    """
    if task_cls in _SCHEMAS:
        return _SCHEMAS[task_cls]
    parts = dict(getattr(task_cls, "config", {}) or {})
    unknown = sorted(set(parts) - set(TASK_GROUPS))
    if unknown:
        raise TypeError(
            f"task {task_cls.__name__}.config names groups {unknown}; a task may extend {sorted(TASK_GROUPS)}"
        )
    module = sys.modules[__name__]
    fields = []
    for group, base in TASK_GROUPS.items():
        extra = parts.get(group)
        if extra is None:
            typ = base
        else:
            if not dataclasses.is_dataclass(extra):
                raise TypeError(f"task {task_cls.__name__}.config[{group!r}] must be a dataclass, got {extra!r}")
            clash = {f.name for f in dataclasses.fields(extra)} & {f.name for f in dataclasses.fields(base)}
            if clash:
                raise TypeError(f"task {task_cls.__name__}.config[{group!r}] redefines shared keys {sorted(clash)}")
            typ = dataclasses.make_dataclass(f"_{task_cls.__name__}_{group}", [], bases=(extra, base))
            typ.__module__ = __name__
            setattr(module, typ.__name__, typ)
        fields.append((group, typ, field(default_factory=typ)))
    schema = dataclasses.make_dataclass(f"_{task_cls.__name__}_config", fields, bases=(Config,))
    schema.__module__ = __name__
    setattr(module, schema.__name__, schema)
    _SCHEMAS[task_cls] = schema
    return schema


def task_keys(task_cls) -> set[str]:
    """The dotted keys ``task_cls`` adds (``{"model.ngf", ...}``)."""
    parts = getattr(task_cls, "config", {}) or {}
    return {f"{group}.{f.name}" for group, part in parts.items() for f in dataclasses.fields(part)}
