"""Object features for the SVM baselines: DeCAF (VGG19 fc7) and a hand-crafted set.

DeCAF (§4.3.2): each warped crop, grey repeated to 3 channels and ImageNet-normalised, goes
through VGG19 up to fc7 (post-ReLU) -> 4096 float32 values.

Hand-crafted (a stand-in for Pauly et al. 2016, whose exact feature list is not published in
reusable form): computed on the UNWARPED object -- its own mask (the object's pixels in the
objects id image, inside its bounding box) and its grey values (masked SEM, or grey registered
LOM) -- so resizing cannot distort it. In order (``HANDCRAFTED_NAMES``):

* morphology (skimage regionprops; pixel units): area, log area, perimeter, convex area,
  equivalent diameter, major and minor axis length, minor/major ratio, eccentricity, solidity,
  extent, circularity 4*pi*A/P^2, max Feret diameter, Euler number (14);
* intensity of the object's pixels in [0, 1]: mean, std, 10th/50th/90th percentile (5);
* GLCM (grey levels quantised to ``glcm_levels``, only pairs with both pixels inside the object,
  symmetric, distances ``glcm_distances`` x angles 0/45/90/135 deg): contrast, homogeneity,
  energy, correlation -- for each distance the mean and the range over the 4 angles (the
  rotation-invariant Haralick summary): 4 x 2 x 2 = 16 for two distances;
* uniform LBP (P=``lbp_points``, R=``lbp_radius``) histogram over the object's interior pixels,
  normalised (P + 2 = 10 bins);
* gradients (Sobel): mean magnitude, global orientation coherence ((l1 - l2) / (l1 + l2))^2 of
  the object's summed structure tensor, and the mean local coherence (tensor smoothed with
  sigma 2 px) (3).

48 features with the defaults; non-finite values (e.g. correlation of a flat object) become 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mvfcnn.core.progress import progress as _progress
from mvfcnn.core.settings import with_defaults

GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
GLCM_ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)
MORPHOLOGY_NAMES = (
    "area", "log_area", "perimeter", "convex_area", "equivalent_diameter", "major_axis",
    "minor_axis", "axis_ratio", "eccentricity", "solidity", "extent", "circularity",
    "feret_max", "euler_number",
)
INTENSITY_NAMES = ("mean", "std", "p10", "p50", "p90")
GRADIENT_NAMES = ("gradient_mean", "coherence_global", "coherence_local")


def handcrafted_names(params: dict[str, Any] | None = None) -> list[str]:
    """Column names of :func:`handcrafted_features`, in order."""
    p = with_defaults(("baselines", "handcrafted"), params)
    names = list(MORPHOLOGY_NAMES) + [f"intensity_{n}" for n in INTENSITY_NAMES]
    for prop in GLCM_PROPS:
        for d in p["glcm_distances"]:
            names += [f"glcm_{prop}_d{d}_mean", f"glcm_{prop}_d{d}_range"]
    names += [f"lbp_{i}" for i in range(int(p["lbp_points"]) + 2)]
    return names + list(GRADIENT_NAMES)


def _morphology(mask: np.ndarray) -> list[float]:
    from skimage.measure import regionprops

    props = regionprops(mask.astype(np.uint8))[0]
    area = float(props.area)
    perimeter = float(props.perimeter)
    major, minor = float(props.axis_major_length), float(props.axis_minor_length)
    return [
        area, math.log(area), perimeter, float(props.area_convex),
        float(props.equivalent_diameter_area), major, minor, minor / major if major > 0 else 1.0,
        float(props.eccentricity), float(props.solidity), float(props.extent),
        4 * math.pi * area / perimeter**2 if perimeter > 0 else 1.0,
        float(props.feret_diameter_max), float(props.euler_number),
    ]


def _glcm(grey: np.ndarray, mask: np.ndarray, levels: int,
          distances: Sequence[int]) -> list[float]:
    """GLCM props over pairs of object pixels only: level 0 marks 'outside' and is cut away."""
    from skimage.feature import graycomatrix, graycoprops

    quant = np.zeros(grey.shape, dtype=np.uint8)
    quant[mask] = 1 + (grey[mask].astype(np.int32) * levels // 256).astype(np.uint8)
    glcm = graycomatrix(quant, distances=list(distances), angles=list(GLCM_ANGLES),
                        levels=levels + 1, symmetric=True, normed=False)[1:, 1:]
    empty = glcm.sum(axis=(0, 1)) == 0  # (n_distances, n_angles): no inside pair at all
    values = []
    for prop in GLCM_PROPS:
        with np.errstate(divide="ignore", invalid="ignore"):
            table = graycoprops(glcm, prop).astype(np.float64)
        table[empty] = np.nan
        for row in table:
            finite = row[np.isfinite(row)]
            values += ([float(finite.mean()), float(finite.max() - finite.min())]
                       if finite.size else [0.0, 0.0])
    return values


def _interior(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(mask)
    return inner if inner.any() else mask


def _lbp(grey: np.ndarray, mask: np.ndarray, points: int, radius: float) -> list[float]:
    from skimage.feature import local_binary_pattern

    codes = local_binary_pattern(grey, points, radius, method="uniform")
    hist = np.bincount(codes[_interior(mask)].astype(np.int64), minlength=points + 2)
    return (hist[: points + 2] / max(1, hist.sum())).tolist()


def _coherence(jxx: np.ndarray, jxy: np.ndarray, jyy: np.ndarray) -> np.ndarray:
    trace = jxx + jyy
    diff = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)  # l1 - l2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(trace > 1e-12, (diff / np.where(trace > 1e-12, trace, 1)) ** 2, 0.0)


def _gradients(unit: np.ndarray, mask: np.ndarray) -> list[float]:
    from scipy import ndimage as ndi

    gy, gx = ndi.sobel(unit, axis=0), ndi.sobel(unit, axis=1)
    inner = _interior(mask)
    gxx, gxy, gyy = gx * gx, gx * gy, gy * gy
    global_coh = _coherence(*(np.array(g[inner].sum()) for g in (gxx, gxy, gyy)))
    local = _coherence(*(ndi.gaussian_filter(g, 2.0) for g in (gxx, gxy, gyy)))
    return [float(np.sqrt(gxx + gyy)[inner].mean()), float(global_coh), float(local[inner].mean())]


def handcrafted_features(grey: np.ndarray, mask: np.ndarray,
                         params: dict[str, Any] | None = None) -> np.ndarray:
    """Feature vector (see the module docstring) of one object.

    ``grey``: uint8 bounding-box crop of the object's image; ``mask``: bool, same shape, True on
    the object's own pixels (not its neighbours').
    """
    p = with_defaults(("baselines", "handcrafted"), params)
    grey = np.asarray(grey)
    mask = np.asarray(mask, dtype=bool)
    if grey.shape != mask.shape or grey.ndim != 2:
        raise ValueError(f"grey {grey.shape} and mask {mask.shape} must be equal 2-D shapes")
    if not mask.any():
        raise ValueError("empty object mask")
    unit = grey.astype(np.float64) / 255.0
    pixels = unit[mask]
    values = _morphology(mask)
    values += [float(pixels.mean()), float(pixels.std()),
               *np.percentile(pixels, [10, 50, 90]).tolist()]
    values += _glcm(grey, mask, int(p["glcm_levels"]), p["glcm_distances"])
    values += _lbp(grey, mask, int(p["lbp_points"]), float(p["lbp_radius"]))
    values += _gradients(unit, mask)
    out = np.asarray(values, dtype=np.float32)
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)


def decaf_features(
    images: np.ndarray,
    *,
    pretrained: str = "none",
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
    extractor: Any = None,
    progress: bool = True,
) -> np.ndarray:
    """(N, 4096) float32 VGG19 fc7 features of (N, S, S) uint8 grey crops (S >= 32).

    ``extractor`` (a :func:`mvfcnn.models.vgg_classifier.vgg19_features` module, or any frozen
    module returning (B, D) features, e.g.
    :func:`mvfcnn.models.trunk_classifier.vgg16_trunk_features`: then (N, D)) is built from
    ``pretrained`` when not given. ``precision`` "auto" follows :mod:`mvfcnn.core.runtime`; "bf16"
    runs under CPU/CUDA autocast.
    """
    # lazy: torch only for the VGG19 features; cropping with handcrafted features stays torch-free
    import torch

    from mvfcnn.core.runtime import autocast, choose_precision
    from mvfcnn.models.preprocess import normalize_batch
    from mvfcnn.models.vgg_classifier import FC7_DIM, vgg19_features

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, S, S) uint8 crops, got {images.shape} {images.dtype}")
    if extractor is None:
        extractor = vgg19_features(pretrained=pretrained, progress=progress)
    extractor = extractor.to(device).eval()
    out = np.empty((len(images), int(getattr(extractor, "out_channels", FC7_DIM))),
                   dtype=np.float32)
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    resolved = choose_precision(precision, device).precision
    resolved = resolved if resolved in ("fp32", "bf16") else "fp32"
    starts = range(0, len(images), batch_size)
    # the progress line names what is extracted: VGG19 fc7, or the given extractor's features
    what = "fc7" if out.shape[1] == FC7_DIM else f"{out.shape[1]}-d"
    with torch.inference_mode():
        for start in _progress(starts, f"DeCAF {what} features", unit="batch",
                               enabled=progress):
            batch = torch.from_numpy(images[start:start + batch_size][:, None]).to(device)
            with autocast(device, resolved):
                feats = extractor(normalize_batch(batch))
            out[start:start + len(batch)] = feats.float().cpu().numpy()
    return out
