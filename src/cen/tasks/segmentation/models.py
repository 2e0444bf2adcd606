"""Segmentation models by name (``model.name``): ``refinenet`` (the paper's, on any backbone, with
the RefineNet or the MLP decoder, ``model.decoder``) and ``tiny`` (smoke tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock

from cen.core.convert import convert
from cen.core.defaults import ENSEMBLE_KEY, THRESHOLD
from cen.core.multimodal import MultiModal
from cen.core.spec import FusionSpec, model_spec
from cen.errors import ConfigError
from cen.tasks.fusion_models import build_checked, fusion_spec
from cen.tasks.registry import MODELS


class TinySegNet(MultiModal):
    """A small CEN segmenter for smoke tests: stem, one exchanging BasicBlock, a 1x1 head, 1/4 resolution.

    Same interface as :class:`cen.models.RefineNetCEN` (``{name: Tensor(B, 3, H, W)}`` ->
    logits ``(B, K, H/4, W/4)`` by name, ``encoder_parameters`` / ``decoder_parameters``,
    ``output_names``), no dropout. ``spec`` (:class:`cen.FusionSpec`, or the loose keywords)
    goes to :func:`cen.convert` (the block's ``bn1`` is the fusion point); the fused output is
    always the alpha-ensemble (there is no concat-fusion head).
    """

    def __init__(
        self,
        num_classes: int,
        modalities: Sequence[str],
        threshold: float | None = None,
        *,
        spec: FusionSpec | Mapping | None = None,
        exchange: bool | None = None,
        ensemble: bool = True,
        width: int = 8,
        fusion: str | None = None,
        fusion_options: Mapping[str, object] | None = None,
        shared_convs: bool | None = None,
    ) -> None:
        spec = model_spec(
            spec, threshold=threshold, exchange=exchange, fusion=fusion, fusion_options=fusion_options,
            shared_convs=shared_convs,
        )  # fmt: skip
        encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            BasicBlock(width, width),
        )
        convert(encoder, len(modalities), spec)
        head = nn.Conv2d(width, num_classes, 1)
        super().__init__(nn.Sequential(encoder, head), modalities, ensemble=ensemble and len(modalities) > 1)
        self.spec = spec
        self.num_classes = num_classes

    @property
    def output_names(self) -> tuple[str, ...]:
        """The output keys with every modality given: the modality names, then ``"ensemble"`` if there is one."""
        return (*self.names, ENSEMBLE_KEY) if self.ensemble is not None else tuple(self.names)

    def encoder_parameters(self):
        return self.model[0].parameters()

    def decoder_parameters(self):
        enc = {id(p) for p in self.model[0].parameters()}
        return (p for p in self.parameters() if id(p) not in enc)


@MODELS.register("tiny")
def tiny(cfg) -> nn.Module:
    m = cfg.model
    if m.head != "ensemble":
        raise ConfigError(
            f"model.head={m.head!r} is not available for model.name='tiny' (it has no decoder "
            "features to fuse); use model.head=ensemble, or model.name=refinenet"
        )
    return build_checked(
        cfg,
        lambda: TinySegNet(
            int(cfg.data.num_classes),
            list(cfg.modalities),
            spec=fusion_spec(cfg, THRESHOLD),
            ensemble=m.ensemble,
        ),
    )


@MODELS.register("refinenet")
def refinenet(cfg) -> nn.Module:
    """CEN segmentation on ``model.backbone`` with ``model.decoder``.

    ``model.backbone``: ``resnet18`` ... ``resnet152`` (torchvision), ``mit_b0`` ... ``mit_b5``
    (SegFormer's MiT), a timm model name (``convnext_tiny``, ...) or ``timm:NAME``.
    ``model.decoder``: ``refinenet`` (:class:`cen.models.RefineNetCEN`, the paper's; widths
    ``model.decoder_widths``) or ``mlp`` (:class:`cen.models.SegmentationCEN` with SegFormer's
    all-MLP decoder of width ``model.decoder_dim``). The fusion settings are the config's
    ``fusion`` group (:class:`cen.FusionSpec`).
    """
    from cen.models import RefineNetCEN, SegmentationCEN

    m = cfg.model
    decoder = str(m.decoder)
    kwargs = dict(
        backbone=str(m.backbone),
        num_classes=int(cfg.data.num_classes),
        modalities=list(cfg.modalities),
        pretrained=m.pretrained,
        spec=fusion_spec(cfg, THRESHOLD),
        ensemble=m.ensemble,
        head=str(m.head),
        **({"decoder_widths": list(m.decoder_widths)} if m.decoder_widths else {}),
    )
    if decoder == "refinenet" and m.decoder_dim is None:
        return build_checked(cfg, lambda: RefineNetCEN(**kwargs))
    dim = None if m.decoder_dim is None else int(m.decoder_dim)
    return build_checked(cfg, lambda: SegmentationCEN(decoder=decoder, decoder_dim=dim, **kwargs))
