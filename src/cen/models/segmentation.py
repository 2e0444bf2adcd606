"""CEN for RGB-D semantic segmentation on any backbone: :class:`SegmentationCEN` and :class:`RefineNetCEN`.

An encoder from :func:`cen.models.backbones.build_encoder` (a torchvision ResNet, MiT,
or a timm model) converted with :func:`cen.convert` (shared convolutions, private
norms, fusion points where the :class:`cen.FusionSpec` puts them), a decoder that
runs *once* on the modality-stacked batch (the reference's light-weight RefineNet,
:mod:`cen.models.refinenet`, or SegFormer's all-MLP decoder, :mod:`cen.models.mlp_decoder`),
a shared classifier, one prediction per modality, and the fused prediction
(:mod:`cen.models.heads`: the learned ``alpha``-ensemble or a concat-fusion block).

:class:`RefineNetCEN` is the paper's model (ResNet + RefineNet decoder), with the
constructor and state-dict layout it has always had; it takes any other backbone
too. :class:`SegmentationCEN` adds ``decoder="mlp"``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models import WeightsEnum

from cen.core.convert import ExchangeSpec, convert
from cen.core.spec import FusionSpec, model_spec
from cen.core.stacking import check_names
from cen.models.backbones import build_encoder
from cen.models.heads import ConcatFusionHead, HeadedMultiModal, check_head
from cen.models.mlp_decoder import DEFAULT_EMBED_DIM, MLPDecoder
from cen.models.refinenet import RefineNetDecoder, conv3x3

#: The known values of ``decoder``.
DECODERS = ("refinenet", "mlp")

#: The default dropout of each decoder (the reference RefineNet's 0.5, SegFormer's 0.1).
DEFAULT_DROPOUT = {"refinenet": 0.5, "mlp": 0.1}

#: SegmentationCEN's arguments that RefineNetCEN does not take (its decoder is fixed).
_NOT_REFINENET = ("decoder", "decoder_dim")


class Segmenter(nn.Module):
    """Encoder + decoder on a stacked batch: ``Tensor(B*M, 3, H, W)`` -> ``Tensor(B*M, K, h1, w1)``.

    ``(h1, w1)`` is the size of the encoder's shallowest stage (1/4 of the input for
    the ResNets, MiT and most timm models).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def features(self, x: Tensor) -> Tensor:
        """Stacked images ``(B*M, 3, H, W)`` -> the decoder's last features ``(B*M, C, h1, w1)``."""
        if x.dim() != 4:
            raise ValueError(f"expected a stacked image batch (B*M, C, H, W), got shape {tuple(x.shape)}")
        return self.decoder.features(self.encoder(x))

    def predict(self, features: Tensor) -> Tensor:
        """:meth:`features` -> per-row logits ``(B*M, K, h1, w1)`` (dropout and the shared classifier)."""
        return self.decoder.classify(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict(self.features(x))


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class SegmentationCEN(HeadedMultiModal):
    """CEN segmentation on any backbone: ``{name: Tensor(B, 3, H, W)}`` -> ``{name: logits, ..., "ensemble": logits}``.

    Args:
        backbone: a name :func:`cen.models.backbones.build_encoder` knows: ``"resnet18"`` ...
            ``"resnet152"`` (torchvision), ``"mit_b0"`` ... ``"mit_b5"`` (SegFormer's MiT),
            a timm model with ``features_only`` support (e.g. ``"convnext_tiny"``), or
            ``"timm:NAME"``.
        num_classes: number of classes ``K >= 1``.
        modalities: modality names, in order (their norms' slots and ``alpha`` follow it).
            One name gives a plain unimodal network on the same code path.
        threshold: ``theta`` (``|gamma| < theta`` exchanges), default :data:`cen.core.defaults.THRESHOLD`.
        pretrained: backbone weights, loaded before the conversion so every modality starts
            from them: ``None`` (random) or a local file; for the ResNets also ``"imagenet"``
            (torchvision's ``IMAGENET1K_V1``, downloaded on first use) or a ``WeightsEnum``.
        decoder: ``"refinenet"`` (the reference's light-weight RefineNet, any number of
            stages) or ``"mlp"`` (SegFormer's all-MLP decoder, for transformer encoders).
        spec: the fusion settings as one :class:`cen.FusionSpec` (strategy, options,
            ``theta``, fusion points, shared convolutions); then ``threshold``, ``exchange``,
            ``fusion``, ``fusion_options`` and ``shared_convs`` must keep their defaults.
        exchange: ``True`` puts the fusion points where ``cen.convert(exchange="auto")``
            does (the registered blocks: ResNet blocks, MiT blocks, ...), ``False`` converts
            with private norms and no fusion; any other value is passed to :func:`cen.convert`
            as its ``exchange`` argument (norm names relative to the encoder, e.g.
            ``"layer4.0.bn2"``, or ``"body.layer1.0.bn1"`` in a timm encoder).
        ensemble: add a fused output (only with two or more modalities), made by ``head``.
        head: ``"ensemble"`` (the paper's learned ``alpha``-ensemble of the detached branch
            logits) or ``"concat"`` (Table A's concat-fusion block, :mod:`cen.models.heads`):
            the decoder features before the last dropout, ``(B*M, C, h1, w1)`` with ``C`` the
            decoder's ``out_channels``, viewed as ``(B, M*C, h1, w1)``, go through a 3x3 conv
            ``M*C -> C`` (no bias), ``BatchNorm2d(C)``, ReLU, dropout and a classifier like the
            decoder's (3x3 with bias for RefineNet, 1x1 for MLP), not detached. Every
            modality must then be given, at inference too.
        fusion, fusion_options, shared_convs: the strategy at the fusion points
            (:func:`cen.fusion_names`), its options, and whether the encoder's convolutions
            are shared (False: one private copy per modality, :mod:`cen.core.unshared`).
        dropout: the decoder's dropout (default 0.5 for RefineNet, as the reference; 0.1 for MLP).
        decoder_widths: RefineNet only: its stage widths, deepest first, one per encoder stage
            (default :func:`cen.models.refinenet.default_decoder_widths`).
        decoder_dim: MLP only: the common embedding width (default 256).
        backbone_options: keyword options of the encoder's builder (e.g. ``drop_path_rate``).

    The encoder is converted with ``spec``; the decoder is built after it and is shared by
    the modalities, its norms (the MLP decoder's one BatchNorm) made private without fusion.

    Output: a dict with a ``Tensor(B, K, h1, w1)`` per given modality, ``(h1, w1)`` the size
    of the encoder's shallowest stage (``ceil(H/4), ceil(W/4)`` for the ResNets), and, with
    a fused output, ``"ensemble"`` (:data:`cen.core.defaults.ENSEMBLE_KEY`);
    :attr:`output_names` lists the keys. At inference (``.eval()``) any non-empty subset of
    the modalities may be given with ``head="ensemble"``: the norms then use the given
    modalities' slots, the fusion combines them only (the exchange: none with one) and
    the ensemble renormalises ``alpha`` over them. ``head="concat"``, ``shared_convs=False``
    and ``fusion="gated_sum"`` need every modality (one-line ``ValueError`` otherwise).

    State dict: ``model.encoder.*`` (the encoder's own names; norms of ``M*C`` channels with
    modality ``m``'s channel ``c`` at ``m*C + c``), ``model.decoder.*`` and ``ensemble.alpha``
    (head ``"ensemble"``) or ``concat_head.fuse.weight``, ``concat_head.norm.*``,
    ``concat_head.out.1.*`` (head ``"concat"``). ``config`` holds the constructor arguments
    (``pretrained`` excepted; ``spec`` as :meth:`cen.FusionSpec.to_dict`, custom points recorded as
    ``"custom"``); ``spec`` is the :class:`cen.FusionSpec` used.
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        num_classes: int = 40,
        modalities: Sequence[str] = ("rgb", "depth"),
        threshold: float | None = None,
        pretrained: None | str | os.PathLike | WeightsEnum = None,
        *,
        decoder: str = "refinenet",
        spec: FusionSpec | Mapping | None = None,
        exchange: bool | ExchangeSpec | None = None,
        ensemble: bool = True,
        head: str = "ensemble",
        fusion: str | None = None,
        fusion_options: Mapping[str, object] | None = None,
        shared_convs: bool | None = None,
        dropout: float | None = None,
        decoder_widths: Sequence[int] | None = None,
        decoder_dim: int | None = None,
        backbone_options: Mapping[str, Any] | None = None,
    ) -> None:
        _check_positive_int(num_classes, "num_classes")
        names = check_names(modalities, "modalities")
        if not isinstance(decoder, str) or decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; known: {', '.join(DECODERS)}")
        dropout = DEFAULT_DROPOUT[decoder] if dropout is None else dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if decoder_widths is not None and decoder != "refinenet":
            raise ValueError(f"decoder_widths are RefineNet's stage widths; decoder={decoder!r} takes decoder_dim")
        if decoder_dim is not None:
            if decoder != "mlp":
                raise ValueError(f"decoder_dim is the MLP decoder's width; decoder={decoder!r} takes decoder_widths")
            _check_positive_int(decoder_dim, "decoder_dim")
        if backbone_options is not None and not isinstance(backbone_options, Mapping):
            raise TypeError(
                f"backbone_options must be a mapping of keyword options, got {type(backbone_options).__name__}"
            )
        spec = model_spec(
            spec,
            threshold=threshold,
            exchange=exchange,
            fusion=fusion,
            fusion_options=fusion_options,
            shared_convs=shared_convs,
        )
        fused = bool(ensemble) and len(names) > 1
        check_head(head, len(names), bool(ensemble))
        options = dict(backbone_options or {})

        encoder = build_encoder(backbone, pretrained, **options)
        in_channels = tuple(encoder.out_channels)
        if decoder_widths is not None and (
            len(decoder_widths) != len(in_channels)
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in decoder_widths)
        ):
            raise ValueError(
                f"decoder_widths must be {len(in_channels)} positive ints (one per stage of {backbone}, "
                f"deepest first), got {decoder_widths!r}"
            )
        encoder = convert(encoder, len(names), spec)
        # The decoder is built after the conversion (as it always was: the same random draws for a seed).
        if decoder == "refinenet":
            dec: nn.Module = RefineNetDecoder(in_channels, num_classes, widths=decoder_widths, dropout=float(dropout))
        else:
            dim = DEFAULT_EMBED_DIM if decoder_dim is None else decoder_dim
            dec = MLPDecoder(in_channels, num_classes, embed_dim=dim, dropout=float(dropout))
        dec = convert(dec, len(names), FusionSpec(points=False))  # private norms (MLP's fuse.norm), no fusion
        concat = None
        if head == "concat":
            width = dec.out_channels
            classifier = (
                conv3x3(width, num_classes, bias=True) if decoder == "refinenet" else nn.Conv2d(width, num_classes, 1)
            )
            out = nn.Sequential(nn.Dropout(p=float(dropout)), classifier)
            concat = ConcatFusionHead(len(names), width, norm=nn.BatchNorm2d(width), out=out)
        super().__init__(Segmenter(encoder, dec), names, concat_head=concat, ensemble=fused)
        self.backbone = backbone
        self.num_classes = num_classes
        self.spec = spec
        self.threshold = spec.threshold
        self.decoder_name = decoder
        self.config = {
            "backbone": backbone,
            "num_classes": num_classes,
            "modalities": list(names),
            "spec": spec.to_dict(),
            "ensemble": fused,
            "head": head,
            "dropout": float(dropout),
            "decoder": decoder,
            "decoder_widths": list(dec.widths) if decoder == "refinenet" else None,
            "decoder_dim": dec.out_channels if decoder == "mlp" else None,
            "backbone_options": options,
        }

    @property
    def encoder(self) -> nn.Module:
        """The converted encoder (shared convolutions, private norms)."""
        return self.model.encoder

    @property
    def decoder(self) -> nn.Module:
        """The decoder (:class:`~cen.models.refinenet.RefineNetDecoder` or :class:`~cen.models.mlp_decoder.MLPDecoder`)."""
        return self.model.decoder

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone's parameters (all its convolutions and private norms).

        For the ResNets these are exactly the parameters the reference training script
        puts in its encoder optimiser (names matching ``conv1|bn1|layer``).
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
            f"backbone={self.backbone!r}, decoder={self.decoder_name!r}, num_classes={self.num_classes}, "
            f"modalities={list(self.names)}, head={self.head!r}"
        )


def _signature_without(function: Any, names: Sequence[str]) -> inspect.Signature:
    signature = inspect.signature(function)
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in names])


class RefineNetCEN(SegmentationCEN):
    """CEN with a RefineNet decoder (the paper's model): ``{name: Tensor(B, 3, H, W)}`` -> ``{name: logits, ...}``.

    :class:`SegmentationCEN` with ``decoder="refinenet"``; the arguments are the same
    (without ``decoder`` and ``decoder_dim``; ``dropout`` 0.5). With the torchvision
    ResNets (``"resnet18"`` ... ``"resnet152"``; the paper: ``"resnet101"`` or ``"resnet152"``)
    it is exactly the reference model: channel exchange after every bottleneck's ``bn2``
    (BasicBlock: ``bn1``), the reference's decoder widths (512, 256, 256, 256)
    (ResNet-18/34: (512, 256, 128, 64)), logits at 1/4 of the input, state dict
    ``model.encoder.*`` in torchvision's names, ``model.decoder.*`` in the reference's, so
    reference checkpoints convert by renaming (:mod:`cen.models.reference`).
    ``config`` holds the constructor arguments; ``RefineNetCEN(**config)`` rebuilds the model
    (without a custom ``exchange``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for key in _NOT_REFINENET:
            if key in kwargs:
                raise TypeError(
                    f"RefineNetCEN takes no {key!r}: its decoder is RefineNet; use SegmentationCEN({key}=...)"
                )
        super().__init__(*args, decoder="refinenet", **kwargs)
        for key in _NOT_REFINENET:
            del self.config[key]

    # SegmentationCEN's arguments less the decoder's choice, for help(), IDEs and inspect.signature.
    __init__.__signature__ = _signature_without(SegmentationCEN.__init__, _NOT_REFINENET)

    @property
    def decoder(self) -> RefineNetDecoder:
        return self.model.decoder

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone!r}, num_classes={self.num_classes}, modalities={list(self.names)}, "
            f"head={self.head!r}"
        )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "DECODERS",
    "RefineNetCEN",
    "SegmentationCEN",
    "Segmenter",
    "count_parameters",
]
