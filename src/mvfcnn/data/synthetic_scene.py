"""The synthetic scene: second-phase objects placed in a ferrite matrix with grain boundaries,
rendered as SEM grey, class indices and an etched-LOM view displaced by a random similarity
transform. Grey levels and the transform convention are documented in :mod:`mvfcnn.data.synthetic`.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mvfcnn.core.config import ClassSet
from mvfcnn.data.synthetic_textures import TEXTURES, style_of

# Grey levels (0..1) of the rendered scene before noise; documented in the module docstring.
SEM_MATRIX = 0.27
SEM_BOUNDARY = 0.10  # added on ferrite grain boundaries (bright etch grooves)
LOM_MATRIX = 0.86
LOM_BOUNDARY = -0.08
LOM_TONE = (0.30, 0.36, 0.24, 0.20)  # second-phase grey per style (before colour tint)
LOM_TINT_MATRIX = (1.00, 0.95, 0.84)  # cream ferrite
LOM_TINT = ((0.95, 0.72, 0.58), (0.80, 0.80, 1.00), (0.70, 0.70, 1.00), (1.00, 0.74, 0.52))
GAP_PX = 10.0  # minimum gap between objects' bounding circles: LOM blur must not merge them


# --------------------------------------------------------------------------- objects


@dataclass
class Blob:
    """One second-phase object: a perturbed ellipse around (cy, cx) in canvas pixels."""

    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray  # (n, 3): order k, amplitude, phase
    label: int = 0
    seed: int = 0

    @property
    def reach(self) -> float:
        """Radius of a circle that surely contains the blob."""
        return self.radius * (1.0 + float(np.abs(self.harmonics[:, 1]).sum())) * math.sqrt(
            self.aspect) + 1.0


def _new_blob(rng: np.random.Generator, cy: float, cx: float, radius: float) -> Blob:
    orders = np.arange(2, 8, dtype=np.float64)
    amps = rng.uniform(0.0, 0.15, orders.size) / orders**0.7
    phases = rng.uniform(0.0, 2 * np.pi, orders.size)
    return Blob(cy, cx, radius, float(rng.uniform(1.0, 2.2)), float(rng.uniform(0, np.pi)),
                np.stack([orders, amps, phases], axis=1), seed=int(rng.integers(2**62)))


def _place(rng: np.random.Generator, count: int, area: tuple[float, float, float, float],
           radius_range: tuple[float, float], placed: list[Blob], tries: int = 60) -> list[Blob]:
    """Rejection-sample non-overlapping blobs with centres in area = (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = area
    new: list[Blob] = []
    centres = np.array([[b.cy, b.cx, b.reach] for b in placed], dtype=np.float64).reshape(-1, 3)
    r0, r1 = radius_range
    for _ in range(count):
        radius = r0 + (r1 - r0) * float(rng.random()) ** 1.5  # more small islands than big ones
        for _attempt in range(tries):
            blob = _new_blob(rng, float(rng.uniform(y0, y1)), float(rng.uniform(x0, x1)), radius)
            dist = np.hypot(centres[:, 0] - blob.cy, centres[:, 1] - blob.cx)
            if np.all(dist > centres[:, 2] + blob.reach + GAP_PX):
                new.append(blob)
                centres = np.vstack([centres, [blob.cy, blob.cx, blob.reach]])
                break
            radius = max(r0, radius * 0.93)  # crowded: try a smaller island
    return new


def _assign_classes(rng: np.random.Generator, blobs: list[Blob], classes: ClassSet,
                    image_class: str) -> None:
    """Single-class image: all one class but maybe one intruder; mixed: every class present."""
    fg = list(classes.foreground)
    if not blobs:
        return
    if image_class:
        main = classes.index_of(image_class)
        for blob in blobs:
            blob.label = main
        others = [c for c in fg if c != main]
        if others and len(blobs) >= 8 and rng.random() < 0.5:
            blobs[int(rng.integers(len(blobs)))].label = int(rng.choice(others))
    else:
        labels = (fg * (len(blobs) // len(fg) + 1))[: len(blobs)]
        for blob, label in zip(blobs, rng.permutation(labels), strict=True):
            blob.label = int(label)


def _blob_geometry(blob: Blob, shape: tuple[int, int]):
    """Bounding box (clipped), local offsets and inside mask / radial signed distance."""
    reach = blob.reach
    y0 = max(int(math.floor(blob.cy - reach)) - 1, 0)
    x0 = max(int(math.floor(blob.cx - reach)) - 1, 0)
    y1 = min(int(math.ceil(blob.cy + reach)) + 2, shape[0])
    x1 = min(int(math.ceil(blob.cx + reach)) + 2, shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(blob.cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(blob.cx))[None, :]
    dy, dx = np.broadcast_arrays(dy, dx)
    ca, sa = np.float32(math.cos(blob.angle)), np.float32(math.sin(blob.angle))
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    sq = np.float32(math.sqrt(blob.aspect))
    u /= sq
    v *= sq
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    r = np.ones_like(rho)
    for k, amp, phase in blob.harmonics:
        r += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase))
    dist = rho - np.float32(blob.radius) * r  # <0 inside, ~pixels (radial)
    return (slice(y0, y1), slice(x0, x1)), dy, dx, dist


# --------------------------------------------------------------------------- scene rendering


@dataclass
class Scene:
    """Float32 renderings on one canvas (SEM grey, LOM grey, class indices)."""

    sem: np.ndarray
    labels: np.ndarray
    lom: np.ndarray | None = None
    styles: dict[int, tuple[int, int]] = field(default_factory=dict)


def _convex_fill(verts: np.ndarray, shape: tuple[int, int]):
    """Pixels (centres) inside a convex polygon given as (row, col) vertices in order.

    Half-plane tests on the bounding box: much cheaper than skimage.draw.polygon per grain.
    """
    y0 = max(int(math.ceil(verts[:, 0].min())), 0)
    x0 = max(int(math.ceil(verts[:, 1].min())), 0)
    y1 = min(int(math.floor(verts[:, 0].max())) + 1, shape[0])
    x1 = min(int(math.floor(verts[:, 1].max())) + 1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    centre = verts.mean(axis=0)
    inside = np.ones((y1 - y0, x1 - x0), bool)
    for (ay, ax), (by, bx) in zip(verts, np.roll(verts, -1, axis=0), strict=True):
        side = (bx - ax) * (centre[0] - ay) - (by - ay) * (centre[1] - ax)
        cross = (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)
        inside &= cross * np.sign(side) >= 0
    return (slice(y0, y1), slice(x0, x1)), inside


def _draw_grains(rng: np.random.Generator, scene: Scene, grain_px: float) -> None:
    """Ferrite grains: a jittered-grid Voronoi, per-grain shading + thin boundary lines."""
    from scipy.spatial import Voronoi
    from skimage.draw import line_aa

    h, w = scene.sem.shape
    ny, nx = int(h / grain_px) + 5, int(w / grain_px) + 5
    gy, gx = np.meshgrid(np.arange(ny) - 2.0, np.arange(nx) - 2.0, indexing="ij")
    pts = np.stack([(gy.ravel() + 0.5 + rng.uniform(-0.42, 0.42, gy.size)) * grain_px,
                    (gx.ravel() + 0.5 + rng.uniform(-0.42, 0.42, gx.size)) * grain_px], axis=1)
    vor = Voronoi(pts)
    shades = rng.normal(0.0, 1.0, len(pts)).astype(np.float32)
    for i, region_index in enumerate(vor.point_region):
        region = vor.regions[region_index]
        if not region or -1 in region:
            continue
        verts = vor.vertices[region]
        if verts[:, 0].max() < 0 or verts[:, 1].max() < 0 or verts[:, 0].min() >= h or (
                verts[:, 1].min() >= w):
            continue
        filled = _convex_fill(verts, (h, w))
        if filled is None:
            continue
        box, inside = filled
        scene.sem[box][inside] += np.float32(0.025) * shades[i]
        if scene.lom is not None:
            scene.lom[box][inside] += np.float32(0.006) * shades[i]
    for a, b in vor.ridge_vertices:
        if a < 0 or b < 0:
            continue
        (y0, x0), (y1, x1) = vor.vertices[a], vor.vertices[b]
        if max(y0, y1) < -1 or max(x0, x1) < -1 or min(y0, y1) > h or min(x0, x1) > w:
            continue
        rr, cc, val = line_aa(int(round(y0)), int(round(x0)), int(round(y1)), int(round(x1)))
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        rr, cc, val = rr[keep], cc[keep], val[keep].astype(np.float32)
        scene.sem[rr, cc] += np.float32(SEM_BOUNDARY) * val
        if scene.lom is not None:
            scene.lom[rr, cc] += np.float32(LOM_BOUNDARY) * val


def _draw_blob(scene: Scene, blob: Blob, ignore: int) -> None:
    """Fill one object with its constituent's texture (SEM), tone (LOM) and label."""
    geometry = _blob_geometry(blob, scene.sem.shape)
    if geometry is None:
        return
    box, dy, dx, dist = geometry
    inside = dist < 0
    if not inside.any():
        return
    style, variant = scene.styles[blob.label]
    rng = np.random.default_rng(blob.seed)
    tex = TEXTURES[style](rng, dy, dx, blob.radius, variant)
    tex += np.float32(0.12) * np.clip(np.float32(1.0) + dist / np.float32(2.5), 0, 1)  # edge
    sem = scene.sem[box]
    sem[inside] = tex[inside]
    if scene.lom is not None:
        # etching response varies from island to island: LOM tone is only a weak class cue
        tone = np.float32(LOM_TONE[style] - 0.05 * variant + rng.uniform(-0.04, 0.04))
        lom = tone + np.float32(0.25) * (tex - np.float32(tex[inside].mean()))
        scene.lom[box][inside] = lom[inside]
    # 1-px ring: object pixels with a matrix 4-neighbour (the canvas edge counts as object)
    padded = np.pad(inside, 1, mode="edge")
    core = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    labels = scene.labels[box]
    labels[inside] = blob.label
    labels[inside & ~core] = ignore


def _grain_px(cfg: dict[str, Any]) -> float:
    """Ferrite grain size: about three times the mean island radius, as in DP steels."""
    r0, r1 = cfg["object_radius_px"]
    return 1.5 * (float(r0) + float(r1))


def _layout(rng: np.random.Generator, cfg: dict[str, Any], classes: ClassSet,
            image_class: str, field_box: tuple[int, int, int, int],
            canvas: tuple[int, int]) -> list[Blob]:
    """Objects with centres in the SEM field (object_count per field area), then the margin."""
    y0, x0, y1, x1 = field_box
    scale = (y1 - y0) * (x1 - x0) / (float(cfg["height"]) * float(cfg["width"]))
    lo, hi = (int(v) for v in cfg["object_count"])
    count = int(round(rng.integers(lo, hi + 1) * scale))
    radii = (float(cfg["object_radius_px"][0]), float(cfg["object_radius_px"][1]))
    blobs = _place(rng, count, (y0, x0, y1, x1), radii, [])
    _assign_classes(rng, blobs, classes, image_class)
    margin_area = canvas[0] * canvas[1] - (y1 - y0) * (x1 - x0)
    if margin_area > 0:
        n_margin = int(round(len(blobs) * margin_area / ((y1 - y0) * (x1 - x0))))
        extra: list[Blob] = []
        for blob in _place(rng, 4 * n_margin, (0, 0, canvas[0], canvas[1]), radii, blobs,
                           tries=4):
            if not (y0 <= blob.cy < y1 and x0 <= blob.cx < x1) and len(extra) < n_margin:
                extra.append(blob)
        _assign_classes(rng, extra, classes, image_class)
        if image_class:
            for blob in extra:
                blob.label = classes.index_of(image_class)
        blobs += extra
    return blobs


def render_scene(rng: np.random.Generator, cfg: dict[str, Any], classes: ClassSet,
                 image_class: str, canvas: tuple[int, int],
                 field_box: tuple[int, int, int, int], with_lom: bool) -> Scene:
    scene = Scene(sem=np.full(canvas, SEM_MATRIX, np.float32),
                  labels=np.zeros(canvas, np.uint8),
                  lom=np.full(canvas, LOM_MATRIX, np.float32) if with_lom else None,
                  styles={c: style_of(c, classes) for c in classes.foreground})
    blobs = _layout(rng, cfg, classes, image_class, field_box, canvas)
    _draw_grains(rng, scene, _grain_px(cfg))
    for blob in blobs:
        _draw_blob(scene, blob, classes.ignore_index)
    return scene


def finish_sem(canvas: np.ndarray, seedseq: np.random.SeedSequence,
               rows: int = 1024) -> np.ndarray:
    """Beam blur, slight brightness gradient, shot + read noise, quantise; in row strips."""
    h, w = canvas.shape
    starts = range(0, h, rows)
    gradient_ss, *strip_ss = seedseq.spawn(1 + len(starts))
    rng = np.random.default_rng(gradient_ss)
    angle, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.08)
    gx = np.float32(amp * math.cos(angle) / max(h, w))
    gy = np.float32(amp * math.sin(angle) / max(h, w))
    xs = (np.arange(w, dtype=np.float32) - np.float32(w / 2)) * gx
    out = np.empty((h, w), np.uint8)
    pad = 4
    for r0, strip_seed in zip(starts, strip_ss, strict=True):
        r1 = min(r0 + rows, h)
        a0, a1 = max(r0 - pad, 0), min(r1 + pad, h)
        strip = ndi.gaussian_filter(canvas[a0:a1], 0.7, truncate=4.0, mode="reflect")
        strip = strip[r0 - a0: strip.shape[0] - (a1 - r1)]
        ys = (np.arange(r0, r1, dtype=np.float32) - np.float32(h / 2)) * gy
        strip *= np.float32(1.0) + ys[:, None] + xs[None, :]
        noise = np.random.default_rng(strip_seed).standard_normal(strip.shape, dtype=np.float32)
        strip += np.sqrt(np.maximum(strip, 0) * np.float32(0.0025) + np.float32(0.0003)) * noise
        out[r0:r1] = np.clip(strip * np.float32(255.0) + np.float32(0.5), 0, 255).astype(
            np.uint8)
    return out


# --------------------------------------------------------------------------- LOM view


def lom_transform(rng: np.random.Generator, sem_shape: tuple[int, int],
                  lom_cfg: dict[str, Any]) -> dict[str, Any]:
    """Draw the random similarity displacement of the LOM view (see module docstring)."""
    H, W = sem_shape
    down = float(lom_cfg["downscale"])
    h, w = max(int(round(H / down)), 1), max(int(round(W / down)), 1)
    rot = float(rng.uniform(-1, 1) * float(lom_cfg["rotation_deg"]))
    scale = 1.0 + float(rng.uniform(-1, 1) * float(lom_cfg["scale_jitter"]))
    shift = [float(v) for v in rng.uniform(-1, 1, 2) * float(lom_cfg["shift_px"])]
    a = math.radians(rot)
    s = down * scale
    to_lom_centre = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]])
    rs = np.array([[s * math.cos(a), -s * math.sin(a), 0], [s * math.sin(a), s * math.cos(a), 0],
                   [0, 0, 1]])
    to_sem = np.array([[1, 0, (W - 1) / 2 + shift[0]], [0, 1, (H - 1) / 2 + shift[1]], [0, 0, 1]])
    matrix = to_sem @ rs @ to_lom_centre
    return {"lom_to_sem": matrix.tolist(), "sem_to_lom": np.linalg.inv(matrix).tolist(),
            "rotation_deg": rot, "scale": scale, "downscale": down, "shift_px": shift,
            "sem_shape": [H, W], "lom_shape": [h, w],
            "convention": "(x, y, 1) = (column, row, 1); lom_to_sem maps LOM px to SEM px"}


def lom_margin(sem_shape: tuple[int, int], lom_cfg: dict[str, Any]) -> int:
    """Extra scene around the SEM field that the displaced LOM view can see."""
    half_diag = 0.5 * math.hypot(*sem_shape)
    angle = math.radians(float(lom_cfg["rotation_deg"]))
    reach = half_diag * (2 * math.sin(angle / 2) + float(lom_cfg["scale_jitter"]))
    reach += math.sqrt(2) * float(lom_cfg["shift_px"]) + float(lom_cfg["downscale"])
    return int(math.ceil(reach)) + 8


def render_lom(scene: Scene, transform: dict[str, Any], margin: int, lom_cfg: dict[str, Any],
               classes: ClassSet, seedseq: np.random.SeedSequence) -> np.ndarray:
    from skimage.transform import ProjectiveTransform, warp

    assert scene.lom is not None
    rng = np.random.default_rng(seedseq)
    down = float(lom_cfg["downscale"])
    # optics: blur_sigma is in LOM pixels (>= 0.5 px anti-aliases the downsampling)
    sigma = max(float(lom_cfg["blur_sigma"]), 0.5) * down
    if lom_cfg["color"]:
        lut = np.ones((256, 3), np.float32)
        lut[0] = LOM_TINT_MATRIX
        for c in classes.foreground:
            style, variant = scene.styles[c]
            lut[c] = np.roll(LOM_TINT[style], variant)
        lut[classes.ignore_index] = np.mean(LOM_TINT, axis=0)
        image = scene.lom[..., None] * lut[scene.labels]
        image = np.stack([ndi.gaussian_filter(image[..., i], sigma) for i in range(3)], axis=-1)
    else:
        image = ndi.gaussian_filter(scene.lom, sigma)
    to_canvas = np.array([[1, 0, margin], [0, 1, margin], [0, 0, 1]]) @ np.array(
        transform["lom_to_sem"])
    h, w = transform["lom_shape"]
    lom = warp(image, ProjectiveTransform(to_canvas), output_shape=(h, w), order=1,
               mode="edge", preserve_range=True).astype(np.float32)
    H, W = transform["sem_shape"]
    yy = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5)
    xx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5)
    shading = np.float32(1.0) - np.float32(0.06) * (xx**2 + yy**2)  # mild vignetting
    if lom.ndim == 3:
        shading = shading[..., None]
    lom = lom * shading + np.float32(0.012) * rng.standard_normal(lom.shape, dtype=np.float32)
    return np.clip(lom * 255.0 + 0.5, 0, 255).astype(np.uint8)
