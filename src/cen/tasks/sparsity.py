"""The sparsity penalty of a run (paper Eq. 4) as one object: λ, which scales, how it is solved.

Every task that trains a CEN model uses it the same way::

    penalty = SparsityPenalty.from_config(cfg.loss)
    term, l1 = penalty.loss(model)              # add ``term`` to the loss (None: nothing to add)
    optimize(loss + term if term is not None else loss, optimizer)
    penalty.after_step(model, optimizer)        # the proximal step, when that is the solver

``solver="gradient"`` (the paper) adds ``count · λ · Σ|γ|`` to the loss; ``"proximal"`` adds
nothing and soft-thresholds the penalised γ by ``lr · λ · count`` after each optimiser step,
``lr`` being the rate of the parameter group that holds them (:mod:`cen.tasks.optim`).
``count`` is 1, or the number of outputs with ``per_output`` (the reference code adds the
term once per output). Which scales are penalised is :func:`cen.core.sparsity.sparsity_loss`'s
``mode``: ``disjoint`` (the method), ``all`` (an ablation) or ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cen.core.sparsity import exchanging_norms, sparsity_loss, sparsity_shrink_
from cen.tasks.optim import lr_of

MODES = ("disjoint", "all", "none")
SOLVERS = ("gradient", "proximal")


@dataclass(frozen=True)
class SparsityPenalty:
    """λ·Σ|γ| over the penalised scales, by its gradient or its proximal step (see the module docstring)."""

    weight: float = 2e-4
    mode: str = "disjoint"
    solver: str = "gradient"
    per_output: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sparsity mode {self.mode!r} is not valid; expected one of {list(MODES)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"sparsity solver {self.solver!r} is not valid; expected one of {list(SOLVERS)}")
        if not self.weight >= 0:
            raise ValueError(f"sparsity weight (lambda) must be >= 0, got {self.weight!r}")

    @classmethod
    def from_config(cls, loss) -> SparsityPenalty:
        """From a config's ``loss`` part (``sparsity_weight``, ``sparsity_mode``, ``sparsity_solver``,
        ``sparsity_per_output``)."""
        return cls(
            weight=float(loss.sparsity_weight),
            mode=str(loss.sparsity_mode),
            solver=str(loss.sparsity_solver),
            per_output=bool(loss.get("sparsity_per_output", False)),
        )

    @property
    def active(self) -> bool:
        """Whether the penalty acts at all (a mode other than ``none`` and λ > 0)."""
        return self.mode != "none" and self.weight > 0

    def _count(self, num_outputs: int) -> int:
        return num_outputs if self.per_output else 1

    def loss(self, model: nn.Module, num_outputs: int = 1) -> tuple[Tensor | None, Tensor | None]:
        """``(term to add to the loss or None, Σ|γ| detached for the log or None)``."""
        if not self.active:
            return None, None
        l1 = sparsity_loss(model, self.mode)
        if self.solver != "gradient":
            return None, l1.detach()
        return self._count(num_outputs) * self.weight * l1, l1.detach()

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, num_outputs: int = 1) -> None:
        """The proximal step after ``optimizer`` stepped (nothing for the gradient solver)."""
        if not (self.active and self.solver == "proximal"):
            return
        rates = {lr_of(optimizer, norm.weight) for _, norm in exchanging_norms(model)}
        if not rates:
            return
        if len(rates) > 1:
            raise ValueError(
                f"the penalised scales sit in parameter groups of different learning rates {sorted(rates)}; "
                "the proximal step needs one (set optim.gamma_lr_scale to put them in one group)"
            )
        sparsity_shrink_(model, rates.pop() * self.weight * self._count(num_outputs), self.mode)
