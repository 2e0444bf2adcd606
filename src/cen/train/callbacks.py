"""Engine callbacks: what the trainer runs at fixed points of a run, without knowing what it is.

A :class:`Callback` gets the :class:`~cen.train.trainer.Trainer` at the start of training, after
every optimiser step and after every validation; what it keeps across a resume goes into the
checkpoints under its :attr:`~Callback.key`. The built-in ones:

* :class:`GammaCallback`: where every penalised scale has been relative to θ (Theorem 1's check,
  :class:`cen.train.gamma.GammaTracker`), logged as a ``gamma`` record and TensorBoard histograms
  at each validation;
* :class:`FigureACallback`: the paper's Figure A of the run so far, ``figure_a.png`` in the run
  folder, rewritten at each validation;
* :class:`SparsityTarget`: λ steered towards ``loss.sparsity_target``, the share of penalised channels
  to have exchanged at the end;
* :class:`Regime`: warnings when the ℓ1 regime is degenerate (everything or nothing exchanged, the
  modalities' γ moving together).
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

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of :meth:`~cen.train.trainer.Trainer.fit` (after a resume has loaded the state)."""

    def on_fit_end(self, trainer: Trainer, out: dict) -> None:
        """After training and the test, before ``results.json``; may add entries to ``out``."""

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
        penalty = trainer.task.penalty
        if penalty.active:  # Theorem 1's quantity: the loss gradient of the scales near 0 against lambda
            in_grad = penalty.weight if penalty.solver == "gradient" else 0.0
            self.tracker.update(trainer.global_step, lam=penalty.weight, l1_in_grad=in_grad)
        else:
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
    """What every run gets: the γ statistics, Figure A, λ steered to ``loss.sparsity_target`` (when set) and
    the warnings of a degenerate ℓ1 regime."""
    return [GammaCallback(), FigureACallback(), SparsityTarget(), Regime()]


def penalised_scales(model) -> list[tuple[str, object, float]]:
    """``[(layer, |γ|, θ)]``: per exchanging norm of ``model``, the absolute values of its penalised scales (each
    modality's own group, :func:`cen.core.groups.disjoint_groups`; a flat tensor) and its θ. Empty for a model
    without exchanging norms (one modality, token fusion)."""
    from cen.core.groups import disjoint_groups
    from cen.core.sparsity import exchanging_norms

    out = []
    for name, norm in exchanging_norms(model):
        groups = disjoint_groups(norm.num_modalities, norm.num_features, norm.weight.device)
        out.append((name, norm.gamma.detach().abs()[groups], norm.threshold))
    return out


def penalised_share(model) -> tuple[float, list[tuple[str, float]]]:
    """``(share, [(layer, share)])``: of the penalised scales of ``model``, the share under θ now, in all and per
    layer (:func:`penalised_scales`)."""
    under, total, layers = 0, 0, []
    for name, values, theta in penalised_scales(model):
        n, k = values.numel(), int((values < theta).sum())
        under, total = under + k, total + n
        layers.append((name, k / n if n else 0.0))
    return (under / total if total else 0.0), layers


class SparsityTarget(Callback):
    """``loss.sparsity_target``: λ steered so that this share of the penalised channels is exchanged at the end.

    The share under θ lags λ by hundreds of steps (a γ travels from 1 towards 0 before it counts), so the
    controller follows a quantity that moves at once: ``q``, the ``target``-quantile of the penalised
    ``|γ|`` (``target`` of them are below it; the share reaches the target when ``q`` reaches θ). Every
    :attr:`every` steps ``q`` is compared with a path from its first value ``q0`` down to θ at ``ramp`` of
    the planned run, ``q_path = θ + (q0 − θ) · max(0, 1 − step / (ramp · steps))``, and
    ``λ ← λ · exp(gain · clip(ln(q / q_path), −3, 3))`` within ``[λ0 / 1000, 1000 λ0]`` (``λ0`` =
    ``loss.sparsity_weight``): λ grows while the scales lag the path and shrinks when they run ahead.
    The error is a log ratio because the end of the path is the delicate part: the proximal shrink moves
    every penalised γ alike, so those above the quantile sit just above θ when it gets there, and an error
    measured against ``q0`` (≈ 1) brakes 100× too weakly to stop them following (on the translation
    scenes a target of 0.3 ended at 99 % exchanged that way).
    λ is logged (``sparsity`` records: ``weight``, ``share`` under θ, ``quantile``, ``path``), kept in
    checkpoints (exact resume) and written to ``results.json`` (``sparsity_weight_final``).
    """

    key = "sparsity_target"
    every, ramp, gain = 10, 0.8, 2.0

    def __init__(self) -> None:
        self.active = False
        self.weight: float | None = None
        self.q0: float | None = None

    def setup(self, trainer: Trainer) -> None:
        target = trainer.cfg.loss.get("sparsity_target")
        self.active = target is not None and trainer.task.penalty.active
        if not self.active:
            return
        if not penalised_scales(trainer.model):
            # One modality (or a fusion without exchanging norms): no share to steer. The same recipe trains
            # its unimodal baselines, so this is said, not refused.
            self.active = False
            trainer._say(f"loss.sparsity_target {target}: the model has no exchanging norms; lambda stays as set")
            return
        self.target, self.start = float(target), float(trainer.cfg.loss.sparsity_weight)
        self.weight = self.start if self.weight is None else self.weight
        # the planned schedule (train.max_steps only stops a run early: a resumed run steers alike)
        self.steps = trainer.train_loader.sampler.batches_per_epoch() * trainer.epochs
        self._apply(trainer)

    def _apply(self, trainer: Trainer) -> None:
        import dataclasses

        trainer.task.penalty = dataclasses.replace(trainer.task.penalty, weight=self.weight)

    def _quantile(self, trainer: Trainer) -> tuple[float, float]:
        """``(q, θ)``: the ``target``-quantile of the penalised |γ| and the norms' θ (their largest)."""
        import torch

        scales = penalised_scales(trainer.model)  # not empty: setup() deactivates a model without any
        values = torch.cat([v.float() for _, v, _ in scales])
        return float(torch.quantile(values, self.target)), max(theta for _, _, theta in scales)

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.active:
            self._apply(trainer)  # after a resume: the loaded lambda
            if self.q0 is None:
                self.q0 = self._quantile(trainer)[0]

    def on_step_end(self, trainer: Trainer) -> None:
        if not self.active or trainer.global_step % self.every:
            return
        import math

        q, theta = self._quantile(trainer)
        progress = trainer.global_step / max(1.0, self.ramp * self.steps)
        path = theta + (self.q0 - theta) * max(0.0, 1.0 - progress)
        error = math.log(max(q, path * math.exp(-3.0)) / path)  # q = 0 (all under theta) reads as -3
        factor = math.exp(self.gain * min(error, 3.0))
        self.weight = min(max(self.weight * factor, self.start / 1000), self.start * 1000)
        self._apply(trainer)
        share, _ = penalised_share(trainer.model)
        trainer.log.record("sparsity", trainer.global_step, weight=self.weight, share=share, quantile=q, path=path)

    def state_dict(self) -> dict | None:
        return {"weight": self.weight, "q0": self.q0} if self.active else None

    def load_state_dict(self, state: Mapping) -> None:
        self.weight, self.q0 = float(state["weight"]), state.get("q0")

    def on_fit_end(self, trainer: Trainer, out: dict) -> None:
        if self.active:
            out["sparsity_weight_final"] = self.weight
            share, _ = penalised_share(trainer.model)
            trainer._say(
                f"loss.sparsity_target {self.target}: {share:.1%} of the penalised channels exchanged at the end; "
                f"lambda ends at {self.weight:.4g} (started {self.start:g})"
            )


class Regime(Callback):
    """Warnings when the ℓ1 regime is degenerate: every penalised γ under θ (λ too strong for the rate), none at
    the end of training (too weak), or the modalities' γ of a channel moving together (the disjoint penalty
    should make them differ). Said once each, logged as ``warning`` records; ``cen report`` lists them."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def _warn(self, trainer: Trainer, kind: str, text: str) -> None:
        if kind in self.said:
            return
        self.said.add(kind)
        trainer._say(f"warning: {text}")
        trainer.log.record("warning", trainer.global_step, warning=kind, message=text)

    def on_validation_end(self, trainer: Trainer, results, summary) -> None:
        if not trainer.task.penalty.active:
            return
        share, layers = penalised_share(trainer.model)
        if not layers:  # no exchanging norm (one modality, token fusion): no regime to judge
            return
        last = trainer.epoch >= trainer.epochs
        if share >= 1.0:
            self._warn(trainer, "all_exchanged", (
                "every penalised gamma is under theta: lambda is too strong for gamma's learning rate, so the "
                "exchange keeps no penalised channel of either modality; lower loss.sparsity_weight or "
                "optim.gamma_lr_scale, or ask for a share with loss.sparsity_target"
            ))  # fmt: skip
        elif last and share == 0.0:
            self._warn(trainer, "none_exchanged", (
                "no penalised gamma reached theta by the end of training: nothing was exchanged; raise "
                "loss.sparsity_weight or optim.gamma_lr_scale, or set loss.sparsity_target"
            ))  # fmt: skip
        together = _together(trainer.model)
        if last and together is not None and together > 0.9:
            self._warn(trainer, "together", (
                f"the modalities' |gamma| move together (mean correlation over channels {together:.2f}): the "
                "penalty does not separate them, so a channel falls for both or neither"
            ))  # fmt: skip


def _together(model) -> float | None:
    """Mean over the exchanging norms of the correlation of modality 0's and 1's |γ| across channels (None when
    no norm has spread to compare)."""
    import torch

    from cen.core.sparsity import exchanging_norms

    values = []
    for _, norm in exchanging_norms(model):
        g = norm.gamma.detach().abs().float()
        if g.shape[0] < 2 or float(g[0].std()) < 1e-6 or float(g[1].std()) < 1e-6:
            continue
        values.append(float(torch.corrcoef(g[:2])[0, 1]))
    return sum(values) / len(values) if values else None
