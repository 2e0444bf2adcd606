"""Models built on the core: CEN RefineNet for RGB-D segmentation, the CEN pix2pix U-Net and PatchGAN for
image translation, reference checkpoint conversion."""

from cen.models.backbones import BACKBONES, ResNetEncoder, build_resnet_encoder
from cen.models.patchgan import PatchDiscriminator
from cen.models.refinenet import RefineNetCEN, RefineNetDecoder, count_parameters
from cen.models.unet import UNetCEN, UNetGenerator

__all__ = [
    "BACKBONES",
    "PatchDiscriminator",
    "RefineNetCEN",
    "RefineNetDecoder",
    "ResNetEncoder",
    "UNetCEN",
    "UNetGenerator",
    "build_resnet_encoder",
    "count_parameters",
]
