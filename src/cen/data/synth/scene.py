"""Random scene description: room, camera, light, materials, objects, posters, rugs.

World frame: x to the right, y up, z forward (into the room), metres. The room is
the axis-aligned box ``[x0, x1] x [0, height] x [z0, z1]``; the floor is ``y = 0``.
Sampling only draws numbers; :mod:`cen.data.synth.render` turns them into images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cen.data.synth.classes import BOX, CYLINDER, SPHERE


@dataclass
class Camera:
    """Pinhole camera: ``position`` (3,) m; ``rotation`` (3, 3) camera-to-world
    (columns: camera x right, y up, z forward); focal length in pixels."""

    position: np.ndarray
    rotation: np.ndarray
    focal: float
    height: int
    width: int

    def ray_directions(self) -> np.ndarray:
        """World directions of the pixel rays, (H*W, 3), scaled so that the camera-z
        component is 1: the ray parameter ``t`` *is* the z-buffer depth in metres."""
        v, u = np.mgrid[0 : self.height, 0 : self.width]
        x = (u.ravel() + 0.5 - self.width / 2) / self.focal
        y = -(v.ravel() + 0.5 - self.height / 2) / self.focal
        d_cam = np.stack([x, y, np.ones_like(x)], axis=1)
        return d_cam @ self.rotation.T


@dataclass
class Pattern:
    """Two-colour pattern for posters and rugs, evaluated on surface coordinates (m)."""

    kind: str  # "stripes" | "checker" | "rings"
    colors: np.ndarray  # (2, 3) albedo in [0, 1]
    frequency: float  # cycles per metre
    angle: float  # radians


@dataclass
class Rect:
    """A patterned rectangle on a room surface (poster on a wall, rug on the floor).

    ``surface`` is the room-surface index (see :data:`cen.data.synth.render.SURFACES`),
    ``center`` is (u, v) in that surface's 2-D coordinates (m), ``half`` is (hu, hv)
    and ``angle`` its in-plane rotation (radians; 0 for posters)."""

    surface: int
    center: np.ndarray
    half: np.ndarray
    angle: float
    pattern: Pattern


@dataclass
class Solid:
    """An object standing on the floor.

    ``kind`` is the class id (box, cylinder or sphere); ``center`` is (x, z) on the
    floor; ``size`` is (half-width, height, half-depth) for a box, (radius, height, -)
    for a cylinder, (radius, -, -) for a sphere; ``yaw`` rotates a box about y."""

    kind: int
    center: np.ndarray
    size: np.ndarray
    yaw: float
    albedo: np.ndarray  # (3,)


@dataclass
class Scene:
    """Everything needed to render one view."""

    room: np.ndarray  # (x0, x1, height, z0, z1) in m
    camera: Camera
    light: np.ndarray  # (3,) unit vector towards the light
    ambient: float  # share of ambient light in [0, 1]
    exposure: float
    base_albedo: np.ndarray  # (3,) per-scene plain material colour
    surface_albedo: np.ndarray  # (6, 3) albedo of each room surface
    texture: np.ndarray  # (K, 5): direction (3), frequency (cycles/m), phase; solid texture
    texture_amplitude: float
    solids: list[Solid] = field(default_factory=list)
    posters: list[Rect] = field(default_factory=list)
    rugs: list[Rect] = field(default_factory=list)


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: pitch about camera x (negative looks down), then yaw about y."""
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    r_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return r_yaw @ r_pitch


def _plain_albedo(rng: np.random.Generator, base: np.ndarray, jitter: float) -> np.ndarray:
    """One surface of plain scene material: the base colour with a small jitter."""
    return np.clip(base * (1.0 + jitter * rng.standard_normal(3)), 0.02, 1.0)


def _random_color(rng: np.random.Generator, saturation: tuple[float, float]) -> np.ndarray:
    """A colour from hue/saturation/value, as RGB albedo in [0, 1], shape (3,)."""
    h = rng.uniform(0, 1)
    s = rng.uniform(*saturation)
    v = rng.uniform(0.35, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _pattern(rng: np.random.Generator) -> Pattern:
    c0 = _random_color(rng, (0.5, 1.0))
    c1 = _random_color(rng, (0.0, 1.0))
    while np.abs(c0 - c1).sum() < 0.6:  # keep the pattern visible
        c1 = _random_color(rng, (0.0, 1.0))
    return Pattern(
        kind=str(rng.choice(["stripes", "checker", "rings"])),
        colors=np.stack([c0, c1]),
        frequency=float(rng.uniform(1.5, 5.0)),
        angle=float(rng.uniform(0, np.pi)),
    )


def sample_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Draw one random scene for an image of ``height`` x ``width`` pixels."""
    from cen.data.synth.render import cast_room, floor_uv, wall_u_range, wall_uv

    room_w = rng.uniform(3.5, 6.0)
    x0 = -room_w / 2 + rng.uniform(-0.5, 0.5)
    room = np.array([x0, x0 + room_w, rng.uniform(2.4, 3.2), 0.0, rng.uniform(4.5, 8.0)])

    position = np.array([rng.uniform(x0 + 1.0, x0 + room_w - 1.0), rng.uniform(1.2, 1.7), 0.3])
    rotation = _rotation(yaw=rng.uniform(-0.35, 0.35), pitch=-rng.uniform(0.15, 0.45))
    camera = Camera(position, rotation, focal=0.9 * width * rng.uniform(0.95, 1.05), height=height, width=width)

    light = np.array([rng.uniform(-1, 1), rng.uniform(0.6, 1.5), rng.uniform(-1, 1)])
    light /= np.linalg.norm(light)

    base = _random_color(rng, (0.05, 0.45))
    surface_albedo = np.stack([_plain_albedo(rng, base, 0.04) for _ in range(6)])
    n_tex = 4
    dirs = rng.standard_normal((n_tex, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    texture = np.concatenate([dirs, rng.uniform(1.0, 8.0, (n_tex, 1)), rng.uniform(0, 2 * np.pi, (n_tex, 1))], axis=1)
    scene = Scene(
        room=room,
        camera=camera,
        light=light,
        ambient=float(rng.uniform(0.7, 0.85)),
        exposure=float(rng.uniform(0.9, 1.15)),
        base_albedo=base,
        surface_albedo=surface_albedo,
        texture=texture,
        texture_amplitude=float(rng.uniform(0.06, 0.14)),
    )

    def random_rays(n: int, v_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Rays through random image points (v as a fraction of the height)."""
        u = rng.uniform(0.1, 0.9, n) * width
        v = rng.uniform(*v_range, n) * height
        d_cam = np.stack([(u - width / 2) / camera.focal, -(v - height / 2) / camera.focal, np.ones(n)], 1)
        return d_cam @ rotation.T, np.arange(n)

    # Objects on the floor, placed where the camera sees them.
    n_obj = int(rng.integers(2, 6))
    dirs, _ = random_rays(n_obj, (0.55, 0.95))
    t, surf = cast_room(room, position, dirs)
    margin = 0.7
    for d, ti in zip(dirs, t):
        p = position + ti * d
        x = float(np.clip(p[0], room[0] + margin, room[1] - margin))
        z = float(np.clip(p[2], 1.6, room[4] - margin))
        kind = int(rng.choice([BOX, CYLINDER, SPHERE]))
        if kind == BOX:
            size = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.4, 1.1), rng.uniform(0.2, 0.5)])
        elif kind == CYLINDER:
            size = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.4, 1.1), 0.0])
        else:
            size = np.array([rng.uniform(0.25, 0.5), 0.0, 0.0])
        scene.solids.append(
            Solid(kind, np.array([x, z]), size, float(rng.uniform(0, np.pi)), _plain_albedo(rng, base, 0.04))
        )

    # Posters on walls: centred where a random upper-image ray meets a wall.
    n_post = int(rng.integers(0, 4))
    dirs, _ = random_rays(n_post, (0.05, 0.5))
    t, surf = cast_room(room, position, dirs)
    for d, ti, s in zip(dirs, t, surf):
        if s not in (0, 1, 5):  # left, right, front wall
            continue
        uv = wall_uv(room, int(s), (position + ti * d)[None])[0]
        half = np.array([rng.uniform(0.25, 0.7), rng.uniform(0.25, 0.55)])
        lo, hi = wall_u_range(room, int(s))
        uv[0] = np.clip(uv[0], lo + half[0] + 0.05, hi - half[0] - 0.05)
        uv[1] = np.clip(uv[1], half[1] + 0.3, room[2] - half[1] - 0.1)
        scene.posters.append(Rect(int(s), uv, half, 0.0, _pattern(rng)))

    # Rugs on the floor.
    n_rug = int(rng.integers(0, 3))
    dirs, _ = random_rays(n_rug, (0.6, 0.95))
    t, surf = cast_room(room, position, dirs)
    for d, ti, s in zip(dirs, t, surf):
        if s != 2:
            continue
        uv = floor_uv((position + ti * d)[None])[0]
        half = np.array([rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.8)])
        scene.rugs.append(Rect(2, uv, half, float(rng.uniform(0, np.pi)), _pattern(rng)))
    return scene
