"""Sliding-window FCN inference with seamless stitching (paper §4.2, Figure 3).

The image is covered by ``tile_size`` windows that overlap by ``overlap`` pixels; the last row
and column of windows are moved flush against the image edge, so no padding is needed unless the
image is smaller than one window (then the window is filled by reflection and cropped back).
Each output pixel is taken from exactly one window: the one in which it lies farthest from the
window border, i.e. every window keeps its centre and gives up about overlap/2 pixels on each side
that touches another window (image-border sides keep their margin). No K x H x W score buffer is
allocated unless probabilities are requested; memory is bounded by one batch plus the output.

With ``fit_tiles`` each axis keeps its number of windows but shrinks the window to the smallest
size that still covers the axis with the requested overlap (rectangular windows, all the same
size): a 7000 px axis in 1500 px windows becomes 5 windows of 1480 px instead of 5 of 1500 px
with a 1400 px overlap at the far edge, and an image smaller than one window is run at its own
size instead of being reflected up to the window. On a CPU the network's cost is proportional to
the (padded) window area, so this removes work that the keep-centre stitching would discard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from mvfcnn.core.errors import InputError
from mvfcnn.core.io import to_uint8
from mvfcnn.core.progress import progress as _progress
from mvfcnn.core.settings import with_defaults

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_TILE = 32


class Tile(NamedTuple):
    """One window: its top-left corner (y, x) and the half-open region it keeps, in image px."""

    y: int
    x: int
    keep_y0: int
    keep_x0: int
    keep_y1: int
    keep_x1: int


def window_starts(length: int, size: int, step: int) -> list[int]:
    """Starts of ``size`` windows along an axis of ``length``: every ``step`` from 0, and the
    last one flush with the end (``length - size``); one window at 0 when the axis fits in it."""
    if length <= size:
        return [0]
    return list(range(0, length - size, step)) + [length - size]


def axis_windows(length: int, tile_size: int, overlap: int) -> list[tuple[int, int, int]]:
    """Windows along one axis as (start, keep_start, keep_stop).

    Starts step by ``tile_size - overlap``; the last start is ``length - tile_size`` (flush).
    Neighbouring windows split their common pixels at the midpoint, which is where a pixel's
    distance to the two window borders is equal.
    """
    if length < 1:
        raise InputError(f"image axis of length {length}")
    if tile_size < 1 or overlap < 0:
        raise InputError(f"need tile_size >= 1 and overlap >= 0, got tile_size={tile_size}, "
                         f"overlap={overlap}")
    if length <= tile_size:
        # one window: no neighbour to overlap, so a window fitted to a small or thin image
        # (smaller than the configured overlap) is fine
        return [(0, 0, length)]
    if overlap >= tile_size:
        raise InputError(f"need overlap < tile_size, got tile_size={tile_size}, "
                         f"overlap={overlap}")
    starts = window_starts(length, tile_size, tile_size - overlap)
    cuts = [0] + [(a + tile_size + b) // 2 for a, b in zip(starts, starts[1:], strict=False)]
    cuts.append(length)
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def fitted_size(length: int, tile_size: int, overlap: int) -> int:
    """Smallest window size that covers ``length`` with as many windows as ``tile_size`` needs.

    n windows of size s at stride s - overlap cover n*s - (n-1)*overlap pixels, so
    s = ceil((length + (n-1)*overlap) / n) <= tile_size. An axis shorter than one window gets a
    window of its own length (at least ``MIN_TILE`` or ``tile_size``, whichever is smaller).
    """
    n = len(axis_windows(length, tile_size, overlap))
    size = -(-(length + (n - 1) * overlap) // n)
    return min(tile_size, max(size, min(tile_size, MIN_TILE)))


def tile_shape(height: int, width: int, tile_size: int, overlap: int,
               fit: bool = False) -> tuple[int, int]:
    """(rows, columns) of every window: ``tile_size`` square, or fitted per axis (``fit``)."""
    if not fit:
        return tile_size, tile_size
    return fitted_size(height, tile_size, overlap), fitted_size(width, tile_size, overlap)


def tile_grid(height: int, width: int, tile_size: int, overlap: int, *,
              fit: bool = False) -> list[Tile]:
    """All windows in row-major order; their keep regions partition the image exactly."""
    th, tw = tile_shape(height, width, tile_size, overlap, fit)
    rows = axis_windows(height, th, overlap)
    cols = axis_windows(width, tw, overlap)
    return [Tile(y, x, ky0, kx0, ky1, kx1) for (y, ky0, ky1) in rows for (x, kx0, kx1) in cols]


def _default_preprocess() -> Callable:
    # lazy (here and below): torch; the report imports this module for its window maths only
    from mvfcnn.models.preprocess import normalize_batch

    return normalize_batch


def _read_tile(image: np.ndarray, tile: Tile, shape: tuple[int, int]) -> np.ndarray:
    """(h, w[, C]) window, reflection-padded at the bottom/right when the image is smaller."""
    th, tw = shape
    block = np.asarray(image[tile.y:tile.y + th, tile.x:tile.x + tw])
    pad_y, pad_x = th - block.shape[0], tw - block.shape[1]
    if pad_y or pad_x:
        widths = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (block.ndim - 2)
        block = np.pad(block, widths, mode="reflect")
    return to_uint8(block)  # 8-bit, converted exactly as the training tiles


def _batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    for start in range(0, len(tiles), batch_size):
        yield tiles[start:start + batch_size]


def predict_image(
    model,
    image: np.ndarray,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int,
    precision: str = "fp32",
    device: str = "cpu",
    tta_rotations: bool = False,
    tta_flips: bool = False,
    return_probs: bool = False,
    progress: bool = True,
    preprocess: Callable | None = None,
    fit_tiles: bool = False,
    channels_last: bool = True,
    timings: dict[str, float] | None = None,
    decision_offsets: Sequence[float] | None = None,
    second_phase_out: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Class map (H, W) uint8 of ``image`` (H, W) or (H, W, 3); with ``return_probs`` also
    (K, H, W) float16 softmax probabilities.

    ``model`` maps (B, 3, h, w) float -> (B, K, h, w) scores; it is switched to eval mode (and
    channels_last unless ``channels_last=False``) and moved to ``device``. ``preprocess`` turns a
    uint8 (B, C, h, w) tensor into the model's input (default:
    ``mvfcnn.models.preprocess.normalize_batch``). Windows are read lazily, so ``image`` may be
    a np.memmap. ``precision`` "auto" is resolved by :func:`mvfcnn.core.runtime.choose_precision`;
    "bf16"/"fp16" run under one torch.autocast context for the whole image, so the
    low-precision weight copies are made once, not once per batch.
    ``tta_rotations`` averages the softmax over the 4 right-angle rotations, ``tta_flips`` over
    the image and its mirror image; both: over all 8 symmetries of the square (each costs one
    forward pass per window, so 8x the network time; :func:`tta_scores`). ``fit_tiles``
    shrinks the windows to fit the image (see the module docstring). ``timings``, if given,
    receives the seconds spent reading, in the network and stitching, plus the window count
    and shape (for benchmarks). ``decision_offsets`` (K,) are added to each pixel's class
    log-probabilities before the argmax (:mod:`mvfcnn.inference.calibration`); the
    probabilities returned stay the network's. ``second_phase_out``, an (H, W) uint8 array, is
    filled with each pixel's most probable NON-matrix class (1..K-1, offsets included): what
    ``inference.object_vote: second_phase`` votes on, where every object is second phase by
    construction and the matrix score has nothing left to decide.
    """
    import torch  # lazy: torch, as above

    from mvfcnn.core.runtime import autocast, choose_precision, resolve_device
    from mvfcnn.models.vgg_trunk import fuse_conv_relu

    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if tile_size < MIN_TILE:
        raise InputError(f"tile_size must be >= {MIN_TILE}, got {tile_size}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise InputError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if preprocess is None:
        preprocess = _default_preprocess()
    device = str(resolve_device(device))
    height, width = image.shape[:2]
    if second_phase_out is not None and (second_phase_out.shape != (height, width)
                                         or second_phase_out.dtype != np.uint8):
        raise InputError(f"second_phase_out must be a ({height}, {width}) uint8 array, got "
                         f"{second_phase_out.shape} {second_phase_out.dtype}")
    shape = tile_shape(height, width, tile_size, overlap, fit_tiles)
    tiles = tile_grid(height, width, tile_size, overlap, fit=fit_tiles)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    clock = {"read": 0.0, "forward": 0.0, "stitch": 0.0}

    model.eval()
    model.to(device=device, memory_format=memory_format)
    # convolution + ReLU as one oneDNN op on CPU: the same scores, one pass less over memory
    net = fuse_conv_relu(model) if device == "cpu" else model
    choice = choose_precision(precision, device)
    offsets = (None if decision_offsets is None or not np.any(decision_offsets) else
               torch.as_tensor(np.asarray(decision_offsets, np.float32), device=device))
    # no_grad, not inference_mode: autocast caches its weight casts only outside inference mode
    amp = autocast(device, choice.precision, cpu_fp16=True)

    out = np.empty((height, width), dtype=np.uint8)
    probs: np.ndarray | None = None
    bar = _progress(len(tiles), "predict", unit="window", enabled=progress)

    with torch.no_grad(), amp:
        for group in _batches(tiles, batch_size):
            tick = time.perf_counter()
            blocks = np.stack([_read_tile(image, t, shape) for t in group])
            batch = torch.from_numpy(blocks)
            batch = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
            batch = preprocess(batch.to(device))
            batch = batch.contiguous(memory_format=memory_format)
            clock["read"] += time.perf_counter() - tick
            tick = time.perf_counter()
            if tta_rotations or tta_flips:
                scores = tta_scores(net, batch, rotations=tta_rotations, flips=tta_flips)
            elif return_probs:
                scores = torch.softmax(net(batch).float(), dim=1)
            else:
                scores = net(batch)
            _check_scores(scores, len(group), shape)
            probabilities = tta_rotations or tta_flips or return_probs
            labels = _decide(scores, offsets, probabilities=probabilities)
            labels = labels.to(torch.uint8).cpu().numpy()
            second = (None if second_phase_out is None else
                      _decide(scores, offsets, probabilities=probabilities, first=1)
                      .to(torch.uint8).cpu().numpy())
            clock["forward"] += time.perf_counter() - tick
            tick = time.perf_counter()
            soft = scores.to(torch.float16).cpu().numpy() if return_probs else None
            if soft is not None and probs is None:
                probs = np.empty((soft.shape[1], height, width), dtype=np.float16)
            for b, t in enumerate(group):
                dst = (slice(t.keep_y0, t.keep_y1), slice(t.keep_x0, t.keep_x1))
                src = (slice(t.keep_y0 - t.y, t.keep_y1 - t.y),
                       slice(t.keep_x0 - t.x, t.keep_x1 - t.x))
                out[dst] = labels[b][src]
                if second is not None and second_phase_out is not None:
                    second_phase_out[dst] = second[b][src]
                if soft is not None and probs is not None:
                    probs[:, dst[0], dst[1]] = soft[b, :, src[0], src[1]]
            clock["stitch"] += time.perf_counter() - tick
            bar.update(len(group))
    bar.close()
    if timings is not None:
        timings.update({f"{k}_s": v for k, v in clock.items()})
        timings.update({"tiles": len(tiles), "tile_h": shape[0], "tile_w": shape[1],
                        "precision": choice.precision, "precision_reason": choice.reason})
    if return_probs:
        return out, probs
    return out


def _decide(scores, offsets, *, probabilities: bool, first: int = 0):
    """The class of each pixel among classes ``first``.. : the argmax of the scores, or, with
    offsets, of the log-probabilities plus the offsets (logits differ from log-probabilities by
    a per-pixel constant, so logits take the offsets directly, and so does a subset of them)."""
    import torch

    if offsets is not None and offsets.numel() != scores.shape[1]:
        raise InputError(f"{offsets.numel()} class offsets for a model of {scores.shape[1]} "
                         f"classes")
    if offsets is not None:
        logs = torch.log(scores.float().clamp_min(1e-12)) if probabilities else scores.float()
        scores = logs + offsets.view(1, -1, 1, 1)
    return scores[:, first:].argmax(dim=1) + first if first else scores.argmax(dim=1)


def tta_transforms(rotations: bool, flips: bool) -> list[tuple[bool, int]]:
    """(mirror left-right, quarter turns) of each test-time view; (False, 0) is the image."""
    return [(f, r) for f in ((False, True) if flips else (False,))
            for r in (range(4) if rotations else (0,))]


def tta_scores(model, batch, *, rotations: bool, flips: bool):
    """Softmax probabilities (B, K, h, w) averaged over the test-time views of ``batch``.

    Each view is mirrored and/or rotated, scored, and mapped back before averaging, so a model
    that is equivariant to those symmetries gives exactly its plain softmax, and one that is not
    (a CNN's padding, its stride grid, texture direction) gets the consensus of the views.
    Views of a non-square window are still valid: the scores come back to the window's shape.
    """
    import torch

    views = tta_transforms(rotations, flips)
    total = None
    for flip, quarter in views:
        x = torch.flip(batch, (3,)) if flip else batch
        x = torch.rot90(x, quarter, (2, 3)) if quarter else x
        p = torch.softmax(model(x.contiguous(memory_format=_memory_format(batch))).float(),
                          dim=1)
        p = torch.rot90(p, -quarter, (2, 3)) if quarter else p
        p = torch.flip(p, (3,)) if flip else p
        total = p if total is None else total + p
    return total / float(len(views))


def _memory_format(batch):
    import torch

    return (torch.channels_last if batch.dim() == 4 and batch.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format)


def _check_scores(scores, batch: int, tile: tuple[int, int]) -> None:
    shape = tuple(scores.shape)
    if len(shape) != 4 or shape[0] != batch or shape[2:] != tuple(tile):
        raise ValueError(f"model returned scores of shape {shape}; expected "
                         f"({batch}, K, {tile[0]}, {tile[1]})")
    if shape[1] > 255:
        raise ValueError(f"model returned {shape[1]} classes; a uint8 class map holds <= 255")


def inference_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The config's ``inference`` section as :func:`predict_image` keyword arguments: the one
    translation every consumer (predict, figures, classify) uses, so none drops a setting;
    keys a partial section (an older bundle) lacks come from the schema."""

    params = with_defaults("inference", params)
    return {
        "tile_size": int(params["tile_size"]),
        "overlap": int(params["overlap"]),
        "batch_size": int(params["batch_size"]),
        "precision": str(params["precision"]),
        "tta_rotations": bool(params["tta_rotations"]),
        "tta_flips": bool(params["tta_flips"]),
        "fit_tiles": bool(params["fit_tiles"]),
    }
