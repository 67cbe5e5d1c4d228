"""The search behind :func:`mvfcnn.data.registration.register` (the method and why it is this one
are in that module's docstring): 3x3 transform helpers, soft phase maps on an image pyramid, the
NCC objective with its exact gradient, the log-polar + masked-NCC coarse search and the
L-BFGS-B refinement.
"""


from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from mvfcnn.core.io import to_gray

_COARSE_SIDE = 128  # the coarsest pyramid level is at least this large
_MAX_POINTS = 60_000  # NCC samples per level; more adds time, not accuracy
_STEP_WIDTH = 0.07  # tanh width of the phase map, as a fraction of the two phases' mean gap


# --------------------------------------------------------------------------- small matrix helpers
def translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scale_about(sx: float, sy: float | None = None) -> np.ndarray:
    """Level px -> source px of a k-block reduction (level pixel i covers k*i .. k*i+k-1)."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2], [0.0, 0.0, 1.0]])


def _rot_scale_about(angle: float, scale: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    lin = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return translate(cx, cy) @ lin @ translate(-cx, -cy)


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


def pyramid_levels(sem: np.ndarray, lom: np.ndarray, scale0: float, max_side: int) -> list[_Level]:
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
        return (translate(self.cx + p[0], self.cy + p[1]) @ lin
                @ translate(-self.cx, -self.cy))

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


def refine(level: _Level, g: np.ndarray, model: str, sign: float) -> tuple[np.ndarray, float]:
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


def coarse_search(level: _Level, g0: np.ndarray, model: str) -> tuple[np.ndarray, float]:
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
            h = h0 @ a @ translate(-sx, -sy)
            best = (score, level.c_lom @ h @ np.linalg.inv(level.c_sem))
    if best is None or best[0] == 0.0:
        raise ValueError("no rotation/shift candidate overlaps the SEM")
    return best[1], math.copysign(1.0, best[0])


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 1e-12 else 0.0


def level_score(level: _Level, g: np.ndarray, sign: float) -> float:
    """sign * NCC on the finest level where the LOM covers the SEM (1 = identical layout)."""
    h = np.linalg.inv(level.c_lom) @ g @ level.c_sem
    sampled, valid = _resample(level.lom, h, level.sem.shape)
    if valid.sum() < 100:
        return 0.0
    return sign * _ncc(level.sem[valid], sampled[valid])
