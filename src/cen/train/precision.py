"""Numeric precision, memory layout and compilation of a run: ``train.precision``, ``train.channels_last``, ``train.compile``.

The engine applies these to every task without knowing it:

* **precision** ``fp32 | bf16 | fp16``: :meth:`Precision.autocast` wraps the task's
  training step and evaluation in :func:`torch.autocast` (convolutions and matrix
  products in the low precision, reductions, losses and the modality norms'
  statistics in fp32; parameters, gradients and optimiser state stay fp32).
  ``fp16`` is for CUDA only and scales the loss with a :class:`torch.amp.GradScaler`
  (one per optimiser, saved in checkpoints); ``bf16`` needs no scaler and is the
  CPU's choice (fast on CPUs with AVX-512 BF16 or AMX).
* **channels_last**: the models' 4-d parameters and every 4-d floating input are
  laid out ``(N, H, W, C)`` in memory (:data:`torch.channels_last`), the layout
  oneDNN and cuDNN convolutions prefer, most of all in bf16/fp16.
* **compile**: :func:`compile_model` wraps the forward of each network in
  :func:`torch.compile` (Inductor); a backend that cannot run here is reported by
  :func:`compile_error` as one line that says to set ``train.compile=false``.

A task reaches the optimiser through :meth:`Precision.optimize` (via
:meth:`cen.tasks.base.Task.optimize`), which runs backward and the step outside
autocast and through the gradient scaler when there is one; in fp32 it is exactly
``zero_grad(set_to_none=True); loss.backward(); step()``. It empties autocast's cache of
weight casts before backward: the copies are then freed as backward uses them, and a
forward after the step (a GAN's generator loss through the critic just stepped) casts
the updated weights, not the cached old ones.

Two memory options change how backward runs, not what it computes
(:mod:`cen.train.lean_memory`): ``train.recast_weights`` (backward recasts the weights
instead of keeping autocast's copies) and ``train.step_in_backward`` (each parameter
steps as soon as its gradient is complete, and the gradient is freed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from cen.errors import ConfigError, UserError
from cen.train.lean_memory import StepInBackward, recast_saved_weights

#: ``train.precision`` values and their autocast dtypes (None: no autocast).
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` for a precision unknown or not usable on ``device``."""
    if precision not in DTYPES:
        raise ConfigError(f"train.precision={precision!r} is not valid; expected one of {list(DTYPES)}")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(
            "train.precision=fp16 needs a CUDA device (it scales the loss for fp16 gradients); "
            "on a CPU use train.precision=bf16"
        )


def check_memory_options(
    precision: str,
    *,
    recast_weights: bool,
    step_in_backward: bool,
    compile: bool = False,
    distributed: bool = False,
) -> None:
    """Raise :class:`ConfigError` for ``train.recast_weights`` / ``train.step_in_backward``
    settings that cannot work with ``train.precision``, ``train.compile`` or several processes."""
    if recast_weights and precision == "fp32":
        raise ConfigError(
            "train.recast_weights=true recasts autocast's weight copies, and train.precision=fp32 makes none; "
            "use it with train.precision=bf16 or fp16"
        )
    if recast_weights and compile:
        raise ConfigError(
            "train.recast_weights=true works on eager models; with train.compile=true Inductor decides what "
            "backward keeps: set one of them to false"
        )
    if step_in_backward and precision == "fp16":
        raise ConfigError(
            "train.step_in_backward=true cannot run with train.precision=fp16: its gradient scaler must see "
            "every gradient before any parameter steps; use bf16 or fp32"
        )
    if step_in_backward and distributed:
        raise ConfigError(
            "train.step_in_backward=true steps before DistributedDataParallel has averaged the gradients; "
            "set it to false for multi-process training"
        )


class Precision:
    """Autocast, layout, loss scaling and the memory options of one run.

    The engine checks the choice against the device first (:func:`check_precision`,
    :func:`check_memory_options`); this class itself also builds fp16 on a CPU (CPU
    autocast has it; the tests use it).

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: where the models run (its type picks the autocast backend).
        channels_last: lay 4-d parameters and inputs out channels-last.
        recast_weights: backward casts the weights again instead of keeping autocast's copies
            (bf16/fp16 only; :func:`cen.train.lean_memory.recast_saved_weights`).
        step_in_backward: optimisers passed to :meth:`add_optimizers` step each parameter
            inside backward (:class:`cen.train.lean_memory.StepInBackward`; not with fp16).
    """

    def __init__(
        self,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
        *,
        channels_last: bool = False,
        recast_weights: bool = False,
        step_in_backward: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if precision not in DTYPES:
            raise ConfigError(f"train.precision={precision!r} is not valid; expected one of {list(DTYPES)}")
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.channels_last = bool(channels_last)
        check_memory_options(precision, recast_weights=recast_weights, step_in_backward=step_in_backward)
        self.recast_weights = bool(recast_weights)
        self.stepper = StepInBackward() if step_in_backward else None
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self._by_optimizer: dict[int, torch.amp.GradScaler] = {}

    @property
    def enabled(self) -> bool:
        """Whether autocast is on (``bf16`` or ``fp16``)."""
        return self.dtype is not None

    def autocast(self):
        """A context manager: :func:`torch.autocast` in :attr:`dtype` (a no-op in fp32); with
        ``recast_weights`` without autocast's cache and with backward keeping the fp32 weights."""
        if self.dtype is None:
            return contextlib.nullcontext()
        if not self.recast_weights:
            return torch.autocast(self.device.type, dtype=self.dtype)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False))
        stack.enter_context(recast_saved_weights())
        return stack

    # -- layout --------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` with its 4-d parameters and buffers channels-last (in place), if asked."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_batch(self, batch):
        """``batch`` (a mapping of tensors) with its 4-d floating tensors channels-last, if asked; else itself."""
        if not self.channels_last or not isinstance(batch, Mapping):
            return batch
        return {k: to_channels_last(v) for k, v in batch.items()}

    # -- optimisation --------------------------------------------------------------------
    def add_optimizers(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        """Prepare the run's optimisers: one gradient scaler each in fp16; with
        ``step_in_backward``, their parameters hooked to step inside backward."""
        if self.stepper is not None:
            self.stepper.register(optimizers)
        if self.precision != "fp16":
            return
        for name, optimizer in optimizers.items():
            scaler = torch.amp.GradScaler(self.device.type)
            self.scalers[name] = scaler
            self._by_optimizer[id(optimizer)] = scaler

    def optimize(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.zero_grad(set_to_none=True)``, backward of ``loss`` and one step, outside autocast.

        With fp16 the loss is scaled, the step skipped where gradients overflowed and
        the scale updated (:class:`torch.amp.GradScaler`).
        """
        with torch.autocast(self.device.type, enabled=False) if self.enabled else contextlib.nullcontext():
            if self.enabled:
                torch.clear_autocast_cache()
            if self.stepper is not None and self.stepper.handles(optimizer):
                self.stepper.backward(loss, optimizer)
                return
            optimizer.zero_grad(set_to_none=True)
            scaler = self._by_optimizer.get(id(optimizer))
            if scaler is None:
                loss.backward()
                optimizer.step()
                return
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def state_dict(self) -> dict:
        """The scalers' states by optimiser name (empty unless fp16)."""
        return {name: scaler.state_dict() for name, scaler in self.scalers.items()}

    def load_state_dict(self, state: Mapping) -> None:
        for name, scaler in self.scalers.items():
            if name in state:
                scaler.load_state_dict(state[name])


def to_channels_last(x):
    """A 4-d floating tensor in channels-last memory format; anything else unchanged."""
    if isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


# -- compilation --------------------------------------------------------------------------------
def check_compile() -> None:
    """Raise :class:`ConfigError` where :func:`torch.compile` cannot run at all (e.g. an unsupported Python)."""
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported

        supported = is_dynamo_supported()
    except ImportError:  # pragma: no cover - very old or stripped torch
        supported = False
    if not supported:
        raise ConfigError(
            "train.compile=true: torch.compile is not supported on this platform or Python; set train.compile=false"
        )


def compile_model(model: nn.Module, backend="inductor") -> nn.Module:
    """``torch.compile(model, backend=backend)``: compiled at its first call (graph and backward)."""
    return torch.compile(model, backend=backend)


def compile_error(exc: BaseException) -> UserError | None:
    """A one-line :class:`UserError` for an exception raised by the compiler stack, or None for any other."""
    module = type(exc).__module__ or ""
    if not module.startswith(("torch._dynamo", "torch._inductor")):
        return None
    inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # what the backend raised
    first = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")
    return UserError(
        f"train.compile=true: torch.compile could not compile the model on this machine "
        f"({type(inner).__name__}: {first[:300]}); set train.compile=false to train without it"
    )
