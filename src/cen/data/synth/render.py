"""Vectorised ray casting of a :class:`~cen.data.synth.scene.Scene` with numpy.

Every function works on all pixel rays at once: origin ``o`` (3,) and directions
``d`` (N, 3) scaled so that the ray parameter ``t`` is the camera z-buffer depth (m).
A miss is ``t = inf``.
"""

from __future__ import annotations

import numpy as np

from cen.data.synth.classes import BOX, CYLINDER, FLOOR, POSTER, RUG, SPHERE, WALL
from cen.data.synth.scene import Pattern, Rect, Scene, Solid

#: Room surfaces, in the order of the surface index used throughout.
SURFACES: tuple[str, ...] = ("left", "right", "floor", "ceiling", "back", "front")
_SURFACE_CLASS = np.array([WALL, WALL, FLOOR, WALL, WALL, WALL], dtype=np.uint8)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    return np.where(b == 0, np.inf, out)


def cast_room(room: np.ndarray, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit point of rays from inside the room box.

    Returns ``t`` (N,) and the surface index (N,) into :data:`SURFACES`."""
    x0, x1, h, z0, z1 = (float(v) for v in room)
    ox, oy, oz = (float(v) for v in o)
    tx = _safe_div(np.where(d[:, 0] > 0, x1 - ox, x0 - ox).astype(d.dtype), d[:, 0])
    ty = _safe_div(np.where(d[:, 1] > 0, h - oy, -oy).astype(d.dtype), d[:, 1])
    tz = _safe_div(np.where(d[:, 2] > 0, z1 - oz, z0 - oz).astype(d.dtype), d[:, 2])
    ts = np.stack([tx, ty, tz], axis=1)
    axis = np.argmin(ts, axis=1)
    positive = np.take_along_axis(d, axis[:, None], 1)[:, 0] > 0
    surface = np.choose(axis, [np.where(positive, 1, 0), np.where(positive, 3, 2), np.where(positive, 5, 4)])
    return ts[np.arange(len(d)), axis], surface


def room_normals(surface: np.ndarray) -> np.ndarray:
    """Inward unit normals (N, 3) of the room surfaces with the given indices."""
    table = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float32)
    return table[surface]


def wall_uv(room: np.ndarray, surface: int, p: np.ndarray) -> np.ndarray:
    """2-D coordinates (m) of points ``p`` (N, 3) on a wall: (along the wall, height)."""
    u = p[:, 2] if surface in (0, 1) else p[:, 0]
    return np.stack([u, p[:, 1]], axis=1)


def wall_u_range(room: np.ndarray, surface: int) -> tuple[float, float]:
    """Extent of a wall along its horizontal coordinate (m)."""
    return (room[3], room[4]) if surface in (0, 1) else (room[0], room[1])


def floor_uv(p: np.ndarray) -> np.ndarray:
    """2-D coordinates (m) of points ``p`` (N, 3) on the floor: (x, z)."""
    return p[:, [0, 2]]


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def cast_box(solid: Solid, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test against a yawed box. Returns ``t`` (N,) and world normals (N, 3)."""
    r = _rot_y(solid.yaw).astype(d.dtype)
    centre = np.array([solid.center[0], 0.0, solid.center[1]], dtype=d.dtype)
    o_l = r.T @ (o - centre)
    d_l = d @ r  # rows: r.T @ d
    hx, h, hz = (float(v) for v in solid.size)
    lo = np.array([-hx, 0.0, -hz], dtype=d.dtype)
    hi = np.array([hx, h, hz], dtype=d.dtype)
    t1 = _safe_div(lo - o_l, d_l)
    t2 = _safe_div(hi - o_l, d_l)
    t1 = np.where(d_l == 0, -np.inf, t1)  # parallel rays: slab test decided by the origin (outside here)
    near = np.minimum(t1, t2)
    far = np.maximum(t1, t2)
    axis = np.argmax(near, axis=1)
    t_near = near[np.arange(len(d)), axis]
    hit = (t_near <= far.min(axis=1)) & (t_near > 0)
    n_l = np.zeros_like(d)
    n_l[np.arange(len(d)), axis] = -np.sign(d_l[np.arange(len(d)), axis])
    return np.where(hit, t_near, np.inf), n_l @ r.T


def cast_cylinder(solid: Solid, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upright cylinder standing on the floor (side and top cap). Returns ``t``, normals."""
    radius, h = float(solid.size[0]), float(solid.size[1])
    cx, cz = (float(v) for v in solid.center)
    ox, oz, oy = float(o[0]) - cx, float(o[2]) - cz, float(o[1])
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = 2 * (d[:, 0] * ox + d[:, 2] * oz)
    c = ox**2 + oz**2 - radius**2
    disc = b**2 - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    y_side = oy + t_side * d[:, 1]
    side = (disc >= 0) & (t_side > 0) & (y_side >= 0) & (y_side <= h)
    t_side = np.where(side, t_side, np.inf)
    t_cap = _safe_div(np.full(len(d), h - oy, dtype=d.dtype), d[:, 1])
    px, pz = ox + t_cap * d[:, 0], oz + t_cap * d[:, 2]
    cap = (t_cap > 0) & (px**2 + pz**2 <= radius**2)
    t_cap = np.where(cap, t_cap, np.inf)
    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    tt = np.where(np.isfinite(t), t, 0.0)
    n_side = np.stack([(ox + tt * d[:, 0]) / radius, np.zeros_like(tt), (oz + tt * d[:, 2]) / radius], axis=1)
    normals = np.where(use_cap[:, None], np.array([0.0, 1.0, 0.0], dtype=d.dtype), n_side)
    return t, normals


def cast_sphere(solid: Solid, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sphere resting on the floor. Returns ``t`` (N,) and world normals (N, 3)."""
    radius = float(solid.size[0])
    centre = np.array([solid.center[0], radius, solid.center[1]], dtype=d.dtype)
    oc = o - centre
    a = np.einsum("ij,ij->i", d, d)
    b = 2 * d @ oc
    c = float(oc @ oc) - radius**2
    disc = b**2 - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    hit = (disc >= 0) & (t > 0)
    t = np.where(hit, t, np.inf)
    tt = np.where(hit, t, 0.0)
    return t, (oc + tt[:, None] * d) / radius


_CASTERS = {BOX: cast_box, CYLINDER: cast_cylinder, SPHERE: cast_sphere}


def _pattern_values(pattern: Pattern, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of a two-colour pattern at rectangle coordinates ``a``, ``b`` (m)."""
    c, s = float(np.cos(pattern.angle)), float(np.sin(pattern.angle))
    ra, rb = c * a + s * b, -s * a + c * b
    f = pattern.frequency
    if pattern.kind == "stripes":
        sel = np.sin(2 * np.pi * f * ra) > 0
    elif pattern.kind == "checker":
        sel = (np.floor(f * ra) + np.floor(f * rb)) % 2 == 0
    else:
        sel = np.sin(2 * np.pi * f * np.hypot(a, b)) > 0
    return np.where(sel[:, None], pattern.colors[0], pattern.colors[1])


def _solid_texture(scene: Scene, p: np.ndarray) -> np.ndarray:
    """Multiplicative solid-texture factor (N,) around 1 at world points ``p`` (N, 3)."""
    tex = scene.texture.astype(p.dtype)
    phase = p @ (2 * np.pi * tex[:, 3] * tex[:, :3].T) + tex[:, 4]
    return 1.0 + scene.texture_amplitude * np.sin(phase).mean(axis=1)


def _paint_rects(
    rects: list[Rect], uv: np.ndarray, sel: np.ndarray, label: np.ndarray, albedo: np.ndarray, class_id: int
) -> None:
    """Paint patterned rectangles over the selected pixels (in place)."""
    for rect in rects:
        c, s = float(np.cos(rect.angle)), float(np.sin(rect.angle))
        du, dv = uv[:, 0] - float(rect.center[0]), uv[:, 1] - float(rect.center[1])
        a, b = c * du + s * dv, -s * du + c * dv
        inside = sel & (np.abs(a) <= rect.half[0]) & (np.abs(b) <= rect.half[1])
        if inside.any():
            label[inside] = class_id
            albedo[inside] = _pattern_values(rect.pattern, a[inside], b[inside])  # float64 colours cast to float32


def render(scene: Scene) -> dict[str, np.ndarray]:
    """Ray-cast a scene.

    Returns float32 / integer arrays of one view, H x W from the camera:

    * ``depth`` (H, W): z-buffer depth in metres (noise-free);
    * ``normal`` (H, W, 3): unit normals in the camera frame, x right, y up, z towards
      the camera;
    * ``albedo`` (H, W, 3) in [0, 1]; ``shading`` (H, W) in [0, 1];
    * ``label`` (H, W) uint8 class ids; ``surface`` (H, W) int: room surface index
      (0-5) or ``6 + i`` for solid ``i`` (posters and rugs keep their surface's index).
    """
    cam = scene.camera
    o, d = cam.position.astype(np.float32), cam.ray_directions().astype(np.float32)
    n_pix = len(d)
    t, surface = cast_room(scene.room, o, d)
    normals = room_normals(surface)
    for i, solid in enumerate(scene.solids):
        t_obj, n_obj = _CASTERS[solid.kind](solid, o, d)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        surface = np.where(closer, 6 + i, surface)
        normals = np.where(closer[:, None], n_obj, normals)

    p = o + t[:, None] * d
    kinds = np.array([_SURFACE_CLASS[s] for s in range(6)] + [s.kind for s in scene.solids], dtype=np.uint8)
    label = kinds[surface]
    colours = np.concatenate([scene.surface_albedo] + [s.albedo[None] for s in scene.solids], axis=0).astype(np.float32)
    albedo = colours[surface] * _solid_texture(scene, p)[:, None]

    on_floor = surface == 2
    _paint_rects(scene.rugs, floor_uv(p), on_floor, label, albedo, RUG)
    for wall in (0, 1, 5):
        posters = [r for r in scene.posters if r.surface == wall]
        if posters:
            _paint_rects(posters, wall_uv(scene.room, wall, p), surface == wall, label, albedo, POSTER)

    shading = scene.ambient + (1 - scene.ambient) * np.clip(normals @ scene.light.astype(np.float32), 0, None)
    n_cam = normals @ cam.rotation.astype(np.float32)  # world -> camera (x right, y up, z forward)
    n_cam[:, 2] *= -1  # z towards the camera
    h, w = cam.height, cam.width
    assert n_pix == h * w
    return {
        "depth": t.reshape(h, w),
        "normal": n_cam.reshape(h, w, 3),
        "albedo": np.clip(albedo, 0, 1).reshape(h, w, 3),
        "shading": shading.reshape(h, w),
        "label": label.reshape(h, w),
        "surface": surface.reshape(h, w),
    }
