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

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import SAMPLE_COLUMNS, ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_image, write_json
from mvfcnn.core.settings import with_defaults
from mvfcnn.data.synthetic_scene import (
    finish_sem,
    lom_margin,
    lom_transform,
    render_lom,
    render_scene,
)

LABELLED_SPLITS = ("train", "test")


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
    m = lom_margin((H, W), lom_cfg)
    scene = render_scene(np.random.default_rng(layout_ss), cfg, classes, role.image_class,
                         (H + 2 * m, W + 2 * m), (m, m, m + H, m + W), with_lom=True)
    sem = finish_sem(scene.sem[m:m + H, m:m + W], sem_ss)
    labels = np.ascontiguousarray(scene.labels[m:m + H, m:m + W])
    lom = render_lom(scene, transform, m, lom_cfg, classes, lom_ss)
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
    scene = render_scene(np.random.default_rng(layout_ss), cfg, classes, image_class,
                         (height, width), (0, 0, height, width), with_lom=False)
    labels = scene.labels
    sem = finish_sem(scene.sem, sem_ss)
    return sem, labels
