"""Modality kinds: how a modality is decoded, transformed, normalised and shown.

Every input modality has a *kind*, which the loaders, transforms, corruptions
(:mod:`cen.data.corruptions`), ``cen data check``, ``cen predict`` and the prediction images act
on, never its name:

========== ============================================ ======================================
kind       file                                         treated as
========== ============================================ ======================================
image      8-bit RGB / grey (or 16-bit grey) PNG/JPEG   [0, 1]; bilinear resize; ImageNet
                                                        mean/std by default; shown as a picture;
                                                        the only kind that colour jitter and the
                                                        RGB corruptions touch
depth      16-bit grey PNG, 0 = hole (RGB-X packs:      raw x depth scale (8-bit: x / 255);
           8-bit too)                                   nearest resize; left as loaded; shown
                                                        through a colour map
normal     8-bit RGB PNG, ``(n + 1) / 2 * 255``         unit normals in [-1, 1]; a horizontal
                                                        flip negates x; shown as ``(n + 1) / 2``
hha        8-bit RGB PNG/JPEG (``cen data hha``)        an image (each channel a geometric
                                                        quantity scaled to 0-255; mirror-invariant)
thermal    8- or 16-bit grey (MFNet: the 4th channel    [0, 1] (x / 255 or x / 65535); bilinear
           of the RGB-T PNG)                            resize; left as loaded; shown as grey
event      8-bit grey or RGB event frame (DELIVER)      [0, 1]; nearest resize (sparse: no
                                                        blending of events into empty pixels);
                                                        left as loaded; shown as a picture
lidar      8- or 16-bit grey or RGB projection of the   [0, 1]; nearest resize (0 = no return);
           LiDAR points (DELIVER), 0 = no return        left as loaded; shown through a colour map
========== ============================================ ======================================

Non-RGB kinds are left as loaded by default, as CMNeXt feeds its depth, event and LiDAR inputs
(x / 255, no mean/std). Every modality reaches the model as a 3-channel float tensor (CEN's
convolutions are shared across modalities): single-channel files are replicated.

A modality's kind comes from its name (:func:`infer_kind`) unless given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindSpec:
    """How the pipeline treats one kind.

    ``bits``: bit depth a file must have (``cen data check``), None for 8 or 16.
    ``resize``: ``"bilinear"`` or ``"nearest"`` (sparse or invalid-coded values must not blend).
    ``photometric``: colour jitter and the RGB corruptions (brightness, blur, noise) apply.
    ``panel``: how a prediction image draws it: ``"picture"`` (un-normalised with the ImageNet
    statistics), ``"unit"`` (values in [0, 1] as grey or colour), ``"range"`` (a colour map over the
    valid range, 0 black) or ``"normal"``.
    """

    bits: int | None
    resize: str
    photometric: bool
    panel: str


SPECS: dict[str, KindSpec] = {
    "image": KindSpec(None, "bilinear", True, "picture"),
    "depth": KindSpec(16, "nearest", False, "range"),
    "normal": KindSpec(8, "bilinear", False, "normal"),
    "hha": KindSpec(8, "bilinear", False, "picture"),
    "thermal": KindSpec(None, "bilinear", False, "unit"),
    "event": KindSpec(8, "nearest", False, "unit"),
    "lidar": KindSpec(None, "nearest", False, "range"),
}
KINDS: tuple[str, ...] = tuple(SPECS)
#: Bit depth a file of each kind must have (``cen data check``); None: 8 or 16.
KIND_BITS: dict[str, int | None] = {k: s.bits for k, s in SPECS.items()}
#: Kinds resized with nearest neighbours (the mask too); every other kind bilinearly.
NEAREST_KINDS: frozenset[str] = frozenset(k for k, s in SPECS.items() if s.resize == "nearest")
#: Kinds that colour jitter and the RGB corruptions may change.
PHOTOMETRIC_KINDS: frozenset[str] = frozenset(k for k, s in SPECS.items() if s.photometric)

_PREFIXES = ("depth", "normal", "hha", "thermal", "event", "lidar")


def infer_kind(modality: str) -> str:
    """Kind of a modality from its (folder) name: ``depth*`` -> depth, ``normal*`` -> normal,
    ``hha*`` -> hha, ``thermal*`` -> thermal, ``event*`` -> event, ``lidar*`` -> lidar, anything
    else (``rgb``, ``shading``, ``texture``, ...) -> image."""
    name = modality.lower()
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return prefix
    return "image"


def check_kind(kind: str, modality: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else a ValueError naming the modality."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} of modality {modality!r} unknown; expected one of {KINDS}")
    return kind


def panel_of(kind: str) -> str:
    """How a prediction image draws a modality of ``kind`` (:attr:`KindSpec.panel`)."""
    try:
        return SPECS[kind].panel
    except KeyError:
        raise ValueError(f"unknown modality kind {kind!r}; expected one of {KINDS}") from None
