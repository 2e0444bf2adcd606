"""Modality names at the edge: a mapping in, one stacked run, outputs by name out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from cen.core.context import present_modalities
from cen.core.defaults import ENSEMBLE_KEY
from cen.core.ensemble import Ensemble
from cen.core.norms import _ModalityNorm
from cen.core.stacking import check_names, stack, unstack


class MultiModal(nn.Module):
    """Wrap a converted model so it takes ``{name: Tensor(B, ...)}``.

    Args:
        model: a network converted with :func:`cen.convert` for ``len(names)``
            modalities, taking a stacked ``Tensor(B*M, ...)`` and returning a
            ``Tensor(B*M, ...)``.
        names: the modality names, in the order the model's norms use.
        ensemble: ``True`` to add a learned :class:`cen.Ensemble` (or pass one);
            its output is returned under ``"ensemble"``.

    At inference some modalities may be missing: the call then runs inside
    :func:`cen.core.context.present_modalities`, so the norms use only the
    present modalities' slices, the fusions combine only the present ones
    (the exchange averages over them, none with one) and the ensemble
    renormalises ``alpha`` over them. In training every modality must be given,
    unless :attr:`train_missing` is set (modality dropout, ``train.modality_dropout``):
    then the norms also take their batch statistics from the present modalities'
    slices. No state is stored on the modules but that flag, so calls from several
    threads, or models sharing modules, do not interfere.
    """

    ENSEMBLE_KEY = ENSEMBLE_KEY
    #: Allow missing modalities in training mode (modality dropout); off: a missing modality is an error there.
    train_missing: bool = False

    def __init__(self, model: nn.Module, names: Sequence[str], *, ensemble: bool | Ensemble = False) -> None:
        super().__init__()
        self.names = check_names(names, "MultiModal names")
        if self.ENSEMBLE_KEY in self.names:
            raise ValueError(f"{self.ENSEMBLE_KEY!r} is reserved for the fused output; rename that modality")
        wrong = [
            (name, m.num_modalities)
            for name, m in model.named_modules()
            if isinstance(m, _ModalityNorm) and m.num_modalities != len(self.names)
        ]
        if wrong:
            raise ValueError(
                f"{len(self.names)} names {list(self.names)} given, but norms {wrong[:5]} were converted for "
                "another number of modalities"
            )
        self.model = model
        if ensemble is True:
            ensemble = Ensemble(self.names)
        elif isinstance(ensemble, Ensemble) and ensemble.names != self.names:
            raise ValueError(f"the ensemble's names {list(ensemble.names)} differ from {list(self.names)}")
        self.ensemble = ensemble or None

    def present_names(self, inputs: Mapping[str, Tensor]) -> tuple[str, ...]:
        """The names of ``inputs`` in model order, after checking them."""
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"expected a mapping {{name: Tensor}} with names from {list(self.names)}, got {type(inputs).__name__}"
            )
        unknown = [k for k in inputs if k not in self.names]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected names from {list(self.names)}")
        present = tuple(name for name in self.names if name in inputs)
        if not present:
            raise ValueError(f"no modality given; expected some of {list(self.names)}")
        if self.training and not self.train_missing and len(present) < len(self.names):
            missing = [n for n in self.names if n not in inputs]
            raise ValueError(
                f"modalities {missing} are missing; in training every modality of {list(self.names)} is needed"
            )
        return present

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{name: Tensor(B, ...)}`` -> ``{name: Tensor(B, ...)}`` (plus ``"ensemble"``)."""
        present = self.present_names(inputs)
        x = stack(inputs, names=present)
        if len(present) == len(self.names):  # enters no context: ContextVar.set would break a compiled graph
            out = self.model(x)
        else:
            indices = tuple(self.names.index(n) for n in present)
            with present_modalities(indices, training=self.training and self.train_missing):
                out = self.model(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"the wrapped model must return a Tensor(B*M, ...), got {type(out).__name__}")
        outputs = unstack(out, present)
        if self.ensemble is not None:
            outputs[self.ENSEMBLE_KEY] = self.ensemble(outputs)
        return outputs
