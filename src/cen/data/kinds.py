"""Modality kinds: how a modality is decoded, transformed, normalised and shown.

Every input modality has a *kind*, which the loaders, transforms, ``cen data check``,
``cen predict`` and the prediction images act on, never its name:

========== ============================================ ======================================
kind       file                                         treated as
========== ============================================ ======================================
image      8-bit RGB / grey (or 16-bit grey) PNG        [0, 1]; bilinear resize; ImageNet
                                                        mean/std by default; shown as a picture
depth      16-bit grey PNG, 0 = hole                    raw x depth scale; nearest resize;
                                                        left as loaded; shown through a colour map
normal     8-bit RGB PNG, ``(n + 1) / 2 * 255``         unit normals in [-1, 1]; a horizontal
                                                        flip negates x; shown as ``(n + 1) / 2``
hha        8-bit RGB PNG (``cen data hha``)             an image (each channel a geometric
                                                        quantity scaled to 0-255; mirror-invariant)
========== ============================================ ======================================

A modality's kind comes from its name (:func:`infer_kind`) unless given explicitly.
"""

from __future__ import annotations

KINDS: tuple[str, ...] = ("image", "depth", "normal", "hha")
#: Bit depth a file of each kind must have (``cen data check``); None: 8 or 16.
KIND_BITS: dict[str, int | None] = {"image": None, "depth": 16, "normal": 8, "hha": 8}


def infer_kind(modality: str) -> str:
    """Kind of a modality from its (folder) name: ``depth*`` -> depth, ``normal*`` -> normal,
    ``hha*`` -> hha, anything else (``rgb``, ``shading``, ``texture``, ...) -> image."""
    name = modality.lower()
    for prefix in ("depth", "normal", "hha"):
        if name.startswith(prefix):
            return prefix
    return "image"


def check_kind(kind: str, modality: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else a ValueError naming the modality."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} of modality {modality!r} unknown; expected one of {KINDS}")
    return kind
