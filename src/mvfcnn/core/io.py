"""Image and table I/O: memory-mapped reads, atomic writes, clear errors on bad files.

Every writer goes through :func:`atomic_path`: data is written to a temporary file in the
destination folder and renamed into place, so an interrupted job never leaves a
half-written output that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mvfcnn.core.errors import InputError

TIFF_SUFFIXES = {".tif", ".tiff"}
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail before the work when ``path`` cannot be written (README: bad input stops before
    anything is written): an existing folder in its place, a file where a parent folder would
    be created, or a parent folder without write permission."""
    path = Path(path)
    if path.is_dir():
        raise InputError("cannot write the output: a folder of that name exists", path=path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create the output folder: {str(parent)!r} is a file",
                         path=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"no permission to write in {str(parent)!r}", path=path)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError("file not found", path=path) from err
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON ({err})", path=path) from err


def write_table(path: str | os.PathLike[str], frame: Any) -> None:
    """Write a pandas DataFrame as CSV (or TSV for ``.tsv``) atomically."""
    sep = "\t" if str(path).endswith(".tsv") else ","
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, sep=sep)


def read_tables(names: list[str], paths: list[str], *, what: str) -> dict[str, Any]:
    """``{name: DataFrame}`` of CSVs given as two parallel command-line lists (one per fold or
    stage); the error names the missing file, or the lists' lengths when they differ."""
    import pandas as pd

    if len(names) != len(paths):
        raise InputError(f"{len(names)} names but {len(paths)} {what}s")
    tables = {}
    for name, path in zip(names, paths, strict=True):
        if not Path(path).is_file():
            raise InputError(f"{what} not found", path=path)
        tables[name] = pd.read_csv(path)
    return tables


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_image(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    compression: str | None = "zlib",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write an image atomically: TIFF through tifffile (tiled when large), PNG through skimage."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            big = array.shape[0] * array.shape[1] > 4096 * 4096
            tifffile.imwrite(
                tmp,
                array,
                compression=compression,
                tile=(256, 256) if big and array.ndim == 2 else None,
                bigtiff=array.nbytes > 2**31,
                metadata=metadata,
            )
        else:
            from skimage import io as skio

            skio.imsave(tmp, array, check_contrast=False, extension=path.suffix)


#: Accepted pixel values, the one definition every reader goes through (:func:`check_pixels`):
#: integer images (bool, uint8, uint16, ...) span their bit depth, so any value is valid;
#: float images must lie in FLOAT_RANGE (a float SEM holding 0..255 would otherwise be read as
#: almost all white) unless the caller states the range; NaN and inf are never valid.
FLOAT_RANGE = (0.0, 1.0)
_STRIP_ROWS = 1024
#: Micrographs (``read_image(..., micrograph=True)``) are intensities, and the networks read an
#: integer micrograph by its bit depth (:func:`to_uint8`). That has a fixed white
#: level only for unsigned 8/16-bit data: signed and 32/64-bit integer micrographs are refused
#: (an int16 SEM holding -128..127 would be read as flat grey) unless their range is stated
#: (``value_range``, e.g. ``mvfcnn classify --float-range``), which rescales them to [0, 1].
MICROGRAPH_INTEGER_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
#: an 8/16-bit micrograph whose values span less than this share of its bit depth is read as
#: it is (bit depth, so every image of a dataset keeps one scale) with one warning line
LOW_RANGE_SHARE = 0.05


def _value_span(array: np.ndarray) -> tuple[float, float, bool]:
    """(min, max, all finite) in strips (bounded memory on a memory map)."""
    vmin, vmax = np.inf, -np.inf
    for r0 in range(0, array.shape[0], _STRIP_ROWS):
        strip = np.asarray(array[r0:r0 + _STRIP_ROWS])
        if np.issubdtype(strip.dtype, np.floating) and not np.isfinite(strip).all():
            return vmin, vmax, False
        vmin, vmax = min(vmin, float(strip.min())), max(vmax, float(strip.max()))
    return vmin, vmax, True


def check_micrograph_integers(array: np.ndarray, *, value_range: tuple[float, float] | None,
                              sample: str | None = None, path: object = None) -> str | None:
    """The integer rules of a micrograph (see MICROGRAPH_INTEGER_DTYPES): an InputError for a
    signed or wide integer type without a stated range, or values outside the stated range;
    the warning (logged, and returned) for an 8/16-bit image using < 5 % of its bit depth."""
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        return None
    vmin, vmax, _ = _value_span(array)
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if vmin < lo or vmax > hi:
            raise InputError(f"{array.dtype} pixel values span [{vmin:g}, {vmax:g}], outside "
                             f"the stated range [{lo:g}, {hi:g}]", sample=sample, path=path)
        return None
    if array.dtype not in MICROGRAPH_INTEGER_DTYPES:
        raise InputError(f"{array.dtype} micrograph (values {vmin:g}..{vmax:g}): signed and "
                         "32/64-bit integers have no fixed white level; store it as 8/16-bit "
                         "unsigned integers, or state its range (mvfcnn classify --float-range "
                         "LO HI)", sample=sample, path=path)
    full = float(np.iinfo(array.dtype).max)
    share = (vmax - vmin) / full
    if share >= LOW_RANGE_SHARE:
        return None
    where = " ".join(str(x) for x in ((f"sample {sample}:" if sample else None), path) if x)
    message = (f"{where} {array.dtype} micrograph uses {100 * share:.1f} % of its bit depth "
               f"(values {vmin:g}..{vmax:g} of 0..{full:g}); read by bit depth as every "
               "image is, so it looks nearly flat to the network: rescale the file, or state "
               "its range (mvfcnn classify --float-range LO HI)").strip()
    logging.getLogger(__name__).warning(message)
    return message


def check_pixels(array: np.ndarray, *, value_range: tuple[float, float] | None = None,
                 sample: str | None = None, path: object = None) -> None:
    """Raise :class:`InputError` unless the pixel type and values are accepted (FLOAT_RANGE)."""
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"unsupported pixel type {array.dtype} (expected 8/16-bit integers or "
                         f"floats in [{FLOAT_RANGE[0]:g}, {FLOAT_RANGE[1]:g}])", sample=sample,
                         path=path)
    lo, hi = FLOAT_RANGE if value_range is None else (float(value_range[0]),
                                                      float(value_range[1]))
    vmin, vmax, finite = _value_span(array)
    if not finite:
        raise InputError("pixel values include NaN or inf", sample=sample, path=path)
    if vmin < lo or vmax > hi:
        hint = ("store it as 8/16-bit integers or scale it to [0, 1]" if value_range is None
                else "check the stated range")
        raise InputError(f"{array.dtype} pixel values span [{vmin:g}, {vmax:g}], outside the "
                         f"accepted range [{lo:g}, {hi:g}] for float images; {hint}",
                         sample=sample, path=path)


def read_image(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    gray: bool = False,
    mmap: bool = True,
    value_range: tuple[float, float] | None = None,
    micrograph: bool = False,
) -> np.ndarray:
    """Read a 2-D (or RGB) image; memory-mapped when the TIFF is uncompressed and contiguous.

    ``gray=True`` turns RGB(A) into one channel: the channel itself when the three are equal
    (a grey SEM saved as RGB, e.g. a JPEG export), else the luminance in the file's dtype range.
    A single channel with or without alpha (H, W, 1|2) becomes (H, W). Pixel values are checked
    by :func:`check_pixels`; a float image in a stated ``value_range`` is rescaled to [0, 1].
    ``micrograph=True`` (intensities, not labels or ids) adds :func:`check_micrograph_integers`,
    and an integer image in a stated ``value_range`` is rescaled to [0, 1] too. Any failure
    is re-raised as :class:`InputError` naming the sample and the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", sample=sample, path=path)
    if path.is_dir():
        raise InputError("is a directory, not an image", sample=sample, path=path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            array = None
            if mmap:
                try:
                    array = tifffile.memmap(path, mode="r")
                except (ValueError, OSError, tifffile.TiffFileError):
                    array = None
            if array is None:
                array = tifffile.imread(path)
        else:
            from skimage import io as skio

            array = skio.imread(path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable file
        detail = " ".join(str(err).split())  # decoders write multi-line messages: keep one line
        raise InputError(f"cannot read image ({type(err).__name__}: {detail[:300]})",
                         sample=sample, path=path) from err
    array = np.asarray(array) if not isinstance(array, np.memmap) else array
    if array.ndim == 3 and array.shape[-1] in (1, 2):  # grey (+ alpha)
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if gray:
            rgb = array[..., :3]
            array = rgb[..., 0] if channels_equal(rgb) else to_gray(np.asarray(rgb))
    elif array.ndim != 2:
        raise InputError(f"expected a 2-D grayscale or RGB image, got shape {array.shape}",
                         sample=sample, path=path)
    if array.size == 0:
        raise InputError(f"empty image of shape {array.shape}", sample=sample, path=path)
    check_pixels(array, value_range=value_range, sample=sample, path=path)
    if micrograph:
        check_micrograph_integers(array, value_range=value_range, sample=sample, path=path)
    if value_range is not None and (np.issubdtype(array.dtype, np.floating) or (
            micrograph and np.issubdtype(array.dtype, np.integer) and array.dtype != bool)):
        lo, hi = float(value_range[0]), float(value_range[1])
        array = ((np.asarray(array, dtype=np.float32) - lo) / np.float32(hi - lo))
    return array


def write_probabilities(path: str | os.PathLike[str], probs: np.ndarray) -> None:
    """Class probabilities (K, H, W) as one float16 TIFF of K grey pages (``mvfcnn predict
    --out-probs``), so no K of 3 or 4 is mistaken for colour samples."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise InputError(f"probabilities must be (K, H, W), got shape {probs.shape}", path=path)
    with atomic_path(Path(path)) as tmp:
        import tifffile

        tifffile.imwrite(tmp, probs.astype(np.float16, copy=False), photometric="minisblack",
                         compression="zlib", bigtiff=probs.nbytes > 2**31)


def read_probabilities(path: str | os.PathLike[str], *, num_classes: int,
                       sample: str | None = None) -> np.ndarray:
    """(K, H, W) class probabilities of :func:`write_probabilities`, checked: K pages of one
    size, finite values in [0, 1]."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", sample=sample, path=path)
    try:
        import tifffile

        probs = tifffile.imread(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable file
        raise InputError(f"cannot read probabilities ({type(err).__name__}: {err})",
                         sample=sample, path=path) from err
    if probs.ndim != 3 or probs.shape[0] != num_classes:
        raise InputError(f"expected probabilities of {num_classes} classes (K, H, W), got "
                         f"shape {probs.shape}", sample=sample, path=path)
    if not np.issubdtype(probs.dtype, np.floating):
        raise InputError(f"probabilities must be floats, got {probs.dtype}", sample=sample,
                         path=path)
    check_pixels(probs, sample=sample, path=path)  # floats: finite, within [0, 1]
    return probs


def channels_equal(rgb: np.ndarray) -> bool:
    """True when the three colour channels of (H, W, 3+) are identical (grey stored as RGB)."""
    for r0 in range(0, rgb.shape[0], _STRIP_ROWS):
        strip = np.asarray(rgb[r0:r0 + _STRIP_ROWS, :, :3])
        if not (np.array_equal(strip[..., 0], strip[..., 1])
                and np.array_equal(strip[..., 0], strip[..., 2])):
            return False
    return True


def read_labels(path: str | os.PathLike[str], *, sample: str | None = None,
                mmap: bool = True) -> np.ndarray:
    """A label image of class indices as (H, W) integers.

    Accepts one channel, or RGB(A) whose three colour channels are exactly equal (labels saved
    as grey RGB: one channel is taken). Different channels mean a colour picture, not class
    indices, which used to surface later as a misleading size mismatch.
    """
    labels = read_image(path, sample=sample, mmap=mmap)
    if labels.ndim == 3:
        if not channels_equal(labels):
            raise InputError(f"label image has {labels.shape[-1]} channels that differ (a colour "
                             "image?); labels must be one channel of class indices 0..K (ignore "
                             "= ignore_index)", sample=sample, path=path)
        labels = labels[..., 0]
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be an integer image of class indices, got {labels.dtype}",
                         sample=sample, path=path)
    return labels


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601) of an RGB image: integers rounded and kept in their dtype, floats
    as float32 (the one grey conversion of the package)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = rgb.astype(np.float32) @ weights
    if np.issubdtype(rgb.dtype, np.integer):
        gray = np.clip(np.rint(gray), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)
    return gray


#: display contrast: these percentiles of an image are stretched to the full range
STRETCH_PERCENTILES = (0.5, 99.5)


def contrast_stretch(values: np.ndarray, sample: np.ndarray | None = None, *,
                     top: float = 1.0) -> np.ndarray:
    """``values`` mapped linearly so the 0.5 and 99.5 percentiles of ``sample`` (default:
    ``values`` itself) become 0 and ``top``, clipped to [0, top] (so dim LOM and 16-bit SEM are
    visible). An empty sample counts as the range (0, top); a flat one leaves values as they are
    (clipped)."""
    sample = values if sample is None else sample
    lo, hi = np.percentile(sample, STRETCH_PERCENTILES) if sample.size else (0.0, top)
    if hi <= lo:
        return np.clip(values, 0, top)
    return np.clip((values - lo) / (hi - lo) * top, 0, top)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Scale an 8/16-bit or float image to float32 in [0, 1].

    Floats are taken as already in [0, 1]: :func:`read_image` guarantees it (FLOAT_RANGE).
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return (image.astype(np.float32) - info.min) / float(info.max - info.min)
    return image.astype(np.float32)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit view of an image tile: uint16 keeps its high byte, floats in [0, 1] are scaled."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    info = np.iinfo(array.dtype)
    scaled = (array.astype(np.float64) - info.min) / float(info.max - info.min)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
