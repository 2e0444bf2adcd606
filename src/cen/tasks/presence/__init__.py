"""Scene-level presence (which object classes a scene shows) from an image and a point cloud: heterogeneous fusion."""

from cen.tasks.presence.data import (
    PRESENCE_NAMES,
    ScenePresence,
    collate,
    depth_to_points,
    presence_labels,
    sample_points,
)
from cen.tasks.presence.metrics import PresenceMetrics
from cen.tasks.presence.task import PresenceTask

__all__ = [
    "PRESENCE_NAMES",
    "PresenceMetrics",
    "PresenceTask",
    "ScenePresence",
    "collate",
    "depth_to_points",
    "presence_labels",
    "sample_points",
]
