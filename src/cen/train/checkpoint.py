"""Training checkpoints: written atomically, read with clear errors, RNG states included.

A checkpoint is a dict saved with :func:`torch.save` holding only tensors and
plain Python values (so it loads with ``weights_only=True``)::

    {"format": "cen-checkpoint", "version": 1,
     "model": state_dict, "optimizer": state_dict, "config": {...},
     "progress": {"epoch", "batch", "global_step", "best_score", "best_epoch"},
     "rng": {"torch", "cuda", "numpy", "python"}, "meta": {"modalities", "num_classes", ...}}

``progress.batch`` is the number of batches already done in ``progress.epoch``
(0 at an epoch boundary); resuming continues from the next batch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


FORMAT = "cen-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, foreign, or for another model."""




# -- random number generators ------------------------------------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"]))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


# -- reading ---------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read and check a cen checkpoint, raising :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, unsupported globals ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupted or not written by torch.save): {first[:300]}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            keys = list(obj)
            hint = (
                f" It looks like a bare state dict ({len(keys)} tensors, e.g. {keys[:3]}); a state dict of the "
                "reference code is turned into a cen checkpoint by `cen convert-checkpoint`."
            )
        raise CheckpointError(f"{path} is not a cen training checkpoint (no format={FORMAT!r} marker).{hint}")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj['version']}; this cen reads up to {VERSION}")
    missing = [k for k in ("model", "progress") if k not in obj]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}; it is incomplete")
    return obj


def load_model_weights(path: str | Path, map_location: Any = "cpu") -> tuple[dict, dict]:
    """``(state_dict, meta)`` from a cen training checkpoint or a converted reference checkpoint.

    Converted reference checkpoints are those written by ``cen convert-checkpoint``.
    """
    path = Path(path)
    try:
        return _load_weights(path, map_location)
    except CheckpointError as err:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception:
            raise err from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and isinstance(obj.get("config"), dict):
            cfg = obj["config"]
            meta = {k: cfg[k] for k in ("backbone", "modalities", "num_classes") if k in cfg}
            return obj["state_dict"], meta
        raise err from None


def _load_weights(path: Path, map_location) -> tuple[dict, dict]:
    ckpt = load_checkpoint(path, map_location)
    return ckpt["model"], ckpt.get("meta", {})


def describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 10) -> list[str]:
    """Human-readable differences between ``model``'s state dict and ``state`` (empty if they fit)."""
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]

    def cut(items):
        return ", ".join(items[:limit]) + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")

    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {cut(missing)}")
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {cut(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {cut(shapes)}")
    return problems


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` strictly, with an error naming the mismatched keys."""
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model (another architecture, number of modalities or classes?): "
            + "; ".join(problems)
        )
    model.load_state_dict(state)


def check_meta(meta: Mapping, expected: Mapping[str, Any], source: str) -> None:
    """Compare a checkpoint's ``meta`` (modalities, num_classes, backbone ...) with the config's."""
    diffs = [
        f"{k}: checkpoint {meta[k]!r} vs config {v!r}"
        for k, v in expected.items()
        if k in meta and meta[k] is not None and v is not None and meta[k] != v
    ]
    if diffs:
        raise CheckpointError(f"{source} was trained with another setup: {'; '.join(diffs)}")
