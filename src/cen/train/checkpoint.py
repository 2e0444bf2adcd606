"""Checkpoints: training state for exact resume, weights with their config, one way to load a model.

Every file is a dict saved with :func:`torch.save` holding only tensors and plain
Python values (so it loads with ``weights_only=True``). Two kinds:

* **training** (``cen train``: ``last.pt``, ``best.pt``)::

    {"format": "cen-checkpoint", "version": 2, "kind": "training",
     "models": {name: state_dict}, "optimizers": {name: state_dict}, "config": {...},
     "progress": {"epoch", "batch", "global_step", "best_score", "best_epoch"},
     "rng": {"torch", "cuda", "numpy", "python"}, "meta": {"task", "modalities", ...}}

  ``config`` is the full resolved config; ``models`` holds every network of the task
  (segmentation: ``model``; translation: ``generator`` and ``discriminator``).
  Version 1 files (one ``model`` and one ``optimizer``) are still read.
* **weights** (``cen convert-checkpoint``)::

    {"format": "cen-checkpoint", "version": 2, "kind": "weights", "model": state_dict,
     "config": {partial config: task, modalities, data.num_classes, model.*}}

  The partial config is merged over the schema defaults. The older converted form
  ``{"state_dict", "config": {backbone, num_classes, modalities, threshold, ...}}`` is
  still read.

:func:`load_model` rebuilds the inference model of any of them from the config in
the file and loads its weights strictly. ``progress.batch`` is the number of batches
already done in ``progress.epoch`` (0 at an epoch boundary); resuming continues from
the next batch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cen.errors import UserError

FORMAT = "cen-checkpoint"
VERSION = 2
TRAINING, WEIGHTS = "training", "weights"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: unreadable, foreign, or for another model."""


# -- random number generators ------------------------------------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"])
    )
    random.setstate(_to_tuples(state["python"]))


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


# -- reading ---------------------------------------------------------------
def _read(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (truncated zip, pickle garbage, unsupported globals ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupted or not written by torch.save): {first[:300]}"
        ) from None


def _check_marker(obj: Any, path: Path) -> None:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            keys = list(obj)
            hint = (
                f" It looks like a bare state dict ({len(keys)} tensors, e.g. {keys[:3]}); a state dict of the "
                "reference code is turned into a cen checkpoint by `cen convert-checkpoint`."
            )
        raise CheckpointError(f"{path} is not a cen checkpoint (no format={FORMAT!r} marker).{hint}")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj['version']}; this cen reads up to {VERSION}")


def _kind(obj: Mapping) -> str:
    return obj.get("kind", TRAINING if "progress" in obj else WEIGHTS)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read and check a cen *training* checkpoint, raising :class:`CheckpointError` with the reason."""
    path = Path(path)
    obj = _read(path, map_location)
    _check_marker(obj, path)
    if _kind(obj) != TRAINING:
        raise CheckpointError(f"{path} holds weights only (kind {_kind(obj)!r}), not a training state to resume")
    need = ("models", "progress") if obj.get("version", 1) >= 2 else ("model", "progress")
    missing = [k for k in need if k not in obj]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}; it is incomplete")
    return obj


def model_states(ckpt: Mapping, primary: str) -> dict[str, Mapping[str, torch.Tensor]]:
    """``{model name: state_dict}`` of a training checkpoint (version 1: its one model is ``primary``)."""
    return dict(ckpt["models"]) if "models" in ckpt else {primary: ckpt["model"]}


def optimizer_states(ckpt: Mapping, primary: str) -> dict[str, Mapping]:
    """``{optimiser name: state_dict}`` of a training checkpoint (version 1: its one optimiser is ``primary``)."""
    if "optimizers" in ckpt:
        return dict(ckpt["optimizers"])
    return {primary: ckpt["optimizer"]} if "optimizer" in ckpt else {}


def weights_checkpoint(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    """A *weights* checkpoint: a model's ``state`` and the (partial) ``config`` that rebuilds it."""
    return {"format": FORMAT, "version": VERSION, "kind": WEIGHTS, "model": dict(state), "config": dict(config)}


_LEGACY_MODEL_KEYS = ("backbone", "threshold", "exchange", "ensemble", "decoder_widths")


def _legacy_config(old: Mapping) -> dict:
    """The config dict of a converted checkpoint of the first format (flat RefineNet settings)."""
    model = {"name": "refinenet", **{k: old[k] for k in _LEGACY_MODEL_KEYS if k in old}}
    out: dict = {"task": "segmentation", "model": model}
    if "modalities" in old:
        out["modalities"] = list(old["modalities"])
    if "num_classes" in old:
        out["data"] = {"num_classes": int(old["num_classes"])}
    return out


def read_weights(path: str | Path, map_location: Any = "cpu") -> tuple[Mapping[str, torch.Tensor], DictConfig]:
    """``(state_dict of the inference model, config)`` of any checkpoint the project writes.

    The config is the one stored in the file merged over the schema defaults, with
    ``model.pretrained`` cleared (the weights come from the file).
    """
    from cen.tasks import TASKS
    from cen.train.config import ConfigError, from_container

    path = Path(path)
    obj = _read(path, map_location)
    if (
        isinstance(obj, dict)
        and "format" not in obj
        and isinstance(obj.get("state_dict"), dict)
        and isinstance(obj.get("config"), dict)
    ):
        state, data = obj["state_dict"], _legacy_config(obj["config"])
    else:
        _check_marker(obj, path)
        data = obj.get("config")
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} holds no config; cannot tell which model to build")
        if _kind(obj) == WEIGHTS:
            if "model" not in obj:
                raise CheckpointError(f"{path} lacks the entry 'model'; it is incomplete")
            state = obj["model"]
        else:
            primary = TASKS.get(data.get("task", "segmentation")).primary
            states = model_states(obj, primary)
            if primary not in states:
                raise CheckpointError(f"{path} holds the models {sorted(states)}, not {primary!r}")
            state = states[primary]
    try:
        cfg = from_container(data)
    except (ConfigError, UserError) as err:
        raise CheckpointError(f"{path}: its config does not fit this cen: {err}") from None
    if "pretrained" in cfg.model:
        cfg.model.pretrained = None
    return state, cfg


def load_model_with_config(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, DictConfig]:
    """:func:`load_model` and the config the model was built from."""
    from cen.tasks import build_task

    state, cfg = read_weights(path, map_location)
    model = build_task(cfg).build_model()
    load_model_state(model, state, str(path))
    return model, cfg


def load_model(path: str | Path, map_location: Any = "cpu") -> nn.Module:
    """The inference model of a checkpoint written by ``cen train`` or ``cen convert-checkpoint``.

    The model is built from the configuration stored in the file (task, modalities,
    classes, backbone, decoder widths, threshold, exchange, ensemble, ...) and its
    weights are loaded strictly: a missing, unexpected or misshapen tensor raises
    :class:`CheckpointError` naming it. The model is returned in training mode on the CPU
    (tensors are loaded with ``map_location``); call ``.eval()`` for inference.
    """
    return load_model_with_config(path, map_location)[0]


def describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 10) -> list[str]:
    """Human-readable differences between ``model``'s state dict and ``state`` (empty if they fit)."""
    from cen.models.state_dicts import key_mismatch

    mismatch = key_mismatch(model.state_dict(), state, given_as="checkpoint")

    def cut(items):
        return ", ".join(items[:limit]) + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")

    labelled = zip(("missing from the checkpoint", "not in the model", "shape mismatches"), mismatch)
    return [f"{label} ({len(items)}): {cut(items)}" for label, items in labelled if items]


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` strictly, with an error naming the mismatched keys."""
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model (another architecture, number of modalities or classes?): "
            + "; ".join(problems)
        )
    model.load_state_dict(state)


#: ``meta`` keys of older checkpoints -> today's.
_OLD_META = {"fusion": "fusion.strategy", "fusion_options": "fusion.options", "shared_convs": "fusion.shared_convs"}


def check_meta(meta: Mapping, expected: Mapping[str, Any], source: str) -> None:
    """Compare a checkpoint's ``meta`` (modalities, num_classes, backbone, fusion settings ...) with the config's."""
    meta = {_OLD_META.get(k, k): v for k, v in meta.items()}
    diffs = [
        f"{k}: checkpoint {meta[k]!r} vs config {v!r}"
        for k, v in expected.items()
        if k in meta and meta[k] is not None and v is not None and meta[k] != v
    ]
    if diffs:
        raise CheckpointError(f"{source} was trained with another setup: {'; '.join(diffs)}")
