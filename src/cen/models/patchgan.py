"""The PatchGAN discriminator of the reference translation code (pix2pix's 70x70 PatchGAN).

Five 4x4 convolutions (padding 1) with strides 2, 2, 2, 1, 1 and widths ``ndf``,
``2 ndf``, ``4 ndf``, ``8 ndf``, 1; each but the first pre-activated by a
LeakyReLU 0.2; an affine InstanceNorm (tracking running statistics) after
convolutions 2, 3 and 4 only (the reference also builds norms for convolutions
1 and 5 but never applies them; they are not built here). Every output pixel
sees a 70x70 patch of the input.

In CEN the discriminator is *shared*: one set of weights and norms judges every
input branch. The caller conditions it on the input, as pix2pix: for input
``x_m`` and the real or generated target ``y``, ``D(cat([x_m, y], dim=1))``.
Nothing here mixes samples (instance norms), so the pairs of all branches may
be stacked into one batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cen.models.unet import LEAKY_SLOPE, instance_norm

#: Side of the square input patch each output pixel sees (strides 2, 2, 2, 1, 1 of 4x4 convolutions).
RECEPTIVE_FIELD = 70
#: Smallest image side with at least one output pixel.
MIN_SIZE = 24


class PatchDiscriminator(nn.Module):
    """``Tensor(N, in_channels, H, W)`` -> patch logits ``Tensor(N, 1, H//8 - 2, W//8 - 2)`` (30x30 at 256x256).

    Args:
        in_channels: channels of the conditioned input, i.e. of the input image
            plus the target image (6 for two RGB-like domains).
        ndf: width of the first convolution (64 in the reference).

    The output are **logits**: the reference applies a sigmoid and ``BCELoss``;
    use ``torch.nn.BCEWithLogitsLoss`` on these logits (the same loss, computed
    stably) or ``torch.sigmoid`` for the reference's probabilities. ``H`` and
    ``W`` must be at least 24.

    Modules: ``conv1`` .. ``conv5`` and ``norm2`` .. ``norm4`` (the reference's
    ``convN.conv.module`` and ``convN.insnorm.module``).
    """

    def __init__(self, in_channels: int = 6, ndf: int = 64) -> None:
        super().__init__()
        for value, name in ((in_channels, "in_channels"), (ndf, "ndf")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.ndf = ndf
        self.conv1 = nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, 2 * ndf, kernel_size=4, stride=2, padding=1)
        self.norm2 = instance_norm(2 * ndf)
        self.conv3 = nn.Conv2d(2 * ndf, 4 * ndf, kernel_size=4, stride=2, padding=1)
        self.norm3 = instance_norm(4 * ndf)
        self.conv4 = nn.Conv2d(4 * ndf, 8 * ndf, kernel_size=4, stride=1, padding=1)
        self.norm4 = instance_norm(8 * ndf)
        self.conv5 = nn.Conv2d(8 * ndf, 1, kernel_size=4, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator expects (N, {self.in_channels}, H, W): the input concatenated with the real or "
                f"generated image along channels; got shape {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(
                f"PatchDiscriminator needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape[-2]}x{x.shape[-1]}"
            )
        x = self.conv1(x)
        x = self.norm2(self.conv2(F.leaky_relu(x, LEAKY_SLOPE)))
        x = self.norm3(self.conv3(F.leaky_relu(x, LEAKY_SLOPE)))
        x = self.norm4(self.conv4(F.leaky_relu(x, LEAKY_SLOPE)))
        return self.conv5(F.leaky_relu(x, LEAKY_SLOPE))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, ndf={self.ndf}, receptive_field={RECEPTIVE_FIELD}"


__all__ = ["MIN_SIZE", "RECEPTIVE_FIELD", "PatchDiscriminator"]
