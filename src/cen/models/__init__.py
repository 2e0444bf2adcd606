"""Models built on the core: CEN segmentation on any backbone (ResNet, MiT, timm) with a RefineNet or MLP
decoder, the CEN pix2pix U-Net and PatchGAN for image translation, reference checkpoint conversion."""

from cen.models.backbones import (
    BACKBONES,
    ENCODERS,
    ResNetEncoder,
    TimmEncoder,
    backbone_names,
    build_encoder,
    build_resnet_encoder,
    register_backbone,
)
from cen.models.mit import MixTransformer
from cen.models.mlp_decoder import MLPDecoder
from cen.models.patchgan import PatchDiscriminator
from cen.models.refinenet import RefineNetDecoder
from cen.models.segmentation import RefineNetCEN, SegmentationCEN, count_parameters
from cen.models.unet import UNetCEN, UNetGenerator

__all__ = [
    "BACKBONES",
    "ENCODERS",
    "MLPDecoder",
    "MixTransformer",
    "PatchDiscriminator",
    "RefineNetCEN",
    "RefineNetDecoder",
    "ResNetEncoder",
    "SegmentationCEN",
    "TimmEncoder",
    "UNetCEN",
    "UNetGenerator",
    "backbone_names",
    "build_encoder",
    "build_resnet_encoder",
    "count_parameters",
    "register_backbone",
]
