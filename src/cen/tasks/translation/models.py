"""Translation models by name (``model.name``): ``unet``, the CEN pix2pix U-Net generator.

The discriminator (:class:`cen.models.PatchDiscriminator`) is the task's second network,
built by :class:`~cen.tasks.translation.task.TranslationTask`.
"""

from __future__ import annotations

from torch import nn

from cen.core.defaults import TRANSLATION_THRESHOLD
from cen.tasks.fusion_models import build_checked, fusion_spec
from cen.tasks.registry import MODELS

#: Channels of every domain as the loaders give them (grey domains are replicated to 3).
CHANNELS = 3


@MODELS.register("unet")
def unet(cfg) -> nn.Module:
    from cen.models import UNetCEN

    m = cfg.model
    return build_checked(
        cfg,
        lambda: UNetCEN(
            list(cfg.modalities),
            fusion_spec(cfg, TRANSLATION_THRESHOLD),
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            ngf=int(m.ngf),
            num_downs=int(m.num_downs),
            ensemble=bool(m.ensemble),
            head=str(m.head),
        ),
    )


def discriminator(cfg) -> nn.Module:
    """The shared PatchGAN judging ``cat([input, real or generated target])`` (6 channels)."""
    from cen.models import PatchDiscriminator

    return PatchDiscriminator(in_channels=2 * CHANNELS, ndf=int(cfg.model.ndf))
