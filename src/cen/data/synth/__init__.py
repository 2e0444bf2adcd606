"""Procedural indoor scenes written in the NYUDv2 and Taskonomy layouts.

``generate(out_dir, num, ...)`` renders a data set; ``ensure_generated(...)`` does so
only when a completed one with the same settings is not already there. The classes
(:data:`CLASS_NAMES`, :data:`NUM_CLASSES`) are designed so that RGB and depth are each
needed for some of them: see :mod:`cen.data.synth.classes`.
"""

from cen.data.synth.build import DEFAULT_SPLITS, ensure_generated, generate, read_marker
from cen.data.synth.classes import (
    CLASS_NAMES,
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    SynthClass,
)
from cen.data.synth.layouts import GENERATED_DOMAINS, render_sample

__all__ = [
    "CLASSES",
    "CLASS_NAMES",
    "DEFAULT_SPLITS",
    "GENERATED_DOMAINS",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "SynthClass",
    "ensure_generated",
    "generate",
    "read_marker",
    "render_sample",
]
