"""Presence models by name (``model.name``): ``hetero`` (CEN, late fusion, one modality) and ``hetero_concat``.

Both build one encoder per modality by its kind (:data:`cen.tasks.presence.data.MODALITIES`):
an :class:`~cen.models.hetero.ImageEncoder` for ``rgb``, a
:class:`~cen.models.hetero.PointNetEncoder` for ``points``, each projected to
``model.embed_dim``. ``hetero`` is :class:`~cen.models.hetero.HeteroCEN`: with
``fusion.points: auto`` the method, with ``false`` late fusion (private norms, no
exchange, the ensemble only), with one modality the plain network.
"""

from __future__ import annotations

from torch import nn

from cen.core.defaults import THRESHOLD
from cen.errors import ConfigError
from cen.models.hetero import ConcatFusion, HeteroCEN, ImageEncoder, PointNetEncoder
from cen.tasks.fusion_models import build_checked, fusion_spec
from cen.tasks.presence.data import MODALITIES, PRESENCE_CLASSES
from cen.tasks.registry import MODELS

#: Shared MLP blocks after the projection (each block's norm is a fusion point).
MLP_LAYERS = 2


def build_encoders(modalities, width: int) -> dict[str, nn.Module]:
    """One encoder per modality, chosen by the modality's kind, each ending at ``width`` features."""
    out: dict[str, nn.Module] = {}
    for name in modalities:
        kind = MODALITIES.get(name)
        if kind == "image":
            out[name] = ImageEncoder(width)
        elif kind == "points":
            out[name] = PointNetEncoder(width, name=name)
        else:
            raise ConfigError(f"modality {name!r} has no encoder; the presence models know {list(MODALITIES)}")
    return out


def _width(cfg) -> int:
    width = int(cfg.model.embed_dim)
    if width < 2:
        raise ConfigError(f"model.embed_dim must be >= 2 (the exchange splits it between modalities), got {width}")
    return width


@MODELS.register("hetero")
def hetero(cfg) -> nn.Module:
    m = cfg.model
    width = _width(cfg)
    head = m.head
    if head != "ensemble":
        raise ConfigError(
            f"model.head={head!r}: the hetero model fuses its outputs by the ensemble; for one prediction "
            "from the concatenated embeddings use model.name=hetero_concat"
        )
    return build_checked(
        cfg,
        lambda: HeteroCEN(
            build_encoders(cfg.modalities, width),
            width,
            len(PRESENCE_CLASSES),
            fusion_spec(cfg, THRESHOLD),
            layers=MLP_LAYERS,
            ensemble=bool(m.ensemble),
        ),
    )


@MODELS.register("hetero_concat")
def hetero_concat(cfg) -> nn.Module:
    if len(cfg.modalities) < 2:
        raise ConfigError(
            f"model.name=hetero_concat concatenates two or more modalities, got {list(cfg.modalities)};"
            " use model.name=hetero for one"
        )
    width = _width(cfg)
    return ConcatFusion(build_encoders(cfg.modalities, width), width, len(PRESENCE_CLASSES), layers=MLP_LAYERS)
