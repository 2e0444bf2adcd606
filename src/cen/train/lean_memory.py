"""Two ways to hold less during a training step: ``train.recast_weights`` and ``train.step_in_backward``.

At RefineNet-101's size the peak of a bf16 step is not the activations but what bf16 does
not shrink (``docs/benchmarks.md``): autocast's half-precision copy of every weight, kept
for backward, and a full set of fp32 gradients, all alive at once before the optimiser
steps. Each option removes one of them; neither changes a single computed value.

* :func:`recast_saved_weights`: backward saves the fp32 parameter instead of its bf16/fp16
  copy and casts it again when it needs it, so each copy lives only while its layer runs
  forward (about one weight cast of the model more per step). It applies to what saves the
  cast itself, as convolutions do; ``nn.Linear`` saves a transposed view and keeps its copy.
* :class:`StepInBackward`: each parameter's update runs as soon as its gradient is
  complete (:meth:`torch.Tensor.register_post_accumulate_grad_hook`) and the gradient is
  freed at once, so gradients never exist for the whole model together. The update is the
  optimiser's own ``step()`` on a one-parameter group, so states, schedules and
  checkpoints are those of the usual step, and its values are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor


class _Recast:
    """What backward keeps in place of a half-precision cast of a parameter."""

    __slots__ = ("param", "dtype", "memory_format")

    def __init__(self, param: Tensor, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        self.param, self.dtype, self.memory_format = param, dtype, memory_format


def _cast_source(t: Tensor) -> Tensor | None:
    """The parameter (a leaf that requires grad) ``t`` is a dtype cast of, else None."""
    fn = t.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0" or t.dtype not in (torch.bfloat16, torch.float16):
        return None
    source = fn.next_functions[0][0]
    param = getattr(source, "variable", None)  # an AccumulateGrad node holds its leaf
    if param is None or param.dtype != torch.float32 or param.shape != t.shape:
        return None
    return param


def _pack(t: Tensor):
    param = _cast_source(t)
    if param is None:
        return t
    layout = torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else None
    return _Recast(param, t.dtype, layout or torch.contiguous_format)


def _unpack(saved):
    if isinstance(saved, _Recast):
        return saved.param.detach().to(saved.dtype, memory_format=saved.memory_format)
    return saved


@contextlib.contextmanager
def recast_saved_weights() -> Iterator[None]:
    """Within it, backward keeps parameters, not their autocast copies (see the module doc).

    Use with ``torch.autocast(..., cache_enabled=False)``: autocast's cache would keep
    every copy alive anyway. The parameters must not change between forward and
    backward (the optimiser steps after backward, or per parameter after its gradient
    with :class:`StepInBackward`, once its last use in backward is done)."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield


class StepInBackward:
    """Step each parameter of registered optimisers inside backward, and free its gradient.

    :meth:`register` hooks every parameter of an optimiser once; the hooks act only
    during :meth:`backward` for that optimiser, so a backward that reaches another
    optimiser's parameters (a GAN's generator loss through the critic) leaves their
    gradients to accumulate as usual.
    """

    def __init__(self) -> None:
        self._active: torch.optim.Optimizer | None = None
        self._groups: dict[int, tuple[torch.optim.Optimizer, int]] = {}  # id(param) -> (optimiser, group index)
        self._optimizers: list[torch.optim.Optimizer] = []

    def register(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        for name, optimizer in optimizers.items():
            self._optimizers.append(optimizer)
            for g, group in enumerate(optimizer.param_groups):
                for p in group["params"]:
                    if id(p) in self._groups:
                        raise ValueError(
                            f"train.step_in_backward: a parameter of optimiser {name!r} is also in another "
                            "group or optimiser; each parameter must belong to one group"
                        )
                    self._groups[id(p)] = (optimizer, g)
                    p.register_post_accumulate_grad_hook(self._step)

    def handles(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer``'s parameters are registered."""
        return any(opt is optimizer for opt in self._optimizers)

    def backward(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.zero_grad(set_to_none=True)``, then backward of ``loss`` stepping as it goes."""
        optimizer.zero_grad(set_to_none=True)
        self._active = optimizer
        try:
            loss.backward()
        finally:
            self._active = None

    def _step(self, p: Tensor) -> None:
        optimizer, g = self._groups[id(p)]
        if optimizer is not self._active:
            return
        groups = optimizer.param_groups
        optimizer.param_groups = [{**groups[g], "params": [p]}]
        try:
            optimizer.step()
        finally:
            optimizer.param_groups = groups
        p.grad = None
