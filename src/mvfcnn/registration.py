"""Register the LOM onto the SEM grid: estimate the LOM -> SEM transform and warp the LOM.

Why this method. LOM and SEM are different modalities: in the LOM the second phase is dark on a
bright matrix, blurred, coloured and at a lower resolution; in the SEM it is bright and finely
textured on a darker matrix. Feature detectors (ORB/SIFT) find corners in the SEM texture that have
no LOM counterpart, so keypoint matching is unreliable here, and plain intensity correlation is
biased by what differs between the modalities (SEM substructure, per-island LOM tone and colour,
shading): on the synthetic data it left up to 1.1 px corner error. What both images share is the
layout of the two phases. So each image becomes a *soft phase map* on every pyramid level: grey,
block-averaged, lightly smoothed, then a sharp tanh step at its Otsu threshold (width 0.07 x the
gap between the two phase means) and a one-pixel smoothing that makes the comparison
differentiable with sub-pixel resolution. The maps are compared with the normalised
cross-correlation (NCC), whose sign absorbs the inverted contrast (detected once, at the coarse
level, then held). Measured corner RMS error on the default synthetic samples (768 px, 44 samples
over 4 seeds): worst 0.51 px, mean 0.22 px (intensity NCC: worst 1.13 px). Tiny images with only
a handful of islands are harder (256 px, 4-6 islands: mean 0.47 px, worst 1.36 px): the SEM
substructure (e.g. pearlite lamellae) makes each outline a little uncertain and few outlines
average little of it out.

1. initial guess: scale from the image-size ratio (how real LOM/SEM pairs are related too),
   centres aligned;
2. coarse search on the coarsest pyramid level (>= 128 px): log-polar phase correlation of the
   Fourier magnitudes proposes rotation/scale (magnitude spectra ignore translation and contrast
   sign); each candidate (with the 180 deg ambiguity, the inverse scale and the identity as
   fallbacks) gets its shift from a masked NCC over all shifts (Padfield's FFT form: pixels
   without LOM data are ignored, and unlike whitened phase correlation it stays reliable on
   smooth maps with few islands), and the candidate with the highest |NCC| wins;
3. refinement: the full model (translation | similarity | affine) maximises the NCC with
   L-BFGS-B and the exact gradient of the bilinear interpolant, level by level (coarse to fine)
   up to ``max_side``. The parameters are scaled so that one unit moves an image corner by
   about one pixel, which keeps the optimiser well conditioned.

Estimation only ever touches block-averaged copies (at most ``max_side`` on a side), built in row
strips from the (possibly memory-mapped) full images; :func:`warp_to_grid` warps the full LOM in
row strips, so a 7000x8000 pair needs only a few image copies of memory.

Conventions: points are ``(x, y) = (column, row)`` with pixel centres at integers; matrices are
3x3 homogeneous. The "translation" model keeps the size-ratio scale and estimates only a shift.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from mvfcnn.errors import InputError, warn
from mvfcnn.io import read_image, read_json, to_gray, write_image, write_json

log = logging.getLogger(__name__)

MODELS = ("translation", "similarity", "affine")
_COARSE_SIDE = 128  # the coarsest pyramid level is at least this large
_MAX_POINTS = 60_000  # NCC samples per level; more adds time, not accuracy
_STEP_WIDTH = 0.07  # tanh width of the phase map, as a fraction of the two phases' mean gap
#: a registered LOM covering less of the SEM than this is suspicious (a failed registration,
#: or a LOM of another area): warned about in the job log and the report, not an error
MIN_LOM_COVERAGE = 0.8


# --------------------------------------------------------------------------- small matrix helpers
def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scale_about(sx: float, sy: float | None = None) -> np.ndarray:
    """Level px -> source px of a k-block reduction (level pixel i covers k*i .. k*i+k-1)."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2], [0.0, 0.0, 1.0]])


def _rot_scale_about(angle: float, scale: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    lin = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return _translate(cx, cy) @ lin @ _translate(-cx, -cy)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` (x, y) points through a 3x3 homogeneous matrix."""
    pts = np.asarray(points, dtype=np.float64)
    out = pts @ matrix[:2, :2].T + matrix[:2, 2]
    return out


def corner_rms_error(estimated: np.ndarray, truth: np.ndarray, shape: tuple[int, ...]) -> float:
    """RMS distance (SEM px) between where the two LOM->SEM matrices put the SEM's 4 corners.

    Each SEM corner is taken back to the LOM with the true transform and forward again with the
    estimate, so the error is measured where it matters: on the SEM grid, at its worst places.
    """
    h, w = shape[:2]
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    lom_pts = apply_matrix(np.linalg.inv(np.asarray(truth, dtype=np.float64)), corners)
    moved = apply_matrix(np.asarray(estimated, dtype=np.float64), lom_pts)
    return float(np.sqrt(np.mean(np.sum((moved - corners) ** 2, axis=1))))


# --------------------------------------------------------------------------- image preparation
def _block_mean(image: np.ndarray, k: int, strip_blocks: int = 64) -> np.ndarray:
    """Grey float32 (values in dtype units) averaged over k x k blocks, computed in row strips.

    Strips keep memory at one small float32 strip even for a memory-mapped 7000x8000 image.
    """
    h, w = image.shape[:2]
    hk, wk = h // k, w // k
    if hk < 1 or wk < 1:
        raise ValueError(f"image {image.shape} too small for a {k}x block reduction")
    out = np.empty((hk, wk), dtype=np.float32)
    for b0 in range(0, hk, strip_blocks):
        b1 = min(hk, b0 + strip_blocks)
        strip = np.asarray(image[b0 * k:b1 * k, :wk * k], dtype=np.float32)
        if strip.ndim == 3:
            strip = to_gray(strip[..., :3]) if strip.shape[-1] >= 3 else strip[..., 0]
        out[b0:b1] = strip.reshape(b1 - b0, k, wk, k).mean(axis=(1, 3))
    return out


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma, mode="nearest") if sigma > 0.05 else image


@dataclass
class _Level:
    """One pyramid level: SEM and LOM representations and their pixel mappings."""

    f: int  # SEM px per level px
    k: int  # LOM px per LOM-level px
    sem: np.ndarray  # smoothed SEM on the level grid
    lom: np.ndarray  # smoothed LOM on its own (block-reduced) grid
    c_sem: np.ndarray  # level px -> SEM px
    c_lom: np.ndarray  # LOM-level px -> LOM px


def _phase_map(image: np.ndarray, presmooth: float, postsmooth: float) -> np.ndarray:
    """Soft two-phase map in [-1, 1]: smoothed grey through a tanh step at the Otsu threshold.

    This is the representation both modalities share: it discards what differs between them
    (SEM substructure, LOM colour and per-island tone, shading), keeps the object outlines, and
    the post-smoothing makes the NCC differentiable with sub-pixel resolution.
    """
    from skimage.filters import threshold_otsu

    smooth = _smooth(image, presmooth)
    try:
        t = float(threshold_otsu(smooth))
    except ValueError:  # constant image
        return np.zeros_like(smooth)
    lo, hi = smooth[smooth <= t], smooth[smooth > t]
    gap = float(hi.mean() - lo.mean()) if lo.size and hi.size else 0.0
    if gap <= 1e-6:
        return np.zeros_like(smooth)
    step = np.tanh((smooth - np.float32(t)) / np.float32(_STEP_WIDTH * gap))
    return _smooth(step.astype(np.float32), postsmooth)


def _levels(sem: np.ndarray, lom: np.ndarray, scale0: float, max_side: int) -> list[_Level]:
    """Pyramid from coarse to fine; the finest level has at most ``max_side`` px on a side."""
    big = max(sem.shape[:2])
    f_fine = max(1, math.ceil(big / max_side))
    factors = [f_fine]
    while len(factors) < 4 and big / (factors[-1] * 2) >= _COARSE_SIDE:
        factors.append(factors[-1] * 2)
    levels = []
    for f in reversed(factors):
        k = max(1, int(math.floor(f / scale0)))
        lom_px = f / (k * scale0)  # LOM-level px per level px
        # SEM: little pre-smoothing keeps its sharp outlines (measured: 0.7 level px beats 1-3 px
        # on the synthetic set); the sharp tanh step then removes most of the substructure.
        sem_l = _phase_map(_block_mean(sem, f), max(0.7, 0.25 * scale0 / f), 1.0)
        lom_l = _phase_map(_block_mean(lom, k), max(0.25, 0.5 * lom_px), max(0.5, lom_px))
        levels.append(_Level(f, k, sem_l, lom_l, _scale_about(f), _scale_about(k)))
    return levels


# --------------------------------------------------------------------------- NCC objective
class _Objective:
    """-sign * NCC(SEM level, LOM sampled through H0 @ Delta(p)) and its analytic gradient.

    Delta(p) is a small level-grid transform about the image centre whose parameters are scaled
    so one unit moves a corner by about one level pixel (well-conditioned for L-BFGS-B).
    """

    def __init__(self, level: _Level, h0: np.ndarray, model: str, sign: float,
                 step: int = 1) -> None:
        self.level, self.h0, self.model, self.sign = level, h0, model, sign
        hl, wl = level.sem.shape
        self.cx, self.cy = (wl - 1) / 2, (hl - 1) / 2
        self.radius = max(1.0, math.hypot(self.cx, self.cy))
        ys, xs = np.mgrid[0:hl:step, 0:wl:step]
        xs, ys = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
        valid = _inside(h0, xs, ys, level.lom.shape, margin=0.03)
        if valid.sum() < 100:
            raise ValueError("LOM and SEM barely overlap under the current estimate")
        self.xs, self.ys = xs[valid] - self.cx, ys[valid] - self.cy
        f = level.sem[::step, ::step].ravel()[valid].astype(np.float64)
        f = f - f.mean()
        norm = np.linalg.norm(f)
        if norm < 1e-9:
            raise ValueError("SEM has no contrast in the overlap")
        self.f = f / norm

    @property
    def n_params(self) -> int:
        return {"translation": 2, "similarity": 4, "affine": 6}[self.model]

    def delta(self, p: np.ndarray) -> np.ndarray:
        r = self.radius
        lin = np.eye(3)
        if self.model == "similarity":
            s, a = math.exp(p[2] / r), p[3] / r
            lin[:2, :2] = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        elif self.model == "affine":
            lin[:2, :2] += np.array([[p[2], p[3]], [p[4], p[5]]]) / r
        return (_translate(self.cx + p[0], self.cy + p[1]) @ lin
                @ _translate(-self.cx, -self.cy))

    def _sample(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.h0 @ self.delta(p)
        xs, ys = self.xs + self.cx, self.ys + self.cy
        qx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        qy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        return _bilinear(self.level.lom, qx, qy)

    def __call__(self, p: np.ndarray) -> tuple[float, np.ndarray]:
        val, gx, gy = self._sample(p)
        mc = val - val.mean()
        nm = np.linalg.norm(mc)
        if nm < 1e-12:
            return 0.0, np.zeros_like(p)
        ncc = float(self.f @ mc) / nm
        w = (self.f - ncc * mc / nm) / nm  # d ncc / d sample
        # Chain rule: sample -> LOM-level coords q = H0 Delta(p) u -> parameters.
        h = self.h0
        a = w * (gx * h[0, 0] + gy * h[1, 0])  # weight of d(Delta_x)/dp
        b = w * (gx * h[0, 1] + gy * h[1, 1])  # weight of d(Delta_y)/dp
        grad = np.empty(self.n_params)
        grad[0], grad[1] = a.sum(), b.sum()
        r = self.radius
        if self.model == "similarity":
            s, ang = math.exp(p[2] / r), p[3] / r
            c, sn = math.cos(ang), math.sin(ang)
            rx, ry = c * self.xs - sn * self.ys, sn * self.xs + c * self.ys  # R(u - c)
            grad[2] = s / r * (a @ rx + b @ ry)
            grad[3] = s / r * (a @ -ry + b @ rx)  # R'(u - c) = (-ry, rx)
        elif self.model == "affine":
            grad[2], grad[3] = a @ self.xs / r, a @ self.ys / r
            grad[4], grad[5] = b @ self.xs / r, b @ self.ys / r
        return -self.sign * ncc, -self.sign * grad


def _bilinear(image: np.ndarray, qx: np.ndarray, qy: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear samples and their exact x/y derivatives (points clamped into the image).

    The exact derivative of the interpolant (not a finite-difference image gradient) keeps the
    optimiser's line searches consistent, which matters for the last tenth of a pixel.
    """
    h, w = image.shape
    qx = np.clip(qx, 0.0, w - 1.000001)
    qy = np.clip(qy, 0.0, h - 1.000001)
    x0 = qx.astype(np.intp)
    y0 = qy.astype(np.intp)
    fx, fy = qx - x0, qy - y0
    flat = image.ravel()
    i00 = y0 * w + x0
    v00, v01 = flat[i00].astype(np.float64), flat[i00 + 1].astype(np.float64)
    v10, v11 = flat[i00 + w].astype(np.float64), flat[i00 + w + 1].astype(np.float64)
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    dx = (v01 - v00) + fy * ((v11 - v10) - (v01 - v00))
    return top + fy * (bottom - top), dx, bottom - top


def _inside(h: np.ndarray, xs: np.ndarray, ys: np.ndarray, shape: tuple[int, ...],
            margin: float = 0.0) -> np.ndarray:
    qx = h[0, 0] * xs + h[0, 1] * ys + h[0, 2]
    qy = h[1, 0] * xs + h[1, 1] * ys + h[1, 2]
    mh, mw = margin * shape[0] + 0.5, margin * shape[1] + 0.5
    return (qx >= mw) & (qx <= shape[1] - 1 - mw) & (qy >= mh) & (qy <= shape[0] - 1 - mh)


def _refine(level: _Level, g: np.ndarray, model: str, sign: float) -> tuple[np.ndarray, float]:
    """Maximise sign*NCC over ``model`` at one level; returns the new SEM->LOM matrix and NCC."""
    h0 = np.linalg.inv(level.c_lom) @ g @ level.c_sem
    step = max(1, int(math.sqrt(level.sem.size / _MAX_POINTS)))
    obj = _Objective(level, h0, model, sign, step=step)
    res = optimize.minimize(obj, np.zeros(obj.n_params), jac=True, method="L-BFGS-B",
                            options={"maxiter": 200, "gtol": 1e-6, "ftol": 1e-9})
    h = h0 @ obj.delta(res.x)
    return level.c_lom @ h @ np.linalg.inv(level.c_sem), -float(res.fun)


# --------------------------------------------------------------------------- coarse search
def _resample(image: np.ndarray, h: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """``image`` sampled at ``h @ (x, y)`` for every pixel of ``shape``, plus a validity mask."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    qx = h[0, 0] * xs + h[0, 1] * ys + h[0, 2]
    qy = h[1, 0] * xs + h[1, 1] * ys + h[1, 2]
    out = ndimage.map_coordinates(image, [qy, qx], order=1, mode="nearest")
    valid = (qx >= 0) & (qx <= image.shape[1] - 1) & (qy >= 0) & (qy <= image.shape[0] - 1)
    return out.astype(np.float32), valid


def _log_polar_candidates(ref: np.ndarray, mov: np.ndarray) -> tuple[float, float]:
    """Rotation (rad) and scale between two same-size images from their Fourier magnitudes."""
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    side = min(ref.shape)
    y0, x0 = (ref.shape[0] - side) // 2, (ref.shape[1] - side) // 2
    mags = []
    for img in (ref, mov):
        crop = img[y0:y0 + side, x0:x0 + side].astype(np.float64)
        band = difference_of_gaussians(crop, 1, side / 16) * window("hann", crop.shape)
        mags.append(np.abs(np.fft.fftshift(np.fft.fft2(band))))
    radius = side // 2
    centre = (side // 2, side // 2)  # the DC term after fftshift
    polar = [warp_polar(m, center=centre, radius=radius, output_shape=(360, side), scaling="log",
                        order=1)[:180] for m in mags]
    shift, _, _ = phase_cross_correlation(polar[0], polar[1], upsample_factor=10,
                                          normalization=None)
    angle = math.radians(shift[0])  # one row per degree
    scale = math.exp(shift[1] / (side / math.log(radius)))
    return angle, scale


def _masked_ncc_shift(ref: np.ndarray, ref_valid: np.ndarray, mov: np.ndarray,
                      mov_valid: np.ndarray, min_overlap: float = 0.5,
                      ) -> tuple[tuple[float, float], float]:
    """Shift ``s`` (dy, dx) with ref(u) ~ +-mov(u - s), by masked NCC over all shifts.

    Padfield's masked normalised cross-correlation, computed with FFTs: unlike phase
    correlation it ignores pixels without data, does not whiten (which amplifies noise in
    smooth maps with few objects) and returns a real NCC, so candidates compare fairly. Shifts
    whose overlap is below ``min_overlap`` of the smaller valid area are not considered.
    """
    from scipy import fft

    h, w = ref.shape
    shape = (fft.next_fast_len(2 * h - 1), fft.next_fast_len(2 * w - 1))
    mr, mm = ref_valid.astype(np.float64), mov_valid.astype(np.float64)
    f, g = ref * mr, mov * mm

    def spectrum(a: np.ndarray) -> np.ndarray:
        return fft.rfft2(a, shape)

    def corr(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
        return fft.irfft2(fa * np.conj(fb), shape)

    r_m, r_f, r_ff = spectrum(mr), spectrum(f), spectrum(f * f)
    m_m, m_g, m_gg = spectrum(mm), spectrum(g), spectrum(g * g)
    n = np.rint(corr(r_m, m_m))
    sf, sg = corr(r_f, m_m), corr(r_m, m_g)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = corr(r_f, m_g) - sf * sg / n
        den = (corr(r_ff, m_m) - sf * sf / n) * (corr(r_m, m_gg) - sg * sg / n)
        ncc = num / np.sqrt(den)
    enough = n >= min_overlap * min(mr.sum(), mm.sum())
    ncc = np.where(enough & (den > 1e-9 * n * n) & np.isfinite(ncc), ncc, 0.0)
    iy, ix = np.unravel_index(int(np.argmax(np.abs(ncc))), ncc.shape)
    peak = float(ncc[iy, ix])

    def vertex(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.5 * (a - c) / d if abs(d) > 1e-12 else 0.0

    mag = np.abs(ncc)
    dy = vertex(mag[iy - 1, ix], mag[iy, ix], mag[(iy + 1) % shape[0], ix])
    dx = vertex(mag[iy, ix - 1], mag[iy, ix], mag[iy, (ix + 1) % shape[1]])
    sy = iy if iy <= shape[0] // 2 else iy - shape[0]
    sx = ix if ix <= shape[1] // 2 else ix - shape[1]
    return (sy + float(np.clip(dy, -0.5, 0.5)), sx + float(np.clip(dx, -0.5, 0.5))), peak


def _coarse(level: _Level, g0: np.ndarray, model: str) -> tuple[np.ndarray, float]:
    """Best coarse SEM->LOM matrix and the contrast sign, from rotation/scale/shift candidates."""
    shape = level.sem.shape
    h0 = np.linalg.inv(level.c_lom) @ g0 @ level.c_sem  # level px -> LOM-level px
    mov, valid = _resample(level.lom, h0, shape)
    if valid.mean() < 0.2:
        raise ValueError("the LOM covers too little of the SEM under the size-ratio guess")
    cx, cy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
    candidates = {(0.0, 1.0)}
    if model != "translation":
        try:
            angle, scale = _log_polar_candidates(level.sem - level.sem.mean(),
                                                 np.where(valid, mov, mov[valid].mean()))
        except Exception:  # noqa: BLE001 - the identity candidate remains
            angle, scale = 0.0, 1.0
        if 0.5 < scale < 2.0:
            for a in (angle, -angle, angle + math.pi, -angle + math.pi):
                for s in (scale, 1 / scale, 1.0):
                    candidates.add((a, s))
        candidates.add((math.pi, 1.0))
    sem_valid = np.ones(shape, dtype=bool)
    best: tuple[float, np.ndarray] | None = None
    for angle, scale in sorted(candidates):
        a = _rot_scale_about(angle, scale, cx, cy)  # level px -> resampled-LOM px
        cand, cvalid = _resample(mov, a, shape)
        cvalid &= _resample(valid.astype(np.float32), a, shape)[0] > 0.99
        if cvalid.mean() < 0.2:
            continue
        (sy, sx), score = _masked_ncc_shift(level.sem, sem_valid, cand, cvalid)
        if best is None or abs(score) > abs(best[0]):
            h = h0 @ a @ _translate(-sx, -sy)
            best = (score, level.c_lom @ h @ np.linalg.inv(level.c_sem))
    if best is None or best[0] == 0.0:
        raise ValueError("no rotation/shift candidate overlaps the SEM")
    return best[1], math.copysign(1.0, best[0])


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 1e-12 else 0.0


# --------------------------------------------------------------------------- public API
class NoContrastError(ValueError):
    """One image is (nearly) uniform: there is nothing to register on."""

    def __init__(self, which: str) -> None:
        super().__init__(f"the {which.upper()} image has no contrast (uniform): nothing to "
                         "register on")
        self.which = which


@dataclass
class Registration:
    """Estimated LOM -> SEM matrix with its similarity scores on the finest level."""

    matrix: np.ndarray
    score_before: float
    score_after: float
    contrast_sign: float


def register(sem: np.ndarray, lom: np.ndarray, *, model: str = "similarity",
             max_side: int = 1024, scale_guess: float | None = None) -> Registration:
    """Estimate the LOM -> SEM transform and score it (see the module docstring for the method).

    ``scale_guess`` (SEM px per LOM px) defaults to the image-size ratio.
    """
    if model not in MODELS:
        raise ValueError(f"unknown registration model {model!r}; expected one of {MODELS}")
    hs, ws = sem.shape[:2]
    hl, wl = lom.shape[:2]
    s0 = float(scale_guess) if scale_guess else math.sqrt((hs * ws) / (hl * wl))
    # SEM px -> LOM px: centres aligned, size-ratio scale, no rotation.
    g = (_translate((wl - 1) / 2, (hl - 1) / 2) @ np.diag([1 / s0, 1 / s0, 1.0])
         @ _translate(-(ws - 1) / 2, -(hs - 1) / 2))
    levels = _levels(sem, lom, s0, max_side)
    for which, image in (("sem", levels[0].sem), ("lom", levels[0].lom)):
        if float(image.std()) < 1e-6:
            raise NoContrastError(which)
    fine = levels[-1]
    g_init = g.copy()
    g, sign = _coarse(levels[0], g, model)
    for i, level in enumerate(levels):
        # Affine's extra freedom is only trusted once the similarity has settled (finer levels).
        lvl_model = model if model != "affine" or i >= len(levels) - 2 else "similarity"
        if model == "affine" and lvl_model == "affine":
            g, _ = _refine(level, g, "similarity", sign)
        g, _ = _refine(level, g, lvl_model, sign)
    before = _level_score(fine, g_init, sign)
    after = _level_score(fine, g, sign)
    return Registration(np.linalg.inv(g), before, after, sign)


def _level_score(level: _Level, g: np.ndarray, sign: float) -> float:
    """sign * NCC on the finest level where the LOM covers the SEM (1 = identical layout)."""
    h = np.linalg.inv(level.c_lom) @ g @ level.c_sem
    sampled, valid = _resample(level.lom, h, level.sem.shape)
    if valid.sum() < 100:
        return 0.0
    return sign * _ncc(level.sem[valid], sampled[valid])


def estimate_transform(sem: np.ndarray, lom: np.ndarray, *, model: str = "similarity",
                       max_side: int = 1024) -> np.ndarray:
    """3x3 matrix mapping LOM (x, y, 1) pixel coordinates to SEM pixel coordinates."""
    return register(sem, lom, model=model, max_side=max_side).matrix


def default_fill(lom: np.ndarray) -> np.ndarray:
    """Per-channel median of the LOM: the matrix, which covers most of a micrograph.

    Filling the no-data border with the matrix value keeps it from becoming second phase.
    """
    sub = np.asarray(lom[::8, ::8])
    sub = sub.reshape(-1, sub.shape[-1]) if sub.ndim == 3 else sub.reshape(-1, 1)
    return np.median(sub, axis=0)


def warp_to_grid(lom: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...], *,
                 fill: Any = None, strip_rows: int = 512) -> np.ndarray:
    """Warp the LOM onto the SEM grid ``shape[:2]`` (bilinear), in row strips, keeping channels.

    Strips bound the float32 scratch memory to one strip, so a 7000x8000 output costs the
    output itself plus one contiguous channel of the input.
    """
    out_h, out_w = int(shape[0]), int(shape[1])
    g = np.linalg.inv(np.asarray(matrix, dtype=np.float64))  # SEM (x, y) -> LOM (x, y)
    rc = np.array([[g[1, 1], g[1, 0]], [g[0, 1], g[0, 0]]])  # (row, col) form
    fill = np.atleast_1d(default_fill(lom) if fill is None else np.asarray(fill, np.float64))
    channels = lom.shape[2] if lom.ndim == 3 else 1
    out = np.empty((out_h, out_w, channels) if lom.ndim == 3 else (out_h, out_w), dtype=lom.dtype)
    if np.issubdtype(lom.dtype, np.integer):
        lo, hi = np.iinfo(lom.dtype).min, np.iinfo(lom.dtype).max
    else:
        lo, hi = -np.inf, np.inf
    for c in range(channels):
        chan = np.ascontiguousarray(lom[..., c] if lom.ndim == 3 else lom)
        cval = float(fill[min(c, fill.size - 1)])
        for r0 in range(0, out_h, strip_rows):
            r1 = min(out_h, r0 + strip_rows)
            offset = np.array([g[1, 1] * r0 + g[1, 2], g[0, 1] * r0 + g[0, 2]])
            strip = ndimage.affine_transform(chan, rc, offset=offset, output_shape=(r1 - r0, out_w),
                                             output=np.float32, order=1, mode="constant",
                                             cval=cval)
            if np.issubdtype(lom.dtype, np.integer):
                np.rint(strip, out=strip)
            np.clip(strip, lo, hi, out=strip)
            if lom.ndim == 3:
                out[r0:r1, :, c] = strip
            else:
                out[r0:r1] = strip
        del chan
    return out


def footprint(matrix: np.ndarray, lom_shape: tuple[int, ...], shape: tuple[int, ...], *,
              strip_rows: int = 512) -> np.ndarray:
    """Pixels of the SEM grid ``shape`` where the warped LOM has data (row strips, float32)."""
    g = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    h, w = int(shape[0]), int(shape[1])
    lh, lw = int(lom_shape[0]), int(lom_shape[1])
    out = np.empty((h, w), dtype=bool)
    xs = np.arange(w, dtype=np.float32)
    for r0 in range(0, h, strip_rows):
        ys = np.arange(r0, min(h, r0 + strip_rows), dtype=np.float32)[:, None]
        qx = np.float32(g[0, 0]) * xs + np.float32(g[0, 1]) * ys + np.float32(g[0, 2])
        qy = np.float32(g[1, 0]) * xs + np.float32(g[1, 1]) * ys + np.float32(g[1, 2])
        out[r0:r0 + ys.shape[0]] = ((qx >= -0.5) & (qx <= lw - 0.5) & (qy >= -0.5)
                                    & (qy <= lh - 0.5))
    return out


def read_warp_metadata(path: str) -> dict[str, Any] | None:
    """The transform stored in a registered LOM TIFF by :func:`cli` (None if absent)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.shaped_metadata
    except Exception:  # noqa: BLE001 - not ours / not a TIFF: simply no footprint
        return None
    if not meta or "lom_to_sem" not in meta[0] or "lom_shape" not in meta[0]:
        return None
    return dict(meta[0])


# --------------------------------------------------------------------------- CLI
def _params(text: str, sample: str) -> dict[str, Any]:
    try:
        params = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise InputError(f"--params-json is not valid JSON ({err})", sample=sample) from err
    params = {"model": "similarity", "max_side": 1024, "max_rms_error_px": 1.0, **params}
    if params["model"] not in MODELS:
        raise InputError(f"registration.model must be one of {list(MODELS)}, got "
                         f"{params['model']!r}", sample=sample)
    return params


def read_truth(path: str, sample: str) -> np.ndarray:
    """The true LOM -> SEM matrix of a synthetic sample (``transform.json``, key lom_to_sem)."""

    try:
        data = read_json(path)
    except InputError as err:  # read_json does not know the sample
        raise InputError(str(err).split(": ", 1)[-1], sample=sample, path=path) from err
    try:
        matrix = np.asarray(data["lom_to_sem"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError("no numeric 'lom_to_sem' matrix", sample=sample, path=path) from err
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise InputError(f"'lom_to_sem' must be a finite 3x3 matrix, got shape {matrix.shape}",
                         sample=sample, path=path)
    return matrix


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mvfcnn register", description=__doc__.split("\n")[0])
    parser.add_argument("--sample", required=True)
    parser.add_argument("--sem", required=True)
    parser.add_argument("--lom", required=True)
    parser.add_argument("--truth", help="transform.json with the true 'lom_to_sem' matrix")
    parser.add_argument("--params-json", default="{}", help="the config's registration section")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-lom", required=True)
    args = parser.parse_args(argv)
    _setup_logging()
    sample = args.sample
    params = _params(args.params_json, sample)
    sem = read_image(args.sem, sample=sample, gray=True, micrograph=True)
    lom = read_image(args.lom, sample=sample, micrograph=True)
    truth = read_truth(args.truth, sample) if args.truth else None
    if min(lom.shape[:2]) < 16 or min(sem.shape[:2]) < 16:
        raise InputError(f"image too small to register (SEM {sem.shape}, LOM {lom.shape})",
                         sample=sample, path=args.lom)
    try:
        reg = register(sem, lom, model=params["model"], max_side=int(params["max_side"]))
    except NoContrastError as err:
        raise InputError(str(err), sample=sample,
                         path=args.sem if err.which == "sem" else args.lom) from err
    except ValueError as err:
        raise InputError(f"registration failed: {err}", sample=sample, path=args.lom) from err
    report: dict[str, Any] = {
        "sample": sample,
        "model": params["model"],
        "matrix": reg.matrix.tolist(),
        "score_before": round(reg.score_before, 6),
        "score_after": round(reg.score_after, 6),
        "contrast": "inverted" if reg.contrast_sign < 0 else "same",
        "sem_shape": list(sem.shape[:2]),
        "lom_shape": list(lom.shape[:2]),
        "coverage": round(float(footprint(reg.matrix, lom.shape, sem.shape).mean()), 6),
        "warnings": [],
    }
    if report["coverage"] < MIN_LOM_COVERAGE:
        report["warnings"].append(warn(
            "register", f"the registered LOM covers only {100 * report['coverage']:.1f} % of the "
            f"SEM (< {100 * MIN_LOM_COVERAGE:.0f} %): registration probably failed, or the LOM "
            "shows another area", sample=sample, path=args.lom))
    if truth is not None:
        rms = corner_rms_error(reg.matrix, truth, sem.shape)
        limit = float(params["max_rms_error_px"])
        report.update(rms_error_px=round(rms, 4), truth_matrix=truth.tolist(),
                      max_rms_error_px=limit, passed=bool(rms <= limit))
        if rms > limit:
            report["warnings"].append(warn(
                "register", f"registration corner RMS error {rms:.2f} px exceeds the limit "
                f"{limit:.2f} px (outputs written; check them)", sample=sample, path=args.lom))
        else:
            log.info("sample %r: corner RMS error %.3f px", sample, rms)
    log.info("sample %r: NCC %.3f -> %.3f", sample, reg.score_before, reg.score_after)
    warped = warp_to_grid(lom, reg.matrix, sem.shape)
    # The transform travels with the image, so masking can tell "no LOM data" from matrix.
    write_image(args.out_lom, warped, metadata={"sample": sample, "lom_to_sem": reg.matrix.tolist(),
                                                "lom_shape": list(lom.shape[:2])})
    write_json(args.out_json, report)
    return 0
