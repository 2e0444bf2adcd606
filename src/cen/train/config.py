"""Loading a configuration: YAML files with inheritance, ``key=value`` overrides, checks against the task's schema.

A config file is YAML whose keys follow the schema of its task (:mod:`cen.tasks.schema`:
the shared keys plus the task's own). A file may start from another with ``base:
other.yaml`` (a path relative to the file; chains are allowed): the base is loaded first
and the file's keys are merged over it, mappings key by key, lists and scalars replaced
whole. Command-line overrides ``key.sub=value`` (OmegaConf dotlist syntax, e.g.
``modalities=[rgb]``) are merged last.

The task is read first (``task:`` of the last layer that sets it, default
``segmentation``; ``plugins:`` modules are imported before, so a user's own task can be
named); every key is then checked against that task's schema: an unknown key is an error
that lists the valid keys at that level, a key of another task names that task, and a
renamed key names its new name.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cen.core.fusions import FUSIONS, build_fusion, check_fusion_options
from cen.errors import ConfigError
from cen.models.heads import HEADS, check_head
from cen.tasks.registry import DATASETS, MODELS, TASKS
from cen.tasks.schema import RENAMED, Config, StageConfig, schema_for, task_keys

__all__ = ["Config", "ConfigError", "StageConfig", "from_container", "load_config", "migrate", "validate"]

#: Keys whose values are registry names: checked against the registry (one place to add a name).
REGISTERED = {"task": TASKS, "data.dataset": DATASETS, "fusion.strategy": FUSIONS}

#: Shared keys with a closed set of values (a task checks its own in ``check_config``).
CHOICES = {
    "model.head": HEADS,
    "optim.name": ("sgd", "adam"),
    "loss.sparsity_mode": ("disjoint", "all", "none"),
    "loss.sparsity_solver": ("gradient", "proximal"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}

BASE_KEY = "base"
DEFAULT_TASK = "segmentation"


# -- the schema of a task ------------------------------------------------------------------------
def _schema_of(tp: Any):
    """The dataclass a field holds (directly or as list items), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in getattr(tp, "__args__", None) or ():
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _field_types(schema) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _foreign(path: str, task: str) -> str | None:
    """Why ``path`` is not a key here, when another task or a rename explains it."""
    if path in RENAMED:
        return f"config key {path!r} was renamed {RENAMED[path]!r}"
    owners = [name for name in TASKS.names() if name != task and path in task_keys(TASKS.get(name))]
    if owners:
        return f"config key {path!r} belongs to task {owners[0]!r}, not to task {task!r}"
    return None


def _did_you_mean(path: str, valid: list[str], where: str) -> str:
    """`` (did you mean 'x'?)`` for a close key at this level or a renamed one, else empty."""
    import difflib

    prefix = f"{where}." if where else ""
    leaf = path[len(prefix) :]
    candidates = {k: f"{prefix}{k}" for k in valid}  # compared by the last part only
    candidates.update({old[len(prefix) :]: new for old, new in RENAMED.items() if old.startswith(prefix)})
    close = difflib.get_close_matches(leaf, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {candidates[close[0]]!r}?)" if close else ""


def check_keys(data: Any, schema, where: str = "", source: str = "", task: str = DEFAULT_TASK) -> None:
    """Raise :class:`ConfigError` for any key of ``data`` not in ``schema``, naming the valid keys."""
    prefix = f"{source}: " if source else ""
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
            why = _foreign(path, task)
            if why:
                raise ConfigError(prefix + why)
            raise ConfigError(
                f"{prefix}unknown config key {path!r}{_did_you_mean(path, list(types), where)}; valid keys"
                f"{' under ' + repr(where) if where else ''} are: {', '.join(sorted(types))}"
            )
        sub = _schema_of(types[key])
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                check_keys(item, sub, f"{path}[{i}]", source, task)
        elif isinstance(value, dict):
            check_keys(value, sub, path, source, task)


def _schema_at(schema, key: str):
    for part in key.split("."):
        if part.isdigit():
            continue
        sub = _schema_of(_field_types(schema).get(part))
        if sub is None:
            return None
        schema = sub
    return schema


def _check_path(schema, key: str, task: str) -> None:
    """Check a dotted override key (list items by index: ``optim.stages.0.epochs``) against ``schema``."""
    where = ""
    parts = key.split(".")
    i = 0
    while i < len(parts):
        part = parts[i]
        types = _field_types(schema)
        if part not in types:
            path = f"{where}.{part}" if where else part
            why = _foreign(path, task)
            if why:
                raise ConfigError(f"command line: {why}")
            hint = _did_you_mean(path, list(types), where)
            raise ConfigError(
                f"command line: unknown config key {key!r}{hint}; valid keys"
                f"{' under ' + repr(where) if where else ''} are: {', '.join(sorted(types))}"
            )
        where = f"{where}.{part}" if where else part
        sub = _schema_of(types[part])
        i += 1
        if sub is None:
            if getattr(types[part], "__origin__", None) is dict:
                return  # a free-form mapping (fusion.options): any key below it
            if i < len(parts) and not (parts[i].isdigit() and i == len(parts) - 1):
                raise ConfigError(f"command line: {where!r} is a value, not a group; cannot set {key!r}")
            return
        if i < len(parts) and parts[i].isdigit() and getattr(types[part], "__origin__", None) is list:
            where += f".{parts[i]}"
            i += 1
        schema = sub


# -- reading ------------------------------------------------------------------------------------
def _read_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """``[(file, its keys)]`` from the deepest base to ``path`` (keys not yet checked)."""
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
    layers = [] if base is None else _read_layers(path.parent / str(base), (*seen, path))
    return [*layers, (path, data)]


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
        parsed.append((key, value))
    return parsed


def import_plugins(modules: Sequence[str]) -> None:
    """Import the ``plugins`` modules (a user's tasks, models, fusions register themselves on import)."""
    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise ConfigError(f"plugins: cannot import {name!r} ({err}); is it on PYTHONPATH?") from None


def _task_of(layers: list[tuple[Path, dict]], overrides: list[tuple[str, Any]]) -> str:
    plugins = [p for _, data in layers for p in data.get("plugins") or []]
    plugins += [p for key, value in overrides if key == "plugins" for p in (value or [])]
    import_plugins(plugins)
    task = DEFAULT_TASK
    for _, data in layers:
        task = data.get("task", task)
    for key, value in overrides:
        if key == "task":
            task = value
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not valid; expected one of {list(TASKS.names())}")
    return str(task)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved, checked config: schema defaults < ``path`` (with its bases) < ``overrides``."""
    layers = _read_layers(Path(path)) if path is not None else []
    parsed = _parse_overrides(overrides)
    task = _task_of(layers, parsed)
    schema = schema_for(TASKS.get(task))
    for file, data in layers:
        check_keys(data, schema, source=str(file), task=task)
    for key, value in parsed:
        _check_path(schema, key, task)
        sub = _schema_at(schema, key)
        if isinstance(value, dict) and sub is not None:
            check_keys(value, sub, key, "command line", task)
        elif isinstance(value, list) and sub is not None:
            for i, elem in enumerate(value):
                check_keys(elem, sub, f"{key}[{i}]", "command line", task)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), *(data for _, data in layers))
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


# -- checkpoints' configs -------------------------------------------------------------------------
def migrate(data: dict) -> dict:
    """A config saved by an older cen, in today's keys: renamed keys moved (``model.exchange: true`` is
    ``fusion.points: auto``), and keys of other tasks (older configs held every task's keys) dropped."""
    data = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    model = data.get("model") or {}
    fusion = data.setdefault("fusion", {})
    for old, new in RENAMED.items():
        group, key = old.split(".")
        if group == "model" and key in model:
            value = model.pop(key)
            if key == "exchange":
                value = "auto" if value is True else value
            fusion.setdefault(new.split(".")[1], value)
    task = data.get("task", DEFAULT_TASK)
    if task in TASKS:
        own = task_keys(TASKS.get(task))
        others = {k for name in TASKS.names() for k in task_keys(TASKS.get(name))} - own
        for dotted in others:
            group, key = dotted.split(".")
            if isinstance(data.get(group), dict):
                data[group].pop(key, None)
    return data


def from_container(data: dict) -> DictConfig:
    """A config saved in a checkpoint back into its task's schema (older keys migrated, keys checked)."""
    data = migrate(data)
    task = data.get("task", DEFAULT_TASK)
    import_plugins(data.get("plugins") or [])
    if task not in TASKS:
        raise ConfigError(f"checkpoint config: task={task!r} is not valid; expected one of {list(TASKS.names())}")
    schema = schema_for(TASKS.get(task))
    check_keys(data, schema, source="checkpoint config", task=task)
    cfg = OmegaConf.merge(OmegaConf.structured(schema), data)
    validate(cfg)
    return cfg


# -- value checks ---------------------------------------------------------------------------------
def validate(cfg: DictConfig) -> None:
    """Value checks the type schema cannot express: shared ones here, the task's own in its ``check_config``."""
    for key, registry in REGISTERED.items():
        value = OmegaConf.select(cfg, key)
        if value not in registry:
            raise ConfigError(f"{key}={value!r} is not valid; expected one of {list(registry.names())}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not valid; expected one of {list(allowed)}")
    task = TASKS.get(cfg.task)
    if task.model_names and cfg.model.name not in MODELS:  # a task that builds its own model needs no name
        raise ConfigError(f"model.name={cfg.model.name!r} is not valid; expected one of {list(MODELS.names())}")
    t = cfg.train
    if not (isinstance(t.channels_last, bool) or t.channels_last == "auto"):
        raise ConfigError(f"train.channels_last={t.channels_last!r} is not valid; expected true, false or auto")
    if not (t.threads == "auto" or (isinstance(t.threads, int) and not isinstance(t.threads, bool) and t.threads >= 1)):
        raise ConfigError(f"train.threads={t.threads!r} is not valid; expected auto or an int >= 1")
    mods = list(cfg.modalities)
    if not mods:
        raise ConfigError("modalities must name at least one modality, e.g. modalities=[rgb,depth]")
    if len(set(mods)) != len(mods):
        raise ConfigError(f"modalities {mods} name a modality more than once")
    if t.modality_dropout is not None:
        from cen.train.modality_dropout import parse

        value = t.modality_dropout
        parse(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value, mods)
    if not cfg.optim.gamma_lr_scale > 0:
        raise ConfigError(f"optim.gamma_lr_scale={cfg.optim.gamma_lr_scale!r}: expected a learning-rate factor > 0")
    if not cfg.optim.stages:
        raise ConfigError("optim.stages must hold at least one stage {epochs, encoder_lr, decoder_lr}")
    for i, stage in enumerate(cfg.optim.stages):
        if stage.epochs < 1:
            raise ConfigError(f"optim.stages[{i}].epochs must be >= 1, got {stage.epochs}")
    positive = {
        "train.batch_size": t.batch_size,
        "eval.batch_size": cfg.eval.batch_size,
        "train.eval_every": t.eval_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.loss.sparsity_weight < 0:
        raise ConfigError(f"loss.sparsity_weight (lambda) must be >= 0, got {cfg.loss.sparsity_weight}")
    target = cfg.loss.sparsity_target
    if target is not None:
        if not 0 < target < 1:
            raise ConfigError(f"loss.sparsity_target={target!r}: expected a share of the penalised channels in (0, 1)")
        if cfg.loss.sparsity_mode == "none" or cfg.loss.sparsity_weight <= 0:
            raise ConfigError(
                "loss.sparsity_target steers lambda from loss.sparsity_weight, which must be > 0 with "
                f"loss.sparsity_mode disjoint or all (got {cfg.loss.sparsity_weight}, {cfg.loss.sparsity_mode!r})"
            )
    d = cfg.data
    if d.val_list is None and not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_list is null, so data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if d.val_list is not None and d.val_list == d.test_list:
        raise ConfigError(
            f"data.val_list and data.test_list are both {d.val_list!r}: model selection must not see the "
            "test split; point val_list at a held-out part of the training data"
        )
    crop = d.crop_size
    if crop is not None and not (
        (isinstance(crop, int) and crop > 0)
        or (OmegaConf.is_list(crop) and len(crop) == 2 and all(isinstance(c, int) and c > 0 for c in crop))
    ):
        raise ConfigError(f"data.crop_size must be null, a positive int or [H, W], got {crop!r}")
    if not d.scale_min <= d.scale_max:
        raise ConfigError(f"data.scale_min {d.scale_min} > data.scale_max {d.scale_max}")
    _check_fusion(cfg)
    TASKS.get(cfg.task).check_config(cfg)


#: Channels of the norm on which :func:`_check_fusion` tries the strategy (the model's own are checked when built).
_PROBE_CHANNELS = 64


def _check_fusion(cfg: DictConfig) -> None:
    """The ``fusion`` group and ``model.head`` against the strategy, the modalities and ``model.ensemble``."""
    f, mods = cfg.fusion, list(cfg.modalities)
    options = OmegaConf.to_container(f.options)
    try:
        check_fusion_options(f.strategy, options)
    except ValueError as err:
        raise ConfigError(f"fusion.options={options}: {err}") from None
    if f.threshold is not None and f.threshold < 0:
        raise ConfigError(f"fusion.threshold (theta) must be >= 0, got {f.threshold}")
    points = f.points
    if not (points == "auto" or isinstance(points, bool) or OmegaConf.is_list(points)):
        raise ConfigError(f"fusion.points={points!r} is not valid; expected auto, true, false or a list of norm names")
    fraction = options.get("fraction")
    if "fraction" in options and (
        isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1
    ):
        raise ConfigError(f"fusion.options.fraction={fraction!r} is not valid; expected a number in (0, 1)")
    try:
        build_fusion(f.strategy, _PROBE_CHANNELS, len(mods), options)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"fusion.strategy={f.strategy!r} with modalities {mods} and fusion.options={options} "
            f"(tried on a {_PROBE_CHANNELS}-channel norm): {err}"
        ) from None
    m = cfg.model
    try:
        check_head(m.head, len(mods), bool(m.ensemble))
    except ValueError as err:
        raise ConfigError(
            f"model.head={m.head!r} with modalities {mods} and model.ensemble={m.ensemble}: {err}"
        ) from None
