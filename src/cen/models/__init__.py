"""Models built on the core: CEN RefineNet for RGB-D segmentation, reference checkpoint conversion."""

from cen.models.backbones import BACKBONES, ResNetEncoder, build_resnet_encoder
from cen.models.refinenet import RefineNetCEN, RefineNetDecoder, count_parameters

__all__ = ["BACKBONES", "RefineNetCEN", "RefineNetDecoder", "ResNetEncoder", "build_resnet_encoder", "count_parameters"]
