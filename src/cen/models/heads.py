"""The fused prediction of a CEN model: the alpha-ensemble or a concat-fusion block (``head=``).

A CEN model predicts once per modality through its shared head. Its *fused*
prediction, returned under :data:`cen.core.defaults.ENSEMBLE_KEY`, is chosen by
``head``:

* ``"ensemble"`` (the paper's CEN): ``sum_m softmax(alpha)_m * pred_m`` with the
  predictions detached (:class:`cen.Ensemble`), so the fused loss trains ``alpha`` only.
* ``"concat"`` (the author feedback's Table A, "CEN with a concat-fusion block in
  place of the ensemble"): the per-modality decoder features ``f`` (the input of
  the final prediction layer, still stacked ``(B*M, C, H, W)``) are concatenated
  across modalities per sample, which on the sample-major stack is the free view
  ``(B, M*C, H, W)`` (channel ``m*C + c`` is modality ``m``'s channel ``c``), and
  fused by :class:`ConcatFusionHead`: 3x3 conv ``M*C -> C`` (no bias), a norm,
  ReLU, then the model's usual output layer, into one prediction.

With ``"concat"`` the per-modality predictions are kept (each trained by its own
loss, as in CEN) and the fused prediction is *not* detached: its loss trains the
fusion block and, through the features, the shared decoder and the encoder. The
block is then a learned fusion of the whole network, as Table A's row compares
it with the ensemble; detaching it would reduce it to a head trained on frozen
features. Every modality must be present (the block's input has ``M*C``
channels), at inference too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY
from cen.core.multimodal import MultiModal
from cen.core.stacking import stack, unstack

#: The known values of ``head``.
HEADS = ("ensemble", "concat")


def check_head(head: object, num_modalities: int, ensemble: bool) -> str:
    """``head`` if it is known and fits the model, else a one-line ``ValueError``.

    ``"concat"`` needs two or more modalities and a fused output (``ensemble=True``).
    """
    if not isinstance(head, str) or head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    if head == "concat" and num_modalities < 2:
        raise ValueError(f"head='concat' fuses two or more modalities, got {num_modalities}")
    if head == "concat" and not ensemble:
        raise ValueError("head='concat' is the fused output, so it needs ensemble=True, got ensemble=False")
    return head


class ConcatFusionHead(nn.Module):
    """Concat-fusion block: stacked features ``(B*M, C, H, W)`` -> one prediction ``(B, ...)``.

    ``out(relu(norm(fuse(f.reshape(B, M*C, H, W)))))`` with ``fuse`` a 3x3
    convolution ``M*C -> C`` without bias (the norm follows), ``norm`` a norm over
    ``C`` channels and ``out`` the model's usual output layer (e.g. dropout and the
    classifier). The reshape is a free view of the contiguous sample-major stack.

    Args:
        num_modalities: ``M >= 2``.
        channels: ``C``, the channels of each modality's features.
        norm: a module normalising ``C`` channels (``BatchNorm2d(C)``, ``InstanceNorm2d(C)`` ...).
        out: the output layer, ``(B, C, H, W)`` -> the prediction.

    Submodules (state dict names): ``fuse``, ``norm``, ``out``.
    """

    def __init__(self, num_modalities: int, channels: int, *, norm: nn.Module, out: nn.Module) -> None:
        super().__init__()
        if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) or num_modalities < 2:
            raise ValueError(f"num_modalities must be an int >= 2 for a concat fusion, got {num_modalities!r}")
        self.num_modalities = num_modalities
        self.channels = channels
        self.fuse = nn.Conv2d(num_modalities * channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm = norm
        self.out = out

    def forward(self, features: Tensor) -> Tensor:
        """``Tensor(B*M, C, H, W)`` (row ``b*M + m``) -> the output layer's ``Tensor(B, ...)``."""
        n, c = features.shape[:2]
        if n % self.num_modalities or c != self.channels:
            raise ValueError(
                f"ConcatFusionHead expects stacked features (B*{self.num_modalities}, {self.channels}, H, W), "
                f"got shape {tuple(features.shape)}"
            )
        x = features.reshape(n // self.num_modalities, self.num_modalities * c, *features.shape[2:])
        return self.out(nn.functional.relu(self.norm(self.fuse(x))))

    def extra_repr(self) -> str:
        return f"num_modalities={self.num_modalities}, channels={self.channels}"


class HeadedMultiModal(MultiModal):
    """A :class:`cen.MultiModal` whose fused output is the ensemble or a :class:`ConcatFusionHead`.

    The wrapped ``model`` must offer ``features(x)`` (stacked input -> stacked
    features ``(B*M, C, ...)``, the input of the final layer) and ``predict(f)``
    (features -> per-modality predictions), with ``model(x) == model.predict(model.features(x))``.

    Args:
        model, names: as :class:`cen.MultiModal`.
        concat_head: ``None`` for ``head="ensemble"`` (then ``ensemble`` is passed on
            to :class:`cen.MultiModal`), or the concat-fusion block.
        ensemble: add the alpha-ensemble (ignored with a concat head).

    Attributes: ``head`` (``"ensemble"`` or ``"concat"``), ``concat_head`` (the block or
    ``None``), ``ensemble`` (the alpha-ensemble or ``None``), :attr:`output_names`.
    """

    def __init__(
        self, model: nn.Module, names: Sequence[str], *, concat_head: ConcatFusionHead | None, ensemble: bool
    ) -> None:
        super().__init__(model, names, ensemble=bool(ensemble) and concat_head is None)
        self.head = "ensemble" if concat_head is None else "concat"
        self.concat_head = concat_head

    @property
    def output_names(self) -> tuple[str, ...]:
        """The keys of the output with every modality given: the modality names, then the fused key if any."""
        fused = self.ensemble is not None or self.concat_head is not None
        return (*self.names, ENSEMBLE_KEY) if fused else tuple(self.names)

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{name: Tensor(B, ...)}`` -> ``{name: prediction, ..., "ensemble": fused prediction}``."""
        if self.concat_head is None:
            return super().forward(inputs)
        present = self.present_names(inputs)
        if len(present) < len(self.names):
            missing = [n for n in self.names if n not in present]
            raise ValueError(
                f"head='concat' fuses the features of every modality of {list(self.names)}, but {missing} "
                "are missing; give all of them (or use head='ensemble')"
            )
        features = self.model.features(stack(inputs, names=present))
        outputs = unstack(self.model.predict(features), present)
        outputs[ENSEMBLE_KEY] = self.concat_head(features)
        return outputs


__all__ = ["HEADS", "ConcatFusionHead", "HeadedMultiModal", "check_head"]
