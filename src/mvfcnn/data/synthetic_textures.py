"""The second-phase textures of the synthetic dataset, one generator per style (martensite laths,
tempered laths with carbide dots, bainite dashes, pearlite lamellae), and which style a
configured class gets (by its position among the foreground classes).
"""


from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from mvfcnn.core.config import ClassSet

N_STYLES = 4  # martensite, tempered martensite, bainite, pearlite


def style_of(index: int, classes: ClassSet) -> tuple[int, int]:
    """(texture generator, variant) of a class: by position among the foreground classes."""
    position = classes.foreground.index(index)
    return position % N_STYLES, position // N_STYLES


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
