"""SegFormer's light all-MLP decoder, for encoders of any depth (transformer encoders above all).

From the paper (Xie et al., 2021, Sec. 3.2), for encoder features ``F_1 .. F_n``
(shallowest first, ``F_1`` at 1/4 of the input for MiT):

1. every stage goes through a linear layer to a common width ``E``
   (``embed_dim``): ``F_i' = Linear(C_i, E)(F_i)``, a 1x1 convolution with bias;
2. is upsampled (bilinear) to the size of ``F_1``;
3. the ``n`` maps are concatenated (shallowest first) and fused:
   ``F = Linear(n E, E)(concat)``, here a 1x1 convolution without bias followed by a
   BatchNorm and ReLU;
4. dropout, then ``Linear(E, K)`` (1x1 convolution with bias) gives the logits at
   the resolution of ``F_1``.

In a CEN model the decoder runs once on the modality-stacked batch; its one norm
(``fuse.norm``) is made private to the modalities by :func:`cen.convert` (without
fusion points), like the encoder's norms, so no batch statistics mix modalities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: SegFormer's decoder width for MiT-B0/B1 (B2-B5 use 768).
DEFAULT_EMBED_DIM = 256


class FuseBlock(nn.Module):
    """1x1 convolution ``in_channels -> channels`` without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class MLPDecoder(nn.Module):
    """SegFormer's all-MLP decoder (module docstring): ``(f_1, ..., f_n)`` -> logits at the resolution of ``f_1``.

    Args:
        in_channels: channels of the encoder stages, shallowest first.
        num_classes: output channels of the classifier.
        embed_dim: the common width ``E`` (256, as SegFormer's B0/B1 decoder; 768 for B2-B5).
        dropout: probability of the dropout before the classifier (0.1 as SegFormer).

    Submodules (state dict names): ``embed.{i}`` (per-stage 1x1 convolutions),
    ``fuse.conv``, ``fuse.norm``, ``classifier``. Attributes: ``out_channels`` (``E``,
    the classifier's input), ``num_stages``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = DEFAULT_EMBED_DIM,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if not in_channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in in_channels):
            raise ValueError(
                f"in_channels must give the channels of >= 1 encoder stages (positive ints), got {in_channels!r}"
            )
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be an int >= 1, got {embed_dim!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_stages = len(in_channels)
        self.out_channels = embed_dim
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in in_channels)
        self.fuse = FuseBlock(self.num_stages * embed_dim, embed_dim)
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def features(self, features: Sequence[Tensor]) -> Tensor:
        """``(f_1, ..., f_n)`` -> the fused map ``(N, E, h1, w1)`` (the classifier's input, before its dropout)."""
        if len(features) != self.num_stages:
            raise ValueError(f"MLPDecoder expects {self.num_stages} encoder features, got {len(features)}")
        size = features[0].shape[-2:]
        maps = []
        for embed, f in zip(self.embed, features):
            x = embed(f)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(x)
        return self.fuse(torch.cat(maps, dim=1))

    def classify(self, features: Tensor) -> Tensor:
        """Dropout and the 1x1 classifier: ``(N, E, h, w)`` -> logits ``(N, num_classes, h, w)``."""
        return self.classifier(self.dropout(features))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``(f_1, ..., f_n)`` -> logits ``(N, num_classes, h1, w1)``."""
        return self.classify(self.features(features))


__all__ = ["DEFAULT_EMBED_DIM", "FuseBlock", "MLPDecoder"]
