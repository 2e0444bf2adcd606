"""What every task that builds a fusion model shares: the :class:`cen.FusionSpec` of a config, and model errors."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import OmegaConf
from torch import nn

from cen.core.spec import FusionSpec
from cen.errors import ConfigError


def fusion_spec(cfg, default_threshold: float | None = None) -> FusionSpec:
    """The config's ``fusion`` group as a :class:`cen.FusionSpec` (``threshold: null``: ``default_threshold``,
    else the spec's default)."""
    f = cfg.fusion
    points = f.points
    points = list(points) if OmegaConf.is_list(points) else points
    threshold = f.threshold if f.threshold is not None else default_threshold
    extra = {} if threshold is None else {"threshold": float(threshold)}
    try:
        return FusionSpec(
            strategy=str(f.strategy),
            options=dict(OmegaConf.to_container(f.options)),
            points=points,
            shared_convs=bool(f.shared_convs),
            **extra,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"fusion: {err}") from None


def fusion_meta(cfg, default_threshold: float | None = None) -> dict:
    """The fusion settings a checkpoint must agree on with a config, one ``fusion.<field>`` entry each
    (what :meth:`cen.tasks.base.Task.meta` records and resume / ``cen eval`` compare)."""
    return {f"fusion.{k}": v for k, v in fusion_spec(cfg, default_threshold).to_dict().items()}


def build_checked(cfg, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()``, with a ``ValueError`` of the model's constructor (a setting that does not fit the network,
    e.g. a ``fraction`` too large for a layer's channels) turned into a one-line :class:`ConfigError` naming the keys.
    """
    try:
        return make()
    except ValueError as err:
        f = cfg.fusion
        raise ConfigError(
            f"cannot build model.name={cfg.model.name!r} (fusion.strategy={f.strategy!r}, fusion.options="
            f"{dict(OmegaConf.to_container(f.options))}, fusion.shared_convs={f.shared_convs}, "
            f"model.head={cfg.model.head!r}, modalities={list(cfg.modalities)}): {err}"
        ) from None
