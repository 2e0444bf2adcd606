"""Which modalities a stacked batch holds, passed to the norms as an explicit context.

A stacked batch normally holds every modality a network was converted for. At
inference some may be missing; the modality norms then need the indices of the
present ones to pick their slots. :func:`present_modalities` declares them for
the duration of a ``with`` block, in a :class:`contextvars.ContextVar`: the value
belongs to the calling thread (and asyncio task), not to any module, so two
threads, or two models sharing modules, never see each other's setting.

``torch.compile`` reads the variable (and guards on its value), so a compiled
model stays one graph; entering the block inside a compiled function is a graph
break (dynamo does not trace ``ContextVar.set``), which only the
missing-modality path of :class:`cen.MultiModal` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import pairwise

_PRESENT: ContextVar[tuple[int, ...] | None] = ContextVar("cen_present_modalities", default=None)
_IN_TRAINING: ContextVar[bool] = ContextVar("cen_present_in_training", default=False)


@contextmanager
def present_modalities(indices: Sequence[int] | None, *, training: bool = False) -> Iterator[tuple[int, ...] | None]:
    """Declare that stacked batches inside the block hold only modalities ``indices``.

    Args:
        indices: increasing modality indices (in the order the network was
            converted for), e.g. ``(0, 2)`` for the first and third of three;
            ``None`` means all of them.
        training: allow it in training mode too (modality dropout,
            ``train.modality_dropout``): the batch norms then take their statistics
            from the present modalities' slices and update only those slots' running
            statistics. Off by default: a missing modality is an inference situation
            and the norms refuse it in training unless asked.

    The norms then read the slots of these modalities and the fusions combine only them.
    """
    if indices is not None:
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise TypeError(f"present_modalities expects a sequence of modality indices, got {indices!r}")
        indices = tuple(indices)
        if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
            raise ValueError(f"present_modalities expects a non-empty sequence of indices >= 0, got {indices!r}")
        if any(a >= b for a, b in pairwise(indices)):
            raise ValueError(f"present_modalities expects strictly increasing indices (model order), got {indices!r}")
    token, token_training = _PRESENT.set(indices), _IN_TRAINING.set(bool(training))
    try:
        yield indices
    finally:
        _PRESENT.reset(token)
        _IN_TRAINING.reset(token_training)


def current_present() -> tuple[int, ...] | None:
    """The indices declared by the innermost :func:`present_modalities` block, or None (all)."""
    return _PRESENT.get()


def missing_allowed_in_training() -> bool:
    """Whether the innermost :func:`present_modalities` block allows missing modalities in training."""
    return _IN_TRAINING.get()
