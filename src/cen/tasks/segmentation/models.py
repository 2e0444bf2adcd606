"""Segmentation models by name (``model.name``): ``refinenet`` (the paper's) and ``tiny`` (smoke tests)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock

from cen.core.convert import convert
from cen.core.defaults import THRESHOLD
from cen.core.multimodal import MultiModal
from cen.tasks.registry import MODELS


class TinySegNet(MultiModal):
    """A small CEN segmenter for smoke tests: stem, one exchanging BasicBlock, a 1x1 head, 1/4 resolution.

    Same interface as :class:`cen.models.RefineNetCEN` (``{name: Tensor(B, 3, H, W)}`` ->
    logits ``(B, K, H/4, W/4)`` by name, ``encoder_parameters`` / ``decoder_parameters``), no dropout.
    """

    def __init__(self, num_classes: int, modalities: Sequence[str], threshold: float = THRESHOLD, *,
                 exchange: bool = True, ensemble: bool = True, width: int = 8) -> None:
        encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            BasicBlock(width, width),
        )
        convert(encoder, len(modalities), threshold=threshold, exchange="auto" if exchange else False)
        head = nn.Conv2d(width, num_classes, 1)
        super().__init__(nn.Sequential(encoder, head), modalities, ensemble=ensemble and len(modalities) > 1)
        self.num_classes = num_classes

    def encoder_parameters(self):
        return self.model[0].parameters()

    def decoder_parameters(self):
        enc = {id(p) for p in self.model[0].parameters()}
        return (p for p in self.parameters() if id(p) not in enc)


def _threshold(cfg) -> float:
    return THRESHOLD if cfg.model.threshold is None else float(cfg.model.threshold)


@MODELS.register("tiny")
def tiny(cfg) -> nn.Module:
    m = cfg.model
    return TinySegNet(int(cfg.data.num_classes), list(cfg.modalities), _threshold(cfg), exchange=m.exchange,
                      ensemble=m.ensemble)


@MODELS.register("refinenet")
def refinenet(cfg) -> nn.Module:
    from cen.models import RefineNetCEN

    m = cfg.model
    return RefineNetCEN(
        backbone=m.backbone, num_classes=int(cfg.data.num_classes), modalities=list(cfg.modalities),
        threshold=_threshold(cfg), pretrained=m.pretrained, exchange=m.exchange, ensemble=m.ensemble,
        **({"decoder_widths": list(m.decoder_widths)} if m.decoder_widths else {}),
    )
