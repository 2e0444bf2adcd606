"""``FusionSpec``: the fusion settings of a model, as one value.

Where modalities meet and what happens there is five choices that every model and
:func:`cen.convert` take together:

========== =========================================================================
strategy   a name of :func:`cen.fusion_names` (``"exchange"``: paper Eq. 6)
options    that strategy's keyword options (e.g. ``{"fraction": 0.3}`` for ``fixed``)
threshold  ``theta``: a strategy that reads ``gamma`` compares ``|gamma|`` with it
points     where the fusion points are: ``"auto"`` (the registered blocks, see
           :func:`cen.register_exchange_point`), ``True`` (every converted norm),
           ``False`` (none: private norms only), a collection of qualified norm
           names, or a predicate ``(name, norm) -> bool``
shared     whether convolutions are shared by the modalities (False: one private
           copy per modality, one grouped convolution, :mod:`cen.core.unshared`)
========== =========================================================================

A spec is frozen and checked when made (an unknown strategy or option, a negative
threshold: ``ValueError``). :meth:`FusionSpec.to_dict` / :meth:`FusionSpec.from_dict`
round-trip it through checkpoints and configs (a predicate or name collection is
recorded as ``"custom"``, which cannot be rebuilt from the dict alone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from cen.core.defaults import THRESHOLD
from cen.core.fusions import Fusion, check_fusion_options

#: Where fusion points go (see the module docstring).
Points = str | bool | None | Collection[str] | Callable[[str, nn.Module], bool]


@dataclasses.dataclass(frozen=True)
class FusionSpec:
    """The fusion settings of a model (see the module docstring).

    Attributes:
        strategy: the strategy at every fusion point.
        options: its keyword options (stored read-only).
        threshold: ``theta`` (>= 0).
        points: where the fusion points are.
        shared_convs: share the convolutions across modalities.
    """

    strategy: str = "exchange"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    threshold: float = THRESHOLD
    points: Points = "auto"
    shared_convs: bool = True

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", {})
        if not isinstance(self.options, Mapping):
            raise TypeError(
                f"FusionSpec.options must be a mapping of option names to values, got {type(self.options).__name__}"
            )
        check_fusion_options(self.strategy, self.options)  # unknown strategy or option: ValueError
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise ValueError(f"threshold must be >= 0 (theta, compared with |gamma|), got {threshold!r}")
        if not isinstance(self.shared_convs, bool):
            raise TypeError(f"shared_convs must be a bool, got {self.shared_convs!r}")
        if isinstance(self.points, str) and self.points != "auto":
            raise ValueError(
                f"exchange={self.points!r} (FusionSpec.points) is not understood; expected 'auto', True, False, "
                "a collection of qualified norm names, or a predicate(name, module)"
            )
        object.__setattr__(self, "threshold", float(threshold))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    # -- what the strategy is -----------------------------------------------------
    @property
    def strategy_class(self) -> type[Fusion]:
        """The registered :class:`~cen.core.fusions.Fusion` subclass of :attr:`strategy`."""
        return check_fusion_options(self.strategy, None)

    @property
    def has_points(self) -> bool:
        """Whether the spec asks for any fusion point (``points`` not False/None)."""
        return not (self.points is None or self.points is False)

    def replace(self, **changes) -> FusionSpec:
        """A copy with ``changes`` (e.g. ``spec.replace(points=False)``)."""
        return dataclasses.replace(self, **changes)

    # -- round trip ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain values for a config or checkpoint (``points`` that are names or a predicate become ``"custom"``)."""
        points = self.points if isinstance(self.points, (bool, str)) or self.points is None else "custom"
        return {
            "strategy": self.strategy,
            "options": dict(self.options),
            "threshold": self.threshold,
            "points": points,
            "shared_convs": self.shared_convs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionSpec:
        """The inverse of :meth:`to_dict` (``"custom"`` points cannot be rebuilt: ``ValueError``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"FusionSpec has no field {', '.join(map(repr, unknown))}; fields: {sorted(known)}")
        if data.get("points") == "custom":
            raise ValueError("a FusionSpec with custom points (names or a predicate) cannot be rebuilt from a dict")
        return cls(**dict(data))

    def __repr__(self) -> str:
        return (
            f"FusionSpec(strategy={self.strategy!r}, options={dict(self.options)}, threshold={self.threshold}, "
            f"points={self.points!r}, shared_convs={self.shared_convs})"
        )


def as_spec(
    spec: FusionSpec | None = None,
    *,
    fusion: str | None = None,
    fusion_options: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    exchange: Points | None = None,
    shared_convs: bool | None = None,
) -> FusionSpec:
    """A :class:`FusionSpec` from ``spec`` or from the loose keywords older code passes (not both).

    The keywords are the names :func:`cen.convert` has always taken (``fusion``,
    ``fusion_options``, ``threshold``, ``exchange``, ``shared_convs``); unset ones keep
    the spec's defaults.
    """
    loose = {
        "strategy": fusion,
        "options": fusion_options,
        "threshold": threshold,
        "points": exchange,
        "shared_convs": shared_convs,
    }
    given = {k: v for k, v in loose.items() if v is not None}
    if spec is not None:
        if not isinstance(spec, FusionSpec):
            raise TypeError(f"spec must be a cen.FusionSpec, got {type(spec).__name__}")
        if given:
            names = {"strategy": "fusion", "options": "fusion_options", "points": "exchange"}
            raise TypeError(
                f"pass either spec= or the keywords {sorted(names.get(k, k) for k in given)}, not both "
                "(use spec.replace(...) to change a spec)"
            )
        return spec
    if fusion_options is not None and not isinstance(fusion_options, Mapping):
        raise TypeError(
            f"fusion_options must be a mapping of option names to values, got {type(fusion_options).__name__}"
        )
    return FusionSpec(**given)
