"""Engine callbacks: what the trainer runs at fixed points of a run, without knowing what it is.

A :class:`Callback` gets the :class:`~cen.train.trainer.Trainer` at the start of training, after
every optimiser step and after every validation; what it keeps across a resume goes into the
checkpoints under its :attr:`~Callback.key`. The built-in ones:

* :class:`GammaCallback`: where every penalised scale has been relative to θ (Theorem 1's check,
  :class:`cen.train.gamma.GammaTracker`), logged as a ``gamma`` record and TensorBoard histograms
  at each validation;
* :class:`FigureACallback`: the paper's Figure A of the run so far, ``figure_a.png`` in the run
  folder, rewritten at each validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cen.train.gamma import GammaTracker

if TYPE_CHECKING:  # pragma: no cover
    from cen.train.trainer import Trainer


class Callback:
    """Hooks the trainer calls; each does nothing by default."""

    #: The checkpoint key of :meth:`state_dict` (empty: nothing to keep).
    key: str = ""

    def setup(self, trainer: Trainer) -> None:
        """Once the trainer has its models and optimisers (before a resume loads the state)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After every optimiser step (``trainer.global_step`` counts it)."""

    def on_validation_end(self, trainer: Trainer, results: Mapping[str, Mapping], summary: Mapping[str, Any]) -> None:
        """After each validation: the task's scores and its summary of the model (α, exchanged shares)."""

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned."""


class GammaCallback(Callback):
    """Theorem 1's statistics of the primary model's penalised scales (see :mod:`cen.train.gamma`)."""

    key = "gamma_tracker"

    def __init__(self) -> None:
        self.tracker: GammaTracker | None = None

    def setup(self, trainer: Trainer) -> None:
        if self.tracker is None:
            mode = "all" if trainer.cfg.loss.sparsity_mode == "all" else "disjoint"
            self.tracker = GammaTracker(trainer.model, mode=mode)

    def on_step_end(self, trainer: Trainer) -> None:
        self.tracker.update(trainer.global_step)

    def on_validation_end(self, trainer: Trainer, results, summary) -> None:
        if not self.tracker.layers:
            return
        trainer.log.record("gamma", trainer.global_step, epoch=trainer.epoch, **self.tracker.summary())
        if trainer.log.writer is not None:
            for tag, values in self.tracker.histograms().items():
                trainer.log.writer.add_histogram(f"gamma/{tag}", values, trainer.global_step)

    def state_dict(self) -> dict | None:
        return self.tracker.state_dict() if self.tracker is not None else None

    def load_state_dict(self, state: Mapping) -> None:
        self.tracker.load_state_dict(state)


class FigureACallback(Callback):
    """The paper's Figure A at each validation: per exchanging layer, the share of channels each modality
    replaces (``figure_a.png`` in the run folder; the history is in metrics.jsonl and ``cen report`` draws it)."""

    def on_validation_end(self, trainer: Trainer, results, summary) -> None:
        shares = summary.get("exchange")
        if not shares or not trainer.info.is_main:
            return
        from cen.train.figures import figure_a, save, stacked_shares

        layers = list(shares)
        modalities = list(next(iter(shares.values())))
        path = trainer.run_dir / "figure_a.png"
        tmp = path.with_name(".figure_a.tmp.png")
        title = f"epoch {trainer.epoch} (step {trainer.global_step})"
        heights = stacked_shares(layers, shares, modalities, summary.get("exchange_unpenalised"))
        save(figure_a(layers, heights, modalities, title=title), tmp)
        tmp.replace(path)  # atomic, as every file of a run


def default_callbacks() -> list[Callback]:
    """What every run gets: the γ statistics and Figure A."""
    return [GammaCallback(), FigureACallback()]
