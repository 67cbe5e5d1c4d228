"""Image and table I/O: memory-mapped reads, atomic writes, clear errors on bad files.

Every writer goes through :func:`atomic_path`: data is written to a temporary file in the
destination folder and renamed into place, so an interrupted job never leaves a
half-written output that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mvfcnn.errors import InputError

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


def read_image(
    path: str | os.PathLike[str],
    *,
    sample: str | None = None,
    gray: bool = False,
    mmap: bool = True,
) -> np.ndarray:
    """Read a 2-D (or RGB) image; memory-mapped when the TIFF is uncompressed and contiguous.

    ``gray=True`` converts RGB(A) to luminance in the file's dtype range. Any failure is
    re-raised as :class:`InputError` naming the sample and the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", sample=sample, path=path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            array = None
            if mmap:
                try:
                    array = tifffile.memmap(path, mode="r")
                except (ValueError, tifffile.TiffFileError):
                    array = None
            if array is None:
                array = tifffile.imread(path)
        else:
            from skimage import io as skio

            array = skio.imread(path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means an unreadable file
        raise InputError(f"cannot read image ({type(err).__name__}: {err})", sample=sample,
                         path=path) from err
    array = np.asarray(array) if not isinstance(array, np.memmap) else array
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if gray:
            array = to_gray(array[..., :3])
    elif array.ndim != 2:
        raise InputError(f"expected a 2-D grayscale or RGB image, got shape {array.shape}",
                         sample=sample, path=path)
    return array


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601) of an RGB image, kept in the input's integer range."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = rgb.astype(np.float32) @ weights
    if np.issubdtype(rgb.dtype, np.integer):
        gray = np.clip(np.rint(gray), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)
    return gray


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Scale an 8/16-bit or float image to float32 in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return (image.astype(np.float32) - info.min) / float(info.max - info.min)
    return image.astype(np.float32)


def read_labels(path: str | os.PathLike[str], *, sample: str | None = None) -> np.ndarray:
    """A label map: 2-D, or RGB(A) whose three colour channels are equal (one channel is kept)."""
    labels = read_image(path, sample=sample, mmap=True)
    if labels.ndim == 3:
        rgb = np.asarray(labels[..., :3])
        if not (np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InputError("label image has 3 colour channels that differ; labels must be one "
                             "channel of class indices (or RGB with equal channels)",
                             sample=sample, path=path)
        labels = rgb[..., 0]
    return labels
