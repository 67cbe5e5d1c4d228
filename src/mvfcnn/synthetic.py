"""The embedded synthetic dataset: SEM/LOM pairs of ferrite + textured second-phase objects.

The images are caricatures a metallographer recognises (paper Fig. 1/4): a dark, smooth ferrite
matrix with polygonal grain boundaries and brighter second-phase islands whose substructure tells
the constituent apart (martensite: lath packets; tempered martensite: softened laths + carbide
dots; bainite: aligned carbide dashes; pearlite: periodic lamellae in 2-4 colonies). Textures are
assigned by *position* among the configured foreground classes (1st -> martensite-like, 2nd ->
tempered, 3rd -> bainite, 4th -> pearlite, 5th+ cycle again with other spacings/tones), so any
class set from config works (e.g. UHCS).

Per sample (``generate_sample``) four files are written atomically:

* ``sem.tif``    uint8 H x W; matrix median ~70 (1-99 %: 45-95), second phase brighter, median
  ~110-135 with texture spanning ~55-210 (lath gaps and pearlitic ferrite are dark).
* ``lom.tif``    uint8 h x w (x3 when ``lom.color``), h = round(H / downscale); etched-LOM look:
  bright matrix (luminance ~200-215, ~215-225 if grey), dark second phase (median ~35-80,
  ~50-95 if grey; up to ~120 in the blurred rim), texture blurred away, so Otsu (~130)
  separates them; displaced by a random similarity transform.
* ``labels.tif`` uint8 H x W on the SEM grid: 0 matrix, class index inside objects, and
  ``ignore_index`` (255) on the object's outermost 1-px ring (pixels of the object that touch the
  matrix, 4-connectivity): those pixels are part-object, part-matrix after blur, so ambiguous.
* ``transform.json`` the known LOM -> SEM transform (for measuring registration error).

Coordinate convention (transform.json): points are (x, y) = (column, row) in pixel units, the
origin at the centre of the top-left pixel, y pointing down. ``lom_to_sem`` is a 3x3 homogeneous
matrix M with (x_sem, y_sem, 1)^T = M (x_lom, y_lom, 1)^T, i.e. exactly the ``inverse_map`` that
``skimage.transform.warp(sem, ProjectiveTransform(M), output_shape=lom_shape)`` needs to render
the LOM view of the SEM field; warping the LOM onto the SEM grid uses inv(M). M = T(c_sem +
shift) R(rotation) S(downscale * scale) T(-c_lom), with c_* the image centres ((w-1)/2, (h-1)/2)
and R(a) = [[cos a, -sin a], [sin a, cos a]] (positive = clockwise on screen, since y is down).
"scale" is the jitter factor 1 +- scale_jitter on top of "downscale"; one LOM pixel spans
downscale * scale SEM pixels. "shift_px" = [dx, dy] in SEM pixels.

Determinism: each sample's RNG is seeded from (global seed, crc32(sample name)), never Python's
salted ``hash()``, so the same seed gives byte-identical files in any process.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from mvfcnn.config import SAMPLE_COLUMNS, ClassSet, classes_from_json, json_arg
from mvfcnn.errors import InputError
from mvfcnn.io import write_image, write_json
from mvfcnn.settings import with_defaults

LABELLED_SPLITS = ("train", "test")
N_STYLES = 4  # martensite, tempered martensite, bainite, pearlite

# Grey levels (0..1) of the rendered scene before noise; documented in the module docstring.
SEM_MATRIX = 0.27
SEM_BOUNDARY = 0.10  # added on ferrite grain boundaries (bright etch grooves)
LOM_MATRIX = 0.86
LOM_BOUNDARY = -0.08
LOM_TONE = (0.30, 0.36, 0.24, 0.20)  # second-phase grey per style (before colour tint)
LOM_TINT_MATRIX = (1.00, 0.95, 0.84)  # cream ferrite
LOM_TINT = ((0.95, 0.72, 0.58), (0.80, 0.80, 1.00), (0.70, 0.70, 1.00), (1.00, 0.74, 0.52))
GAP_PX = 10.0  # minimum gap between objects' bounding circles: LOM blur must not merge them


# --------------------------------------------------------------------------- configuration


def _merged(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """Config with schema defaults filled in, so library callers may pass a partial section."""
    return with_defaults("synthetic", cfg)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def sample_sheet(cfg: dict[str, Any], outdir: str, classes: ClassSet) -> pd.DataFrame:
    """The synthetic dataset's sample sheet; pure and cheap because Snakemake calls it per DAG."""
    cfg = _merged(cfg)
    if not classes.foreground:
        raise InputError("the synthetic dataset needs at least one second-phase class")
    outdir = str(outdir).rstrip("/")
    rows: list[dict[str, str]] = []

    def add(sample: str, split: str, cls: str) -> None:
        base = f"{outdir}/{sample}" if outdir else sample
        rows.append({"sample": sample, "split": split, "sem": f"{base}/sem.tif",
                     "lom": f"{base}/lom.tif", "mask": "",
                     "labels": f"{base}/labels.tif" if split in LABELLED_SPLITS else "",
                     "class": cls})

    for split in LABELLED_SPLITS:
        for index in classes.foreground:
            name = classes.names[index]
            for i in range(int(cfg["images_per_class"].get(split, 0))):
                add(f"{split}_{_slug(name)}_{i}", split, name)
        for i in range(int(cfg["mixed_images"].get(split, 0))):
            add(f"{split}_mixed_{i}", split, "")
    for i in range(int(cfg["predict_images"])):
        add(f"predict_{i}", "predict", "")
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS).fillna("").astype(str)
    dupes = sorted(frame.loc[frame["sample"].duplicated(), "sample"].unique())
    if dupes:
        raise InputError(f"synthetic sample names collide {dupes}: rename the class(es)")
    return frame


@dataclass(frozen=True)
class Role:
    """What a synthetic sample shows, recovered from its name (via the sample sheet)."""

    split: str
    image_class: str  # "" for mixed / predict images


def sample_role(sample: str, cfg: dict[str, Any], classes: ClassSet) -> Role:
    sheet = sample_sheet(cfg, "", classes).set_index("sample")
    if sample not in sheet.index:
        raise InputError(f"not a sample of the synthetic dataset (known: {list(sheet.index)})",
                         sample=sample)
    return Role(str(sheet.loc[sample, "split"]), str(sheet.loc[sample, "class"]))


def sample_seed(seed: int, sample: str) -> np.random.SeedSequence:
    """Stable per-sample entropy: global seed + crc32 of the name (same in every process)."""
    seed = int(seed)
    return np.random.SeedSequence([seed % 2**32, (seed // 2**32) % 2**32,
                                   zlib.crc32(sample.encode("utf-8"))])


def style_of(index: int, classes: ClassSet) -> tuple[int, int]:
    """(texture generator, variant) of a class: by position among the foreground classes."""
    position = classes.foreground.index(index)
    return position % N_STYLES, position // N_STYLES


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


# --------------------------------------------------------------------------- textures


def _cells(rng: np.random.Generator, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Uniform random value per integer cell (i, j): a lookup table, so fully vectorised."""
    i0, j0 = int(i.min()), int(j.min())
    table = rng.random((int(i.max()) - i0 + 1, int(j.max()) - j0 + 1), dtype=np.float32)
    return table[i - i0, j - j0]


def _partition(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, radius: float,
               n: int) -> np.ndarray:
    """Split an object into n regions (packets / colonies): a local Voronoi of random seeds."""
    if n <= 1:
        return np.zeros(dy.shape, np.int8)
    ang = rng.uniform(0, 2 * np.pi, n)
    rad = radius * np.sqrt(rng.uniform(0.05, 0.7, n))
    best = np.full(dy.shape, np.inf, np.float32)
    part = np.zeros(dy.shape, np.int8)
    for p in range(n):
        d = (dy - np.float32(rad[p] * math.sin(ang[p]))) ** 2 + (
            dx - np.float32(rad[p] * math.cos(ang[p]))) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        part[closer] = p
    return part


def _rotated(dy: np.ndarray, dx: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return dx * c + dy * s, -dx * s + dy * c  # across the stripes, along the stripes


def _laths(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, theta: float,
           width: tuple[float, float], length: tuple[float, float], contrast: float,
           gap: float) -> np.ndarray:
    """Parallel laths of irregular width, broken into blocks along their length."""
    s, t = _rotated(dy, dx, theta)
    lo, hi = float(s.min()) - 1.0, float(s.max()) + 1.0
    n = int((hi - lo) / width[0]) + 2
    edges = lo - rng.uniform(0, width[1]) + np.cumsum(rng.uniform(*width, n)).astype(np.float32)
    lath = np.searchsorted(edges, s)
    left = np.where(lath > 0, edges[np.maximum(lath - 1, 0)], lo - width[1])
    right = edges[np.minimum(lath, n - 1)]
    edge_dist = np.minimum(s - left, right - s)
    seg_len = rng.uniform(*length, n + 1).astype(np.float32)
    offset = rng.uniform(0, length[1], n + 1).astype(np.float32)
    seg = np.floor((t + offset[lath]) / seg_len[lath]).astype(np.int64)
    value = np.float32(contrast) * (_cells(rng, lath, seg) - np.float32(0.5))
    value -= np.float32(gap) * np.clip(np.float32(1.2) - edge_dist, 0, 1)
    return value


def _dots(rng: np.random.Generator, shape: tuple[int, int], density: float, sigma: float,
          amplitude: tuple[float, float]) -> np.ndarray:
    """Small bright Gaussian spots (carbides) at random positions."""
    img = np.zeros(shape, np.float32)
    n = rng.poisson(density * shape[0] * shape[1])
    rr = rng.integers(0, shape[0], n)
    cc = rng.integers(0, shape[1], n)
    np.add.at(img, (rr, cc), rng.uniform(*amplitude, n).astype(np.float32))
    return ndi.gaussian_filter(img, sigma, truncate=3.0) * np.float32(2 * np.pi * sigma**2)


def _tex_martensite(rng, dy, dx, radius, variant):
    """Packets of fine laths, each packet with its own lath orientation."""
    scale = 1.0 + 0.8 * variant  # variants: coarser laths in fewer, larger packets
    n = int(np.clip(round(np.pi * radius**2 / (1500 * (1 + 2 * variant))), 2 - min(variant, 1),
                    7))
    part = _partition(rng, dy, dx, radius, n)
    out = np.zeros(dy.shape, np.float32)
    for p in range(n):
        value = _laths(rng, dy, dx, rng.uniform(0, np.pi), (2.5 * scale, 5.5 * scale),
                       (15.0, 45.0), contrast=0.40, gap=0.22)
        out = np.where(part == p, value + np.float32(rng.uniform(-0.05, 0.05)), out)
    return out + np.float32(0.60 + 0.08 * variant)


def _tex_tempered(rng, dy, dx, radius, variant):
    """Softened lath packets sprinkled with small bright carbide dots."""
    scale = 1.0 + 0.5 * variant  # variants: wider laths, fewer but coarser carbides
    n = int(np.clip(round(np.pi * radius**2 / 2500), 1, 5))
    part = _partition(rng, dy, dx, radius, n)
    out = np.zeros(dy.shape, np.float32)
    for p in range(n):
        value = _laths(rng, dy, dx, rng.uniform(0, np.pi), (4.0 * scale, 8.0 * scale),
                       (15.0, 40.0), contrast=0.16, gap=0.08)
        out = np.where(part == p, value, out)
    out = ndi.gaussian_filter(out, 1.0)
    coarse = 1.0 + 0.6 * variant
    out += _dots(rng, dy.shape, 0.022 / coarse**3, 0.8 * coarse, (0.35, 0.55))
    out += _dots(rng, dy.shape, 0.003 / coarse**3, 1.3 * coarse, (0.25, 0.40))
    return out + np.float32(0.44 + 0.05 * variant)


def _tex_bainite(rng, dy, dx, radius, variant):
    """Bainitic ferrite with sparse carbide dashes, aligned along one dominant direction."""
    scale = 1.0 + 0.5 * variant  # variants: wider rows of shorter dashes
    theta = rng.uniform(0, np.pi)
    t, s = _rotated(dy, dx, theta)  # t along the dashes, s across
    s = s + np.float32(rng.uniform(0.5, 2.0)) * np.sin(t / np.float32(rng.uniform(25, 50)))
    row_sp = np.float32(rng.uniform(5.0, 8.0) * scale)
    row = np.floor(s / row_sp).astype(np.int64)
    jitter = _cells(rng, row, np.zeros_like(row)) - np.float32(0.5)
    across = np.abs(s - (row + np.float32(0.5) + np.float32(0.4) * jitter) * row_sp)
    period = np.float32(rng.uniform(14.0, 22.0) * scale)
    along = t + jitter * np.float32(97.0)
    seg = np.floor(along / period).astype(np.int64)
    cell = _cells(rng, row, seg)
    frac = along / period - seg
    length = (np.float32(0.25) + np.float32(0.5) * cell) / np.float32(1 + 1.5 * variant)
    dash = (cell < 0.75) & (frac < length) & (
        across < np.float32(0.9))
    sheaf = _cells(rng, np.floor(s / np.float32(11.0 * scale)).astype(np.int64),
                   np.zeros_like(row)) - np.float32(0.5)
    out = np.float32(0.40 + 0.05 * variant) + np.float32(0.07) * sheaf
    return out + np.float32(0.45) * dash


def _tex_pearlite(rng, dy, dx, radius, variant):
    """Colonies of alternating cementite (bright) / ferrite (dark) lamellae, periodic."""
    scale = 1.0 + 0.6 * variant  # variants: coarser, wavier lamellae
    n = int(np.clip(round(np.pi * radius**2 / 2200), 2, 4))
    part = _partition(rng, dy, dx, radius, n)
    out = np.zeros(dy.shape, np.float32)
    for p in range(n):
        s, t = _rotated(dy, dx, rng.uniform(0, np.pi))
        s = s + np.float32(rng.uniform(0.5, 2.5) * (1 + 2 * variant)) * np.sin(
            t * np.float32(2 * np.pi / rng.uniform(50, 120)) + np.float32(rng.uniform(0, 6.3)))
        spacing = np.float32(rng.uniform(4.5, 7.5) * scale)
        phase = s / spacing + np.float32(rng.random())
        wave = np.cos(np.float32(2 * np.pi) * phase)
        value = np.float32(0.26) + np.float32(0.58) * np.clip((wave - 0.1) * 1.6, 0, 1)
        breaks = _cells(rng, np.floor(phase).astype(np.int64),
                        np.floor(t / np.float32(25.0)).astype(np.int64)) < 0.06
        value = np.where(breaks, np.float32(0.30), value)
        out = np.where(part == p, value, out)
    return out + np.float32(0.04 * variant)


TEXTURES: tuple[Callable[..., np.ndarray], ...] = (
    _tex_martensite, _tex_tempered, _tex_bainite, _tex_pearlite)


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


def _render(rng: np.random.Generator, cfg: dict[str, Any], classes: ClassSet, image_class: str,
            canvas: tuple[int, int], field_box: tuple[int, int, int, int], with_lom: bool,
            ) -> Scene:
    scene = Scene(sem=np.full(canvas, SEM_MATRIX, np.float32),
                  labels=np.zeros(canvas, np.uint8),
                  lom=np.full(canvas, LOM_MATRIX, np.float32) if with_lom else None,
                  styles={c: style_of(c, classes) for c in classes.foreground})
    blobs = _layout(rng, cfg, classes, image_class, field_box, canvas)
    _draw_grains(rng, scene, _grain_px(cfg))
    for blob in blobs:
        _draw_blob(scene, blob, classes.ignore_index)
    return scene


def _finish_sem(canvas: np.ndarray, seedseq: np.random.SeedSequence,
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


def _lom_margin(sem_shape: tuple[int, int], lom_cfg: dict[str, Any]) -> int:
    """Extra scene around the SEM field that the displaced LOM view can see."""
    half_diag = 0.5 * math.hypot(*sem_shape)
    angle = math.radians(float(lom_cfg["rotation_deg"]))
    reach = half_diag * (2 * math.sin(angle / 2) + float(lom_cfg["scale_jitter"]))
    reach += math.sqrt(2) * float(lom_cfg["shift_px"]) + float(lom_cfg["downscale"])
    return int(math.ceil(reach)) + 8


def _render_lom(scene: Scene, transform: dict[str, Any], margin: int, lom_cfg: dict[str, Any],
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


# --------------------------------------------------------------------------- public API


@dataclass
class SyntheticSample:
    """One generated sample, in memory."""

    sem: np.ndarray
    lom: np.ndarray
    labels: np.ndarray
    transform: dict[str, Any]


def render_sample(sample: str, cfg: dict[str, Any], classes: ClassSet,
                  seed: int) -> SyntheticSample:
    """Render a sample in memory (the pure part of :func:`generate_sample`)."""
    cfg = _merged(cfg)
    role = sample_role(sample, cfg, classes)
    seedseq = sample_seed(seed, sample)
    layout_ss, sem_ss, lom_ss, tf_ss = seedseq.spawn(4)
    H, W = int(cfg["height"]), int(cfg["width"])
    lom_cfg = cfg["lom"]
    transform = lom_transform(np.random.default_rng(tf_ss), (H, W), lom_cfg)
    m = _lom_margin((H, W), lom_cfg)
    scene = _render(np.random.default_rng(layout_ss), cfg, classes, role.image_class,
                    (H + 2 * m, W + 2 * m), (m, m, m + H, m + W), with_lom=True)
    sem = _finish_sem(scene.sem[m:m + H, m:m + W], sem_ss)
    labels = np.ascontiguousarray(scene.labels[m:m + H, m:m + W])
    lom = _render_lom(scene, transform, m, lom_cfg, classes, lom_ss)
    pixel = float(cfg["pixel_size_um"])
    transform.update({"sample": sample, "seed": int(seed), "split": role.split,
                      "image_class": role.image_class, "sem_pixel_size_um": pixel,
                      "lom_pixel_size_um": pixel * transform["downscale"] * transform["scale"]})
    return SyntheticSample(sem, lom, labels, transform)


def generate_sample(sample: str, cfg: dict[str, Any], classes: ClassSet, seed: int,
                    outdir: str | Path) -> None:
    """Write sem.tif, lom.tif, labels.tif and transform.json for one sample (atomically)."""

    result = render_sample(sample, cfg, classes, seed)
    outdir = Path(outdir)
    write_image(outdir / "sem.tif", result.sem)
    write_image(outdir / "lom.tif", result.lom)
    write_image(outdir / "labels.tif", result.labels)
    write_json(outdir / "transform.json", result.transform)


def large_sem(height: int, width: int, seed: int, classes: ClassSet,
              cfg: dict[str, Any] | None = None, image_class: str = "",
              ) -> tuple[np.ndarray, np.ndarray]:
    """A paper-sized (e.g. 7000 x 8000) SEM + labels for benchmarks, in bounded memory.

    Object density, sizes and textures follow ``cfg`` (the synthetic section) scaled by area;
    objects are rendered only inside their bounding boxes and the finishing runs in row strips,
    so peak memory is about 7 bytes per pixel.
    """
    cfg = _merged(cfg)
    seedseq = np.random.SeedSequence([int(seed) % 2**32, height, width, 7000])
    layout_ss, sem_ss = seedseq.spawn(2)
    if image_class:
        classes.index_of(image_class)
    scene = _render(np.random.default_rng(layout_ss), cfg, classes, image_class,
                    (height, width), (0, 0, height, width), with_lom=False)
    labels = scene.labels
    sem = _finish_sem(scene.sem, sem_ss)
    return sem, labels


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mvfcnn synthesize", description=__doc__.split("\n")[0])
    parser.add_argument("--sample", required=True)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--params-json", required=True, help="the config's `synthetic` section")
    parser.add_argument("--classes-json", required=True)
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)

    try:
        cfg = json_arg(args.params_json, "--params-json")
        classes = classes_from_json(args.classes_json)
    except InputError as err:
        raise InputError(str(err), sample=args.sample) from err
    start = time.perf_counter()
    generate_sample(args.sample, cfg, classes, args.seed, args.outdir)
    print(f"synthesize: wrote {args.outdir}/{{sem,lom,labels}}.tif + transform.json for "
          f"{args.sample!r} (seed {args.seed}) in {time.perf_counter() - start:.2f} s",
          file=sys.stderr)
    return 0
