"""CEN RefineNet for RGB-D semantic segmentation (the paper's main experiment).

A torchvision ResNet converted with :func:`cen.convert` (shared convolutions,
private BatchNorms, channel exchange after every bottleneck's ``bn2``) and the
light-weight RefineNet decoder of the reference code, which runs *once* on the
modality-stacked batch. The classifier is shared; each modality gets its own
logits and :class:`cen.Ensemble` fuses them with a learned ``alpha``.

The decoder has the reference model's blocks, widths and order (module names
included, so reference checkpoints convert by renaming, see
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
* head: dropout 0.5, ``clf_conv`` (3x3 with bias) to ``num_classes``, at 1/4 of
  the input size.

All decoder convolutions are 3x3 without bias, except the first conv of every
residual conv unit (RCU) and the classifier. Upsampling is bilinear with
``align_corners=True``, to the size of the next stage's features.

One behaviour of the reference is kept on purpose: its RCU applies an in-place
ReLU to its input before the residual is added, so the unit computes
``relu(x) + conv2(relu(conv1(relu(x))))``, not ``x + ...``. Reproducing it is
what makes converted reference checkpoints give the reference outputs.

ResNet-18/34 (BasicBlock, stage widths 64/128/256/512 instead of
256/512/1024/2048) are not in the reference code. The reference's
``*_dimred`` convolutions only ever reduce (2048 -> 512, 1024 -> 256,
512 -> 256, 256 -> 256); we keep that rule and cap each decoder stage's width
by the encoder's width there, which gives (512, 256, 128, 64) for the
BasicBlock ResNets (and exactly the reference widths for the bottleneck ones).
The blocks and their order are unchanged; the ``*_b3_joint_varout_dimred``
convolutions then also reduce from one stage's width to the next. Exchange
happens after each BasicBlock's ``bn1`` (see :mod:`cen.core.convert`).
``decoder_widths=`` overrides the widths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from cen.core.convert import ExchangeSpec, convert
from cen.core.spec import FusionSpec, model_spec
from cen.core.stacking import check_names
from cen.models.backbones import BACKBONES, build_resnet_encoder, check_backbone, stage_channels
from cen.models.heads import ConcatFusionHead, HeadedMultiModal, check_head

# Decoder width of each stage of the reference model, from the deepest (layer4)
# to the shallowest (layer1).
DECODER_WIDTHS = (512, 256, 256, 256)


def default_decoder_widths(in_channels: Sequence[int]) -> tuple[int, int, int, int]:
    """Decoder widths for encoder stage widths ``in_channels`` (``layer1`` .. ``layer4``).

    The reference widths, capped by the encoder's width at that stage so that the
    ``*_dimred`` convolutions never expand: (512, 256, 256, 256) for the bottleneck
    ResNets (as the reference), (512, 256, 128, 64) for ResNet-18/34.
    """
    deepest_first = tuple(reversed(tuple(in_channels)))
    return tuple(min(w, c) for w, c in zip(DECODER_WIDTHS, deepest_first))  # type: ignore[return-value]


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
    """The light-weight RefineNet decoder of the reference CEN code (see module docstring).

    Args:
        in_channels: channels of ``layer1`` .. ``layer4`` of the encoder.
        num_classes: output channels of the classifier.
        widths: the four stage widths, deepest (``layer4``) stage first; default
            :func:`default_decoder_widths`.
        dropout: probability of the three dropouts (on ``layer4``, ``layer3`` and before the classifier).

    ``forward((l1, l2, l3, l4))`` returns logits at the resolution of ``l1``.
    Nothing here mixes samples, so it runs unchanged on a modality-stacked batch.
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
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must give the channels of 4 encoder stages, got {in_channels!r}")
        widths = default_decoder_widths(in_channels) if widths is None else tuple(widths)
        if len(widths) != 4 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"widths must be 4 positive ints (layer4 stage first), got {widths!r}")
        self.widths = widths
        c1, c2, c3, c4 = in_channels
        w1, w2, w3, w4 = widths  # w1 for the layer4 stage ... w4 for the layer1 stage
        self.dropout = nn.Dropout(p=dropout)
        # Stage 1 (layer4). Names as in the reference model, in its order.
        self.p_ims1d2_outl1_dimred = conv3x3(c4, w1)
        self.adapt_stage1_b = RCUChain(w1, w1, 2)
        self.mflow_conv_g1_pool = ChainedResidualPooling(w1, w1, 4)
        self.mflow_conv_g1_b = RCUChain(w1, w1, 3)
        self.mflow_conv_g1_b3_joint_varout_dimred = conv3x3(w1, w2)
        # Stage 2 (layer3)
        self.p_ims1d2_outl2_dimred = conv3x3(c3, w2)
        self.adapt_stage2_b = RCUChain(w2, w2, 2)
        self.adapt_stage2_b2_joint_varout_dimred = conv3x3(w2, w2)
        self.mflow_conv_g2_pool = ChainedResidualPooling(w2, w2, 4)
        self.mflow_conv_g2_b = RCUChain(w2, w2, 3)
        self.mflow_conv_g2_b3_joint_varout_dimred = conv3x3(w2, w3)
        # Stage 3 (layer2)
        self.p_ims1d2_outl3_dimred = conv3x3(c2, w3)
        self.adapt_stage3_b = RCUChain(w3, w3, 2)
        self.adapt_stage3_b2_joint_varout_dimred = conv3x3(w3, w3)
        self.mflow_conv_g3_pool = ChainedResidualPooling(w3, w3, 4)
        self.mflow_conv_g3_b = RCUChain(w3, w3, 3)
        self.mflow_conv_g3_b3_joint_varout_dimred = conv3x3(w3, w4)
        # Stage 4 (layer1)
        self.p_ims1d2_outl4_dimred = conv3x3(c1, w4)
        self.adapt_stage4_b = RCUChain(w4, w4, 2)
        self.adapt_stage4_b2_joint_varout_dimred = conv3x3(w4, w4)
        self.mflow_conv_g4_pool = ChainedResidualPooling(w4, w4, 4)
        self.mflow_conv_g4_b = RCUChain(w4, w4, 3)
        # Classifier
        self.clf_conv = conv3x3(w4, num_classes, bias=True)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    def features(self, features: Sequence[Tensor]) -> Tensor:
        """``(l1, l2, l3, l4)`` -> the classifier's input ``(N, widths[3], h1, w1)`` (before the last dropout)."""
        l1, l2, l3, l4 = features
        l4 = self.dropout(l4)
        l3 = self.dropout(l3)

        x = self.adapt_stage1_b(self.p_ims1d2_outl1_dimred(l4))
        x = F.relu(x)
        x = self.mflow_conv_g1_b(self.mflow_conv_g1_pool(x))
        x = self._up(self.mflow_conv_g1_b3_joint_varout_dimred(x), l3)

        y = self.adapt_stage2_b2_joint_varout_dimred(self.adapt_stage2_b(self.p_ims1d2_outl2_dimred(l3)))
        x = F.relu(y + x)
        x = self.mflow_conv_g2_b(self.mflow_conv_g2_pool(x))
        x = self._up(self.mflow_conv_g2_b3_joint_varout_dimred(x), l2)

        y = self.adapt_stage3_b2_joint_varout_dimred(self.adapt_stage3_b(self.p_ims1d2_outl3_dimred(l2)))
        x = F.relu(y + x)
        x = self.mflow_conv_g3_b(self.mflow_conv_g3_pool(x))
        x = self._up(self.mflow_conv_g3_b3_joint_varout_dimred(x), l1)

        y = self.adapt_stage4_b2_joint_varout_dimred(self.adapt_stage4_b(self.p_ims1d2_outl4_dimred(l1)))
        x = F.relu(y + x)
        return self.mflow_conv_g4_b(self.mflow_conv_g4_pool(x))

    def classify(self, features: Tensor) -> Tensor:
        """Dropout and ``clf_conv``: :meth:`features`' ``(N, widths[3], h, w)`` -> logits ``(N, num_classes, h, w)``."""
        return self.clf_conv(self.dropout(features))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``(l1, l2, l3, l4)`` -> logits ``(N, num_classes, h1, w1)`` at the resolution of ``l1``."""
        return self.classify(self.features(features))


class Segmenter(nn.Module):
    """Encoder + decoder on a stacked batch: ``Tensor(B*M, 3, H, W)`` -> ``Tensor(B*M, K, H/4, W/4)``."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def features(self, x: Tensor) -> Tensor:
        """Stacked images ``(B*M, 3, H, W)`` -> the decoder's last features ``(B*M, widths[3], H/4, W/4)``."""
        if x.dim() != 4:
            raise ValueError(f"expected a stacked image batch (B*M, C, H, W), got shape {tuple(x.shape)}")
        return self.decoder.features(self.encoder(x))

    def predict(self, features: Tensor) -> Tensor:
        """:meth:`features` -> per-row logits ``(B*M, K, H/4, W/4)`` (dropout and the shared classifier)."""
        return self.decoder.classify(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict(self.features(x))


class RefineNetCEN(HeadedMultiModal):
    """CEN with a RefineNet decoder: ``{name: Tensor(B, 3, H, W)}`` -> ``{name: logits, ..., "ensemble": logits}``.

    Args:
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        num_classes: number of classes ``K >= 1``.
        modalities: modality names, in order (their norms' slots and ``alpha`` follow it).
            One name gives a plain unimodal RefineNet on the same code path.
        spec: the fusion settings (:class:`cen.FusionSpec`: strategy, options, θ, fusion points,
            shared convolutions) of the encoder; default exchange after every block's registered norm
            (``bn2`` of a Bottleneck), θ :data:`cen.core.defaults.THRESHOLD`, shared convolutions.
            ``shared_convs=False`` unshares the encoder's convolutions only; the decoder is built
            after the conversion and stays shared by the modalities.
        threshold, exchange, fusion, fusion_options, shared_convs: the same settings as loose
            keywords (older code; ``exchange=True`` is ``points="auto"``, ``False`` private norms
            without fusion, other values the names of the encoder's norms, e.g. ``"layer4.0.bn2"``).
        pretrained: backbone weights: ``None`` (random), ``"imagenet"`` (torchvision's
            ``IMAGENET1K_V1``, downloaded on first use), a torchvision ``WeightsEnum``
            member, or the path of a local torchvision-style ResNet state dict. They are
            loaded before conversion, so every modality starts from them.
        ensemble: add a fused output (only with two or more modalities), made by ``head``.
        head: ``"ensemble"`` (the paper's learned ``alpha``-ensemble of the detached
            branch logits) or ``"concat"`` (Table A's concat-fusion block, see
            :mod:`cen.models.heads`): the decoder features before the last dropout,
            ``(B*M, widths[3], H/4, W/4)``, viewed as ``(B, M*widths[3], H/4, W/4)``,
            go through 3x3 conv ``M*widths[3] -> widths[3]`` (no bias),
            ``BatchNorm2d(widths[3])``, ReLU, dropout and a 3x3 classifier with bias
            (as ``clf_conv``), not detached: the fused loss also trains the decoder
            and the encoder. Every modality must then be given, at inference too.
        dropout: probability of the decoder's dropouts (0.5 as the reference).
        decoder_widths: the decoder's four stage widths, deepest first (default:
            the reference's (512, 256, 256, 256), capped by the encoder's stage
            widths, i.e. (512, 256, 128, 64) for ResNet-18/34).

    Output: a dict with a ``Tensor(B, K, ceil(H/4), ceil(W/4))`` per given modality
    and, with a fused output, ``"ensemble"`` (:data:`cen.core.defaults.ENSEMBLE_KEY`,
    made by ``head``); :attr:`output_names` lists the keys. At inference (``.eval()``)
    any non-empty subset of the modalities may be given with ``head="ensemble"``:
    the norms then use the given modalities' slots, the fusion combines them only
    (the exchange: none with one) and the ensemble renormalises ``alpha`` over them.
    The decoder works per sample, so it needs nothing special. ``head="concat"``,
    ``shared_convs=False`` and ``fusion="gated_sum"`` need every modality (one-line
    ``ValueError`` otherwise).

    State dict: ``model.encoder.*`` (torchvision ResNet names, norms of ``M*C``
    channels with modality ``m``'s channel ``c`` at ``m*C + c``), ``model.decoder.*``
    and ``ensemble.alpha`` (head ``"ensemble"``) or ``concat_head.fuse.weight``,
    ``concat_head.norm.*``, ``concat_head.out.1.*`` (head ``"concat"``).
    ``config`` holds the constructor arguments (``pretrained`` excepted; the spec as
    :meth:`cen.FusionSpec.to_dict`, custom points recorded as ``"custom"``).
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        num_classes: int = 40,
        modalities: Sequence[str] = ("rgb", "depth"),
        threshold: float | None = None,
        pretrained: None | str | os.PathLike | WeightsEnum = None,
        *,
        spec: FusionSpec | Mapping | None = None,
        exchange: bool | ExchangeSpec | None = None,
        ensemble: bool = True,
        head: str = "ensemble",
        fusion: str | None = None,
        fusion_options: Mapping[str, object] | None = None,
        shared_convs: bool | None = None,
        dropout: float = 0.5,
        decoder_widths: Sequence[int] | None = None,
    ) -> None:
        check_backbone(backbone)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        names = check_names(modalities, "modalities")
        spec = model_spec(
            spec, threshold=threshold, exchange=exchange, fusion=fusion, fusion_options=fusion_options,
            shared_convs=shared_convs,
        )  # fmt: skip
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if decoder_widths is not None and (
            len(decoder_widths) != 4
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in decoder_widths)
        ):
            raise ValueError(f"decoder_widths must be 4 positive ints (layer4 stage first), got {decoder_widths!r}")
        fused = bool(ensemble) and len(names) > 1
        check_head(head, len(names), bool(ensemble))
        encoder = build_resnet_encoder(backbone, pretrained)
        convert(encoder, len(names), spec)
        decoder = RefineNetDecoder(stage_channels(backbone), num_classes, widths=decoder_widths, dropout=float(dropout))
        concat = None
        if head == "concat":
            width = decoder.widths[3]
            out = nn.Sequential(nn.Dropout(p=float(dropout)), conv3x3(width, num_classes, bias=True))
            concat = ConcatFusionHead(len(names), width, norm=nn.BatchNorm2d(width), out=out)
        super().__init__(Segmenter(encoder, decoder), names, concat_head=concat, ensemble=fused)
        self.backbone = backbone
        self.num_classes = num_classes
        self.spec = spec
        self.threshold = spec.threshold
        self.config = {
            "backbone": backbone,
            "num_classes": num_classes,
            "modalities": list(names),
            "spec": spec.to_dict(),
            "ensemble": fused,
            "head": head,
            "dropout": float(dropout),
            "decoder_widths": list(decoder.widths),
        }

    @property
    def encoder(self) -> nn.Module:
        """The converted ResNet (shared convolutions, private norms)."""
        return self.model.encoder

    @property
    def decoder(self) -> RefineNetDecoder:
        return self.model.decoder

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone's parameters (stem, ``layer1`` .. ``layer4``, all private norms).

        The reference training script puts exactly these (names matching
        ``conv1|bn1|layer``) in its encoder optimiser.
        """
        return self.model.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Everything else: the decoder, the classifier and the ensemble's ``alpha`` (or the concat-fusion block).

        As in the reference training script, where ``alpha`` falls in the decoder
        group (learning rate and weight decay of the decoder).
        """
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        return (p for p in self.parameters() if id(p) not in encoder_ids)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone!r}, num_classes={self.num_classes}, modalities={list(self.names)}, "
            f"head={self.head!r}"
        )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BACKBONES",
    "ChainedResidualPooling",
    "RCUChain",
    "RefineNetCEN",
    "RefineNetDecoder",
    "ResidualConvUnit",
    "Segmenter",
    "count_parameters",
]
