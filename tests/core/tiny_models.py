"""Tiny ConvNeXt-like and ViT-like networks (random weights) for the compile and export tests."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torchvision.models import convnext
from torchvision.models.vision_transformer import EncoderBlock


def tiny_convnext(classes: int = 4) -> nn.Module:
    """torchvision's ConvNeXt with two stages of one block (8 and 16 channels): LayerNorm2d and channels-last LNs."""
    stages = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)]
    return convnext.ConvNeXt(stages, num_classes=classes)


class TinyViT(nn.Module):
    """Patch embedding, torchvision ``EncoderBlock``s on ``(B, N, C)`` tokens, a final LayerNorm, mean-pooled head.

    No position embedding, so any image size that is a multiple of ``patch`` works (ONNX dynamic sizes).
    """

    def __init__(self, dim: int = 16, depth: int = 2, heads: int = 2, classes: int = 4, patch: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*(EncoderBlock(heads, dim, 2 * dim, 0.0, 0.0, norm) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))
