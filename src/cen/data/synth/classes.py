"""Semantic classes of the generated scenes and which modality separates each.

The class set is designed so that *fusion matters*:

* ``box``, ``cylinder`` and ``sphere`` differ **only in geometry**: every object takes
  its albedo from the same distribution as the walls and floor of its scene (one
  per-scene base colour, a small per-surface jitter, the same solid texture), and
  shading is dominated by ambient light. RGB shows them as faint shading variations;
  depth shows their shape plainly.
* ``poster`` and ``rug`` differ **only in appearance**: a poster lies flat on a wall and
  a rug flat on the floor, so their depth is the wall's or the floor's depth (within
  sensor noise). Only RGB shows them.
* ``wall`` and ``floor`` are separated by both modalities.
"""

from __future__ import annotations

from dataclasses import dataclass

from cen.data.constants import IGNORE_INDEX


@dataclass(frozen=True)
class SynthClass:
    """One semantic class: id (the 8-bit label value), name and what separates it."""

    id: int
    name: str
    separated_by: str
    description: str


CLASSES: tuple[SynthClass, ...] = (
    SynthClass(0, "wall", "rgb+depth", "the four walls and the ceiling (plain scene material)"),
    SynthClass(1, "floor", "rgb+depth", "the floor (plain scene material)"),
    SynthClass(2, "rug", "rgb", "patterned rectangle lying flat on the floor: floor geometry, own appearance"),
    SynthClass(3, "poster", "rgb", "patterned rectangle lying flat on a wall: wall geometry, own appearance"),
    SynthClass(4, "box", "depth", "yawed cuboid on the floor, plain scene material"),
    SynthClass(5, "cylinder", "depth", "upright cylinder on the floor, plain scene material"),
    SynthClass(6, "sphere", "depth", "sphere resting on the floor, plain scene material"),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NUM_CLASSES: int = len(CLASSES)

WALL, FLOOR, RUG, POSTER, BOX, CYLINDER, SPHERE = range(NUM_CLASSES)

__all__ = [
    "BOX",
    "CLASSES",
    "CLASS_NAMES",
    "CYLINDER",
    "FLOOR",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "POSTER",
    "RUG",
    "SPHERE",
    "WALL",
    "SynthClass",
]
