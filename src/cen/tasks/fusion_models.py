"""What every task that builds a fusion model shares: the model settings of a config and the model's outputs."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import OmegaConf
from torch import nn

from cen.core.defaults import ENSEMBLE_KEY
from cen.tasks.errors import ConfigError


def fusion_kwargs(cfg) -> dict:
    """``fusion``, ``fusion_options`` (a plain dict) and ``shared_convs`` of ``cfg.model``, as the models take them."""
    m = cfg.model
    return {
        "fusion": str(m.fusion),
        "fusion_options": dict(OmegaConf.to_container(m.fusion_options)),
        "shared_convs": bool(m.shared_convs),
    }


def build_checked(cfg, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()``, with a ``ValueError`` of the model's constructor (a setting that does not fit the network,
    e.g. a ``fraction`` too large for a layer's channels) turned into a one-line :class:`ConfigError` naming the keys.
    """
    try:
        return make()
    except ValueError as err:
        m = cfg.model
        raise ConfigError(
            f"cannot build model.name={m.name!r} (model.fusion={m.fusion!r}, model.fusion_options="
            f"{fusion_kwargs(cfg)['fusion_options']}, model.shared_convs={m.shared_convs}, model.head={m.head!r}, "
            f"modalities={list(cfg.modalities)}): {err}"
        ) from None


def output_names(model: nn.Module, modalities) -> list[str]:
    """The model's output keys: its ``output_names`` (the fused key included, whatever ``model.head`` makes it),
    else the modalities plus ``"ensemble"`` when it has an alpha-ensemble."""
    names = getattr(model, "output_names", None)
    if names is not None:
        return list(names)
    return list(modalities) + ([ENSEMBLE_KEY] if getattr(model, "ensemble", None) is not None else [])
