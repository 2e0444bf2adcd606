"""Tracking the penalised scales over training: the empirical test of Theorem 1.

Theorem 1 of the paper says that, with an l1 penalty ``lambda * |gamma|`` on the
scales of batch norms, ``gamma = 0`` attracts a scale whose loss gradient is
weaker than the penalty there (``|dL/dgamma| < lambda`` near 0): such a scale,
once near zero, stays there. :class:`GammaTracker` measures that on a real run:
which scales reach ``theta``, the loss gradient they had there, and whether they
rose back. (With exchange on, an exchanged scale gets no loss gradient at all,
so on CEN the "stays" half holds by construction; the l1-only network is the
theorem's own setting, see ``configs/theorem1``.) For every penalised scale ``gamma[m, c]`` of every
exchanging norm (modality ``m`` on its own channel group, see
:func:`cen.core.sparsity.disjoint_groups`) it keeps, as tensors on the model's
device:

* ``below``: ``|gamma| < theta`` at the last update (the channel is exchanged);
* ``ever``: ``|gamma| < theta`` at some update;
* ``first_step``: the step of the first such update (-1: never);
* ``recoveries``: how many times it rose back to ``|gamma| >= theta`` after being below.

:meth:`GammaTracker.update` only reads the scales after an optimiser step, so it
works whichever solver moved them (the l1 subgradient in the loss or the
proximal soft-threshold), and it is made of tensor operations alone: no
device-to-host copy, no Python branch on a tensor value. :meth:`~GammaTracker.summary`
(at evaluation) copies the counts to the host once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from cen.core.sparsity import SPARSITY_MODES, disjoint_groups, exchanging_norms

STATE_VERSION = 2
#: Per-scale state tensors, each ``(M, C)``.
_FIELDS = ("below", "ever", "first_step", "recoveries")
#: Theorem 1's quantity, tracked where the loss gradient is known (version 2; older states lack them):
#: ``weak`` (at the last update while under θ, ``|dL/dgamma| < lambda``), ``rises_weak`` / ``rises_strong``
#: (rises back above θ after a last update under θ with a weak / a strong gradient).
_GRAD_FIELDS = ("weak", "rises_weak", "rises_strong")


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _counts(
    ever: int,
    under: int,
    recovered: int,
    back: int,
    rises: int,
    penalised: int,
    under_weak: int = 0,
    rises_weak: int = 0,
    rises_strong: int = 0,
) -> dict:
    """The record of one group of scales (a layer's modality, or all of them)."""
    return {
        "under_weak_gradient": under_weak,
        "rises_after_weak_gradient": rises_weak,
        "rises_after_strong_gradient": rises_strong,
        "penalised": penalised,
        "under": under,
        "ever": ever,
        "recovered": recovered,
        "back_now": back,
        "rises": rises,
        "share_under": _share(under, penalised),
        "share_ever": _share(ever, penalised),
        "share_recovered": _share(recovered, ever),
    }


def _summarize(
    state: Mapping[str, Mapping[str, Tensor]],
    penalised: Mapping[str, Tensor],
    names: list[str],
    thresholds: Mapping[str, float],
    mode: str,
    updates: int,
) -> dict:
    """:meth:`GammaTracker.summary` of per-layer states (on any device; one host copy)."""
    rows = []
    for name, s in state.items():
        pen = penalised[name]
        ever = s["ever"] & pen
        zero = torch.zeros_like(s["recoveries"])
        weak = s.get("weak", torch.zeros_like(s["below"]))
        rows.append(
            torch.stack(
                [
                    ever.sum(1),
                    (s["below"] & pen).sum(1),
                    (ever & (s["recoveries"] > 0)).sum(1),
                    (ever & ~s["below"]).sum(1),
                    (s["recoveries"] * pen).sum(1),
                    pen.sum(1),
                    (s["below"] & pen & weak).sum(1),
                    (s.get("rises_weak", zero) * pen).sum(1),
                    (s.get("rises_strong", zero) * pen).sum(1),
                ],
                dim=1,
            )
        )  # (M, 9)
    flat = torch.cat(rows).tolist() if rows else []  # the one host copy
    layers, total, start = {}, [0] * 9, 0
    for name, r in zip(state, rows):
        layers[name] = {}
        for m, counts in enumerate(flat[start : start + r.shape[0]]):
            layers[name][names[m] if m < len(names) else f"m{m}"] = _counts(*counts)
            total = [a + b for a, b in zip(total, counts)]
        start += r.shape[0]
    thetas = set(thresholds.values())
    theta = None if not thetas else thetas.pop() if len(thetas) == 1 else dict(thresholds)
    return {"threshold": theta, "mode": mode, "updates": updates, "layers": layers, "total": _counts(*total)}


def summarize_state(state: Mapping) -> dict:
    """:meth:`GammaTracker.summary` computed from a saved :meth:`GammaTracker.state_dict` (no model needed)."""
    mode = state.get("mode", "disjoint")
    layers = state["layers"]
    penalised = {}
    for name, entry in layers.items():
        shape = tuple(entry["ever"].shape)
        penalised[name] = (
            disjoint_groups(*shape, device=entry["ever"].device)
            if mode == "disjoint"
            else torch.ones(shape, dtype=torch.bool, device=entry["ever"].device)
        )
    thresholds = {n: float(e.get("threshold", 0.0)) for n, e in layers.items()}
    return _summarize(layers, penalised, list(state.get("names", [])), thresholds, mode, int(state.get("updates", 0)))


class GammaTracker:
    """Where every penalised ``gamma`` of ``model``'s exchanging norms has been relative to ``theta``.

    Args:
        model: a converted model (its exchanging norms are found with
            :func:`cen.core.sparsity.exchanging_norms`; keep the tracker with the
            model it was built for; a DDP wrapper works too).
        threshold: ``theta``; ``None`` (default) uses each norm's own ``.threshold``,
            the one its exchange test uses.
        mode: which scales are penalised, as ``loss.sparsity_mode``: ``"disjoint"``
            (modality ``m`` on channel group ``m``, the method) or ``"all"``.
        names: the modality names, for the summary (default: ``model.names``, else ``m0, m1, ...``).

    A model without exchanging norms gives an empty tracker: every method works and
    reports nothing.
    """

    def __init__(self, model: nn.Module, threshold: float | None = None, *, mode: str = "disjoint", names=None) -> None:
        if mode not in SPARSITY_MODES:
            raise ValueError(f"mode={mode!r}; expected one of {SPARSITY_MODES}")
        if threshold is not None and threshold < 0:
            raise ValueError(f"threshold must be >= 0 (it is compared with |gamma|), got {threshold!r}")
        inner = getattr(model, "module", model)  # DistributedDataParallel
        self.mode = mode
        self.norms = dict(exchanging_norms(inner))
        self.thresholds = {
            name: float(threshold if threshold is not None else norm.threshold) for name, norm in self.norms.items()
        }
        num = {norm.num_modalities for norm in self.norms.values()}
        if names is None:
            names = getattr(inner, "names", None)
        if names is None:
            names = [f"m{i}" for i in range(max(num, default=0))]
        self.names = [str(n) for n in names]
        if num and max(num) > len(self.names):
            raise ValueError(f"{len(self.names)} modality names {self.names} for norms of {max(num)} modalities")
        self.penalised: dict[str, Tensor] = {}
        self.state: dict[str, dict[str, Tensor]] = {}
        for name, norm in self.norms.items():
            g = norm.gamma
            shape, dev = g.shape, g.device
            self.penalised[name] = (
                disjoint_groups(*shape, device=dev)
                if mode == "disjoint"
                else torch.ones(shape, dtype=torch.bool, device=dev)
            )
            self.state[name] = {
                "below": torch.zeros(shape, dtype=torch.bool, device=dev),
                "ever": torch.zeros(shape, dtype=torch.bool, device=dev),
                "first_step": torch.full(shape, -1, dtype=torch.long, device=dev),
                "recoveries": torch.zeros(shape, dtype=torch.long, device=dev),
                "weak": torch.ones(shape, dtype=torch.bool, device=dev),
                "rises_weak": torch.zeros(shape, dtype=torch.long, device=dev),
                "rises_strong": torch.zeros(shape, dtype=torch.long, device=dev),
            }
        self.updates = 0  # a Python count of update() calls (no tensor involved)

    @property
    def layers(self) -> list[str]:
        """The tracked norms' qualified names, bottom to top (module order)."""
        return list(self.norms)

    # -- every step ------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int, *, lam: float | None = None, l1_in_grad: float = 0.0) -> None:
        """Read every scale after optimiser step ``step`` (an int); tensor operations only, no host sync.

        With ``lam`` (λ) and the scales' gradients still on the parameters, it also compares the loss gradient
        ``|dL/dgamma|`` of each scale under θ with λ, the quantity of Theorem 1 (a scale at 0 stays when it is
        below λ). ``l1_in_grad``: the ℓ1 coefficient the gradient holds (``λ`` with the gradient solver, 0 with
        the proximal one), taken off to leave the loss's own gradient.
        """
        for name, norm in self.norms.items():
            s = self.state[name]
            gamma = norm.gamma.detach()
            below = gamma.abs() < self.thresholds[name]
            rise = s["below"] & ~below
            if lam is not None and norm.weight.grad is not None:
                grad = norm.weight.grad.detach().view_as(gamma) - l1_in_grad * gamma.sign() * self.penalised[name]
                weak = grad.abs() < lam
                s["rises_weak"].add_(rise & s["weak"])
                s["rises_strong"].add_(rise & ~s["weak"])
                s["weak"].copy_(torch.where(below, weak, s["weak"]))
            s["first_step"].copy_(torch.where(below & ~s["ever"], step, s["first_step"]))
            s["recoveries"].add_(rise)
            s["ever"].logical_or_(below)
            s["below"].copy_(below)
        self.updates += 1

    # -- at evaluation ---------------------------------------------------------
    def summary(self) -> dict:
        """Counts and shares per layer and modality over the penalised scales, and in total (one host copy).

        Returns ``{"threshold": theta or {layer: theta}, "mode", "updates", "layers": {layer: {modality:
        record}}, "total": record}`` where a record is ``{"penalised", "under", "ever", "recovered",
        "back_now", "rises", "share_under", "share_ever", "share_recovered"}``: ``under`` are below
        ``theta`` now, ``ever`` were below at some update, ``recovered`` of those rose back to
        ``>= theta`` at least once, ``back_now`` of those are above now, ``rises`` counts every rise.
        ``share_under`` and ``share_ever`` are fractions of ``penalised``, ``share_recovered`` of
        ``ever`` (``None`` when the denominator is 0). Where :meth:`update` was given λ, Theorem 1's quantity
        too: ``under_weak_gradient`` (under θ now, with ``|dL/dgamma| < λ`` at its last update there: the
        theorem says these stay), ``rises_after_weak_gradient`` / ``rises_after_strong_gradient`` (rises back
        above θ after a weak / a strong gradient: the theorem expects the rises to follow strong ones).
        """
        return _summarize(self.state, self.penalised, self.names, self.thresholds, self.mode, self.updates)

    def histograms(self) -> dict[str, Tensor]:
        """``{"<layer>/<modality>": Tensor(n,)}``: ``|gamma|`` of that modality's penalised scales (on the device).

        For ``SummaryWriter.add_histogram(f"gamma/{tag}", values, step)``.
        """
        out = {}
        for name, norm in self.norms.items():
            g = norm.gamma.detach().abs()
            for m in range(g.shape[0]):
                out[f"{name}/{self.names[m]}"] = g[m][self.penalised[name][m]]
        return out

    # -- checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain values only (loads with ``torch.load(weights_only=True)``)."""
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "updates": self.updates,
            "names": list(self.names),
            "layers": {
                name: {"threshold": self.thresholds[name], **{k: t.clone() for k, t in s.items()}}
                for name, s in self.state.items()
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from :meth:`state_dict` of a tracker of the same model; a mismatch raises ``ValueError``."""
        if not isinstance(state, Mapping) or "layers" not in state:
            raise ValueError("not a GammaTracker state (expected a dict with 'layers')")
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"gamma tracker state is for sparsity mode {state['mode']!r}, this tracker {self.mode!r}")
        saved = list(state["layers"])
        if saved != self.layers:
            missing = [n for n in self.layers if n not in saved]
            extra = [n for n in saved if n not in self.layers]
            raise ValueError(f"gamma tracker state is for other layers (missing {missing[:3]}, unknown {extra[:3]})")
        for name, entry in state["layers"].items():
            for key in _FIELDS:
                if key not in entry:
                    raise ValueError(f"gamma tracker state of layer {name} lacks {key!r}")
                if tuple(entry[key].shape) != tuple(self.state[name][key].shape):
                    raise ValueError(
                        f"gamma tracker state of layer {name}: {key} has shape "
                        f"{tuple(entry[key].shape)}, expected {tuple(self.state[name][key].shape)}"
                    )
        for name, entry in state["layers"].items():
            for key in _FIELDS + tuple(k for k in _GRAD_FIELDS if k in entry):  # version 1 lacks the gradient ones
                self.state[name][key].copy_(entry[key])
        self.updates = int(state.get("updates", 0))
