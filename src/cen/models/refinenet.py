"""The light-weight RefineNet decoder of the reference CEN code, for encoders of any depth.

CEN's segmentation model (:class:`cen.models.RefineNetCEN`) runs it *once* on the
modality-stacked batch; nothing in it mixes samples and it has no norms.

For the four stages of a ResNet the decoder has the reference model's blocks, widths
and order (module names included, so reference checkpoints convert by renaming, see
:mod:`cen.models.reference`):

* stage 1, on ``layer4`` after dropout 0.5, width 512: ``p_ims1d2_outl1_dimred``
  (3x3), ``adapt_stage1_b`` (2 RCUs), ReLU, ``mflow_conv_g1_pool`` (chained
  residual pooling, 4 stages), ``mflow_conv_g1_b`` (3 RCUs),
  ``mflow_conv_g1_b3_joint_varout_dimred`` (3x3 to 256), upsampled to ``layer3``;
* stages 2, 3 and 4, on ``layer3`` (after dropout 0.5), ``layer2`` and ``layer1``,
  width 256: ``p_ims1d2_outl{k}_dimred``, ``adapt_stage{k}_b`` (2 RCUs),
  ``adapt_stage{k}_b2_joint_varout_dimred``, + the previous stage, ReLU,
  ``mflow_conv_g{k}_pool``, ``mflow_conv_g{k}_b`` (3 RCUs), and for stages 2 and 3
  ``mflow_conv_g{k}_b3_joint_varout_dimred`` and upsampling to the next stage;
* head: dropout 0.5, ``clf_conv`` (3x3 with bias) to ``num_classes``, at the
  resolution of ``layer1`` (1/4 of the input).

All decoder convolutions are 3x3 without bias, except the first conv of every
residual conv unit (RCU) and the classifier. Upsampling is bilinear with
``align_corners=True``, to the size of the next stage's features.

**Any depth.** With ``n`` encoder stages the decoder has ``n`` stages, named as
above with ``k = 1 .. n`` from the deepest: stage 1 as above, stages ``2 .. n`` as
stages 2-4 above, and ``mflow_conv_g{k}_b3_joint_varout_dimred`` plus upsampling
on every stage but the last. The dropout falls on the two deepest encoder
features (on the only one when ``n = 1``) and before the classifier. For ``n = 4``
this is exactly the reference decoder, names, order and numerics.

One behaviour of the reference is kept on purpose: its RCU applies an in-place
ReLU to its input before the residual is added, so the unit computes
``relu(x) + conv2(relu(conv1(relu(x))))``, not ``x + ...``. Reproducing it is
what makes converted reference checkpoints give the reference outputs.

Widths: the reference's ``*_dimred`` convolutions only ever reduce (2048 -> 512,
1024 -> 256, 512 -> 256, 256 -> 256); we keep that rule and cap each decoder
stage's width (512 for the deepest stage, 256 for the others) by the encoder's width
there (:func:`default_decoder_widths`): (512, 256, 256, 256) for the bottleneck
ResNets (the reference's), (512, 256, 128, 64) for ResNet-18/34, (320, 160, 80, 40)
for ConvNeXt-atto. ``widths=`` overrides them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

# Decoder width of the deepest stage and of every other stage, as the reference model's
# (512, 256, 256, 256) for its four stages.
DEEPEST_WIDTH, STAGE_WIDTH = 512, 256
DECODER_WIDTHS = (512, 256, 256, 256)


def default_decoder_widths(in_channels: Sequence[int]) -> tuple[int, ...]:
    """Decoder widths, deepest stage first, for encoder stage widths ``in_channels`` (shallowest first).

    512 for the deepest stage and 256 for the others, each capped by the encoder's
    width at that stage so that the ``*_dimred`` convolutions never expand:
    (512, 256, 256, 256) for the bottleneck ResNets (as the reference),
    (512, 256, 128, 64) for ResNet-18/34.
    """
    deepest_first = tuple(reversed(tuple(in_channels)))
    return tuple(min(DEEPEST_WIDTH if i == 0 else STAGE_WIDTH, c) for i, c in enumerate(deepest_first))


def _positive_ints(values: object) -> bool:
    return isinstance(values, (tuple, list)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
    )


def conv3x3(in_channels: int, out_channels: int, *, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``: the reference's RCU (see module docstring)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, bias=True)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class RCUChain(nn.Module):
    """``num_units`` residual conv units in a row."""

    def __init__(self, in_channels: int, channels: int, num_units: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            ResidualConvUnit(in_channels if i == 0 else channels, channels) for i in range(num_units)
        )

    def forward(self, x: Tensor) -> Tensor:
        for unit in self.units:
            x = unit(x)
        return x


class ChainedResidualPooling(nn.Module):
    """Light-weight chained residual pooling: ``num_stages`` of (5x5 max-pool, 3x3 conv), each added to the input."""

    def __init__(self, in_channels: int, channels: int, num_stages: int = 4) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv3x3(in_channels if i == 0 else channels, channels) for i in range(num_stages))

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = x + top
        return x


class RefineNetDecoder(nn.Module):
    """The light-weight RefineNet decoder of the reference CEN code, on ``n >= 1`` encoder stages (module docstring).

    Args:
        in_channels: channels of the encoder stages, shallowest first (``layer1`` .. ``layer4`` of a ResNet).
        num_classes: output channels of the classifier.
        widths: the ``n`` decoder stage widths, deepest stage first; default :func:`default_decoder_widths`.
        dropout: probability of the dropouts (on the two deepest features and before the classifier).

    ``forward((f_1, ..., f_n))`` (shallowest first) returns logits at the resolution of ``f_1``.
    Nothing here mixes samples, so it runs unchanged on a modality-stacked batch.
    Attributes: ``widths``, ``out_channels`` (``widths[-1]``, the classifier's input).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        widths: Sequence[int] | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if not _positive_ints(in_channels) or not in_channels:
            raise ValueError(
                f"in_channels must give the channels of >= 1 encoder stages (positive ints), got {in_channels!r}"
            )
        n = len(in_channels)
        widths = default_decoder_widths(in_channels) if widths is None else tuple(widths)
        if len(widths) != n or not _positive_ints(widths):
            raise ValueError(f"widths must be {n} positive ints (one per encoder stage, deepest first), got {widths!r}")
        self.widths = widths
        self.num_stages = n
        self.out_channels = widths[-1]
        deepest_first = tuple(reversed(in_channels))
        self.dropout = nn.Dropout(p=dropout)
        # Registered in the reference's order: stage by stage from the deepest, then the classifier.
        for k in range(1, n + 1):
            c, w = deepest_first[k - 1], widths[k - 1]
            setattr(self, f"p_ims1d2_outl{k}_dimred", conv3x3(c, w))
            setattr(self, f"adapt_stage{k}_b", RCUChain(w, w, 2))
            if k > 1:
                setattr(self, f"adapt_stage{k}_b2_joint_varout_dimred", conv3x3(w, w))
            setattr(self, f"mflow_conv_g{k}_pool", ChainedResidualPooling(w, w, 4))
            setattr(self, f"mflow_conv_g{k}_b", RCUChain(w, w, 3))
            if k < n:
                setattr(self, f"mflow_conv_g{k}_b3_joint_varout_dimred", conv3x3(w, widths[k]))
        self.clf_conv = conv3x3(widths[-1], num_classes, bias=True)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    def features(self, features: Sequence[Tensor]) -> Tensor:
        """``(f_1, ..., f_n)`` -> the classifier's input ``(N, widths[-1], h1, w1)`` (before the last dropout)."""
        if len(features) != self.num_stages:
            raise ValueError(f"RefineNetDecoder expects {self.num_stages} encoder features, got {len(features)}")
        deep = list(reversed(tuple(features)))
        deep[0] = self.dropout(deep[0])
        if self.num_stages > 1:
            deep[1] = self.dropout(deep[1])
        x = None
        for k in range(1, self.num_stages + 1):
            y = getattr(self, f"adapt_stage{k}_b")(getattr(self, f"p_ims1d2_outl{k}_dimred")(deep[k - 1]))
            if x is None:
                x = F.relu(y)
            else:
                x = F.relu(getattr(self, f"adapt_stage{k}_b2_joint_varout_dimred")(y) + x)
            x = getattr(self, f"mflow_conv_g{k}_b")(getattr(self, f"mflow_conv_g{k}_pool")(x))
            if k < self.num_stages:
                x = self._up(getattr(self, f"mflow_conv_g{k}_b3_joint_varout_dimred")(x), deep[k])
        return x

    def classify(self, features: Tensor) -> Tensor:
        """Dropout and ``clf_conv``: :meth:`features`' ``(N, widths[-1], h, w)`` -> logits ``(N, num_classes, h, w)``."""
        return self.clf_conv(self.dropout(features))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``(f_1, ..., f_n)`` -> logits ``(N, num_classes, h1, w1)`` at the resolution of ``f_1``."""
        return self.classify(self.features(features))


def __getattr__(name: str):
    # The segmentation models lived here before the decoder of any depth; their home is now
    # cen.models.segmentation (imported lazily: it imports this module).
    if name in ("RefineNetCEN", "Segmenter", "count_parameters"):
        from cen.models import segmentation

        return getattr(segmentation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DECODER_WIDTHS",
    "ChainedResidualPooling",
    "RCUChain",
    "RefineNetDecoder",
    "ResidualConvUnit",
    "conv3x3",
    "default_decoder_widths",
]
