"""What each RGB-X layout is: its classes, palette, ignore index, modalities and units.

:data:`LAYOUT_INFO` maps a layout name (``data.dataset``) to a :class:`LayoutInfo`. The
readers are :class:`cen.data.rgbx.RGBXPack`, :class:`cen.data.mfnet.MFNet` and
:class:`cen.data.deliver.DELIVER`; docs/data.md shows each layout as a tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from cen.data.constants import IGNORE_INDEX


def voc_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaved colours, class ``c`` getting colour ``c + 1`` (colour 0 is
    black, kept for the ignore index): what :func:`cen.tasks.segmentation.visualize.palette` draws."""

    def colour(index: int) -> tuple[int, int, int]:
        rgb = [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((index >> channel) & 1) << bit
            index >>= 3
        return rgb[0], rgb[1], rgb[2]

    return tuple(colour(c + 1) for c in range(num_classes))


@dataclass(frozen=True)
class LayoutInfo:
    """One layout: ``classes`` (names in class-id order), ``palette`` (RGB per class),
    ``ignore_index`` (label value the loss and metrics skip), ``modalities`` (names it can read),
    ``depth`` (the unit of its depth, in words) and ``labels`` (how its label files store classes)."""

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    modalities: tuple[str, ...]
    depth: str
    labels: str
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# The NYUDv2 40-class and SUN RGB-D 37-class names, in the order of the RGB-X packs' label ids.
NYUDV2_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "other structure",
    "other furniture", "other prop",
)  # fmt: skip
SUNRGBD_CLASSES: tuple[str, ...] = NYUDV2_CLASSES[:37]  # the first 37 of the 40 (SUN RGB-D's 37 classes)

MFNET_CLASSES: tuple[str, ...] = (
    "unlabelled", "car", "person", "bike", "curve", "car stop", "guardrail", "colour cone", "bump",
)  # fmt: skip
#: MFNet's colours as the RGB-T methods draw them (unlabelled black).
MFNET_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192),
    (128, 128, 0), (64, 64, 128), (192, 128, 128), (192, 64, 0),
)  # fmt: skip

DELIVER_CLASSES: tuple[str, ...] = (
    "building", "fence", "other", "pedestrian", "pole", "road line", "road", "sidewalk", "vegetation",
    "cars", "wall", "traffic sign", "sky", "ground", "bridge", "rail track", "ground rail", "traffic light",
    "static", "dynamic", "water", "terrain", "two-wheeler", "bus", "truck",
)  # fmt: skip
#: DELIVER's colours (CARLA's semantic colours), as CMNeXt draws them.
DELIVER_PALETTE: tuple[tuple[int, int, int], ...] = (
    (70, 70, 70), (100, 40, 40), (55, 90, 80), (220, 20, 60), (153, 153, 153), (157, 234, 50),
    (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156), (220, 220, 0),
    (70, 130, 180), (81, 0, 81), (150, 100, 100), (230, 150, 140), (180, 165, 180), (250, 170, 30),
    (110, 190, 160), (170, 120, 50), (45, 60, 150), (145, 170, 100), (0, 0, 230), (0, 60, 100),
    (0, 0, 70),
)  # fmt: skip

_PACK_DEPTH = "8-bit: x / 255, a relative depth in [0, 1]; 16-bit: raw x data.depth_scale (default 1/1000: mm -> m)"
_PACK_LABELS = "stored 1..C, 0 = unlabelled -> class ids 0..C-1, unlabelled = 255"

LAYOUT_INFO: dict[str, LayoutInfo] = {
    "rgbx_nyudv2": LayoutInfo(NYUDV2_CLASSES, voc_palette(40), ("rgb", "depth", "hha"), _PACK_DEPTH, _PACK_LABELS),
    "rgbx_sunrgbd": LayoutInfo(SUNRGBD_CLASSES, voc_palette(37), ("rgb", "depth", "hha"), _PACK_DEPTH, _PACK_LABELS),
    "mfnet": LayoutInfo(
        MFNET_CLASSES,
        MFNET_PALETTE,
        ("rgb", "thermal"),
        "no depth (thermal: 8-bit / 255 in [0, 1])",
        "stored 0..8 (0 = unlabelled, scored as a class) as they are; 255 = ignore",
    ),
    "deliver": LayoutInfo(
        DELIVER_CLASSES,
        DELIVER_PALETTE,
        ("rgb", "depth", "hha", "event", "lidar"),
        _PACK_DEPTH,
        "stored 1..25 (first channel), 0 and 255 = unlabelled -> class ids 0..24, unlabelled = 255",
    ),
}
