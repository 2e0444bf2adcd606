"""Training for missing sensors: each training step sees a random non-empty subset of the modalities.

``train.modality_dropout`` is either

* a probability ``p``: with probability ``p`` a step keeps one non-empty proper subset of the
  modalities, drawn uniformly among them (with 3 modalities: the 6 subsets of 1 or 2), and
  drops the others; otherwise it keeps every modality; or
* a table of subset weights, ``{rgb: 1, depth: 1, rgb+depth: 2}``: the subset is drawn with
  these weights (a subset the table leaves out is never drawn; name the full set to train on it).

The dropped modalities are taken out of the batch; the model then runs as it does at
inference with those modalities missing (:class:`cen.MultiModal`: the norms use the present
modalities' slots, their batch statistics come from the present slices only, the exchange
averages over the present ones, the ensemble renormalises α), and the loss sees the present
branches and the ensemble. One subset per step, for the whole batch: the stacked layout holds
the same modalities for every sample of a batch. The draw comes from a generator seeded by
``(train.seed, step)``, so a resumed run draws the same subsets.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cen.core.multimodal import MultiModal
from cen.core.unshared import ModalityConv2d, ModalityLinear
from cen.errors import ConfigError

SEPARATOR = "+"
KEY = "train.modality_dropout"


def proper_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """The non-empty subsets of ``names`` but the full set, larger first, each in the given order."""
    return [c for k in range(len(names) - 1, 0, -1) for c in itertools.combinations(names, k)]


def parse(value: Any, names: Sequence[str]) -> list[tuple[tuple[str, ...], float]]:
    """``[(subset, weight)]`` of a ``train.modality_dropout`` value for the modalities ``names``
    (a :class:`ConfigError` names what is wrong)."""
    names = tuple(names)
    if isinstance(value, bool):
        raise ConfigError(f"{KEY}={value!r}: expected a probability in [0, 1] or a table {{subset: weight}}")
    if isinstance(value, (int, float)):
        p = float(value)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{KEY}={value!r}: expected a probability in [0, 1]")
        if len(names) < 2:
            raise ConfigError(f"{KEY}={value!r} needs two or more modalities to drop from, got {list(names)}")
        subsets = proper_subsets(names)
        return [(names, 1.0 - p)] + [(s, p / len(subsets)) for s in subsets]
    if isinstance(value, Mapping):
        table = []
        for key, weight in value.items():
            parts = tuple(part.strip() for part in str(key).split(SEPARATOR))
            unknown = [p for p in parts if p not in names]
            if unknown or len(set(parts)) != len(parts) or not all(parts):
                raise ConfigError(
                    f"{KEY}: subset {key!r} must name distinct modalities of {list(names)}, joined by "
                    f"{SEPARATOR!r} (e.g. {SEPARATOR.join(names[:2])})"
                )
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"{KEY}: the weight of {key!r} must be a number >= 0, got {weight!r}")
            table.append((tuple(n for n in names if n in parts), float(weight)))
        if not any(w > 0 for _, w in table):
            raise ConfigError(f"{KEY}: at least one subset needs a weight > 0, got {dict(value)}")
        return table
    raise ConfigError(
        f"{KEY}={value!r}: expected null, a probability in [0, 1] or a table {{subset: weight}} such as "
        f"{{{SEPARATOR.join(names)}: 2, {names[0]}: 1}}"
    )


class ModalityDropout:
    """Draws the subset of each step and takes the others out of the batch (see the module docstring)."""

    def __init__(self, value: Any, names: Sequence[str], seed: int) -> None:
        self.names = tuple(names)
        self.table = parse(value, self.names)
        self.seed = int(seed)
        self._weights = torch.tensor([w for _, w in self.table], dtype=torch.float64)

    def subset(self, step: int) -> tuple[str, ...]:
        """The modalities kept at optimiser step ``step`` (the same for the same seed and step)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        return self.table[int(torch.multinomial(self._weights, 1, generator=g))][0]

    def __call__(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        keep = set(self.subset(step))
        return {k: v for k, v in batch.items() if k not in self.names or k in keep}

    def shares(self) -> dict[str, float]:
        """``{"rgb+depth": probability, ...}`` of every subset that can be drawn."""
        total = float(self._weights.sum())
        return {SEPARATOR.join(s): w / total for s, w in self.table if w > 0}


def prepare_model(model: nn.Module, where: str) -> None:
    """Let ``model`` train with missing modalities (:attr:`cen.MultiModal.train_missing`), after checking that
    it can: a :class:`cen.MultiModal` inside, no private convolutions, no fusion or head that reads every
    modality (a :class:`ConfigError` names the part)."""
    wrappers = [m for m in model.modules() if isinstance(m, MultiModal)]
    if not wrappers:
        raise ConfigError(f"{KEY}: the model {where} does not take its modalities by name (no cen.MultiModal)")
    for name, module in model.named_modules():
        if isinstance(module, (ModalityConv2d, ModalityLinear)):
            raise ConfigError(
                f"{KEY}: {name} has private weights per modality (fusion.shared_convs=false), which need every "
                "modality; modality dropout needs shared convolutions"
            )
        fusion = getattr(module, "fusion", None)
        if fusion is not None and getattr(fusion, "needs_all", False):
            raise ConfigError(
                f"{KEY}: fusion {fusion.name!r} (at {name}) reads every modality and is not defined with one missing"
            )
    if getattr(model, "concat_head", None) is not None:
        raise ConfigError(f"{KEY}: model.head=concat fuses every modality's features; use model.head=ensemble")
    for wrapper in wrappers:
        wrapper.train_missing = True
