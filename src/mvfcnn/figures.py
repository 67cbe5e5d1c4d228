"""The paper's Figures 4, 6, 7 and 8 from the workflow's results.

Every colour and class name comes from the configured class set (``ClassSet.rgb()``), so a
dataset with other classes needs no code change. Each figure degrades to a placeholder PNG with
a note when its inputs do not exist in this configuration (e.g. Fig. 8a without a LOM run),
instead of failing the workflow. PNGs are written atomically through ``mvfcnn.io.atomic_path``.

Which MVFCNN run a figure shows is chosen as in the tables: ``ft_balanced_aug`` when it was
run, else the variant with the best SEM object accuracy (``mvfcnn.tables.best_variant``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn import layout
from mvfcnn.config import ClassSet
from mvfcnn.datasets import workflow_sample_sheet
from mvfcnn.errors import InputError
from mvfcnn.inference import inference_kwargs, predict_image, window_starts
from mvfcnn.io import atomic_path, contrast_stretch, read_image, read_labels, to_gray, to_unit_float
from mvfcnn.tables import (
    PREFERRED_VARIANT,
    best_variant,
    collect_runs,
    filled_config,
    load_config_arg,
    read_best_run,
    report_parser,
)

FIGURES = {
    "fig4": "fig4_examples.png",
    "fig6": "fig6_segmentation.png",
    "fig7": "fig7_maxvoting.png",
    "fig8a": "fig8a_lom_vs_sem.png",
    "fig8b": "fig8b_noise.png",
}
PATCH = 384                   # crop size of the patch figures (clipped to the image size)
DISPLAY_MAX = 768             # longest side of a whole-image panel (Fig. 7), px
NOT_SEGMENTED_RGB = (255, 255, 255)
NO_TRUTH_RGB = (128, 128, 128)
DPI = 110
Predictor = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Context:
    """Everything a figure reads: the results folder, config, classes and sample sheet."""

    results_dir: Path
    config: dict[str, Any]
    classes: ClassSet
    samples: pd.DataFrame
    #: the ``best-run`` output; None = decide from the metrics found under ``results_dir``
    best_run: Path | None = None

    def split(self, split: str) -> list[str]:
        return [s for s in self.samples.index if self.samples.loc[s, "split"] == split]

    def image(self, sample: str, modality: str = "sem") -> Path:
        if modality == "sem":
            return Path(self.samples.loc[sample, "sem"])
        return layout.under(self.results_dir, layout.REGISTERED_LOM, sample=sample)

    def labels(self, sample: str) -> Path | None:
        value = self.samples.loc[sample, "labels"]
        return Path(value) if value else None

    def pred(self, variant: str, modality: str, sample: str) -> Path:
        return self.run_dir(variant, modality) / layout.PREDICTION.format(sample=sample)

    def run_dir(self, variant: str, modality: str) -> Path:
        return layout.under(self.results_dir, layout.run_dir(False), variant=variant,
                            modality=modality)

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def sample_sheet(config: dict[str, Any], results_dir: str | Path,
                 classes: ClassSet) -> pd.DataFrame:
    """The sample sheet the workflow uses (the synthetic one lives under results/synthetic)."""

    return workflow_sample_sheet(config, classes, layout.under(results_dir, layout.SYNTHETIC))


def make_context(results_dir: str | Path, config: dict[str, Any],
                 samples: pd.DataFrame | None = None, *,
                 best_run: str | Path | None = None) -> Context:
    """The figures' inputs; ``config`` may be partial (schema defaults are filled in)."""

    config = filled_config(config)
    classes = ClassSet.from_config(config)
    if samples is None:
        samples = sample_sheet(config, results_dir, classes)
    return Context(Path(results_dir), config, classes, samples,
                   Path(best_run) if best_run else None)


def _read(path: Path | None, *, labels: bool = False) -> np.ndarray | None:
    if path is None or not Path(path).exists():
        return None

    return np.asarray(read_labels(path) if labels else read_image(path))


def best_sem_variant(ctx: Context) -> tuple[str | None, str]:
    if ctx.best_run is not None:
        return read_best_run(ctx.best_run, "sem")
    return best_variant(collect_runs(ctx.results_dir, ctx.config), "sem")


# ----------------------------------------------------------------------------------------------
# Rendering helpers


def display_gray(image: np.ndarray) -> np.ndarray:
    """Any 8/16-bit/float grey or RGB image -> float [0, 1] for imshow, contrast-stretched
    by :func:`mvfcnn.io.contrast_stretch`."""

    data = to_unit_float(np.asarray(image))
    if data.ndim == 3:
        data = data[..., :3]
    return contrast_stretch(data)


def colorize(class_map: np.ndarray, classes: ClassSet, *,
             ignore_rgb: tuple[int, int, int] = NO_TRUTH_RGB) -> np.ndarray:
    """Class indices -> RGB uint8 in the configured colours; other values (ignore) grey."""
    lut = np.tile(np.array(ignore_rgb, dtype=np.uint8), (256, 1))
    lut[:classes.num_classes] = np.array(classes.rgb(), dtype=np.uint8)
    return lut[np.asarray(class_map, dtype=np.uint8)]


def legend_handles(classes: ClassSet, extra: list[tuple[str, tuple[int, int, int]]] = ()):
    from matplotlib.patches import Patch

    items = list(zip(classes.names, classes.rgb(), strict=True)) + list(extra)
    return [Patch(facecolor=np.array(rgb) / 255.0, edgecolor="0.4", label=name)
            for name, rgb in items]


def add_legend(fig, grid: Grid, classes: ClassSet,
               extra: list[tuple[str, tuple[int, int, int]]] = (),
               *, xlabel_lines: int = 1) -> None:
    """Class names and colours from the config below the panels of ``grid``; the figure grows
    to fit."""
    handles = legend_handles(classes, extra)
    longest = max(len(h.get_label()) for h in handles)
    per_row = max(1, int(fig.get_figwidth() / (0.45 + 0.075 * longest)))
    legend_rows = math.ceil(len(handles) / per_row)
    _layout(fig, grid, bottom_in=0.15 + 0.25 * legend_rows + 0.16 * xlabel_lines)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), per_row),
               frameon=False, fontsize=9, borderaxespad=0.2)


def _axes_off(axes) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)


TOP_IN, GAP_IN = 0.6, 0.6      # title band and the gap between panel rows (with xlabels), inches


@dataclass(frozen=True)
class Grid:
    """The panel grid of a figure made by :func:`_grid`: ``rows`` rows of ``cell``-inch panels
    (what :func:`_layout` needs to resize the figure when a legend is added)."""

    rows: int
    cell: float


def _layout(fig, grid: Grid, bottom_in: float = 0.2) -> None:
    """Size the figure so ``rows`` panels of ``cell`` inches fit between title and legend."""
    rows, cell = grid.rows, grid.cell
    height = TOP_IN + rows * cell + (rows - 1) * GAP_IN + bottom_in
    fig.set_figheight(height)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - TOP_IN / height,
                        bottom=bottom_in / height, wspace=0.05, hspace=GAP_IN / cell)
    if fig._suptitle is not None:
        fig._suptitle.set_y(1 - 0.1 / height)


def _grid(rows: int, cols: int, cell: float = 2.2, title: str = ""):
    """A figure of rows x cols empty panels: (figure, axes array, its :class:`Grid`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell + 1.0),
                             squeeze=False)
    grid = Grid(rows, cell)
    _axes_off(axes)
    if title:
        fig.suptitle(title, fontsize=11, va="top")
    _layout(fig, grid)
    return fig, axes, grid


def placeholder(title: str, note: str):
    """A small figure that says why the real one is missing."""
    fig, axes, _ = _grid(1, 1, cell=4.0, title=title)
    axes[0, 0].text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=10,
                    transform=axes[0, 0].transAxes)
    return fig


def save_figure(fig, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write a PNG atomically and close the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path


def _show(ax, image: np.ndarray, title: str = "", color=None) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8, color=color or "black")


def _row_label(ax, text: str, rgb: tuple[int, int, int] | None = None) -> None:
    ax.set_ylabel(text, fontsize=9)
    if rgb is not None:
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_edgecolor(np.array(rgb) / 255.0)
            spine.set_linewidth(3)


# ----------------------------------------------------------------------------------------------
# Patch search


def _crop(array: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    return np.asarray(array[y:y + size, x:x + size])


def best_window(mask: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, count): the size x size window with the most True pixels (step size/4)."""
    step = max(size // 4, 1)
    best = (0, 0, -1)
    for y in window_starts(mask.shape[0], size, step):
        band = np.asarray(mask[y:y + size])
        column_sums = band.sum(axis=0)
        cums = np.concatenate([[0], np.cumsum(column_sums)])
        for x in window_starts(mask.shape[1], size, step):
            count = int(cums[min(x + size, mask.shape[1])] - cums[x])
            if count > best[2]:
                best = (y, x, count)
    return best


@dataclass
class Patch:
    """A candidate test patch and its foreground pixel accuracy."""

    sample: str
    y: int
    x: int
    size: int
    dominant: int           # the foreground class with most ground-truth pixels
    foreground: int         # number of foreground ground-truth pixels
    accuracy: float         # correct / foreground (nan when no foreground)
    share: float = 1.0      # dominant class pixels / foreground pixels


def candidate_patches(sample: str, labels: np.ndarray, pred: np.ndarray, classes: ClassSet,
                      size: int, min_foreground: float = 0.05) -> list[Patch]:
    """Windows (stride size/2) with at least ``min_foreground`` second-phase ground truth."""
    out = []
    fg_classes = np.array(classes.foreground)
    for y in window_starts(labels.shape[0], size, max(size // 2, 1)):
        for x in window_starts(labels.shape[1], size, max(size // 2, 1)):
            lab = _crop(labels, y, x, size)
            fg = np.isin(lab, fg_classes)
            n_fg = int(fg.sum())
            if n_fg < min_foreground * lab.size or n_fg == 0:
                continue
            correct = int((_crop(pred, y, x, size)[fg] == lab[fg]).sum())
            counts = np.bincount(lab[fg].ravel(), minlength=classes.num_classes)
            dominant = int(np.argmax(counts))
            out.append(Patch(sample, y, x, min(size, lab.shape[0], lab.shape[1]), dominant,
                             n_fg, correct / n_fg, float(counts[dominant]) / n_fg))
    return out


def pick_extremes(patches: list[Patch], classes: ClassSet
                  ) -> tuple[list[Patch], list[Patch]]:
    """Per foreground class: its best patch (success) and its worst patch (failure); the
    failure is None when no patch of that class is worse than its best one. Patches where the
    class is at least half of the second phase are preferred, so a row shows its class."""
    successes, failures = [], []
    for cls in classes.foreground:
        mine = [p for p in patches if p.dominant == cls]
        mine = [p for p in mine if p.share >= 0.5] or mine
        if not mine:
            continue
        ranked = sorted(mine, key=lambda p: (-p.accuracy, -p.foreground, p.sample, p.y, p.x))
        successes.append(ranked[0])
        failures.append(ranked[-1] if ranked[-1].accuracy < ranked[0].accuracy else None)
    return successes, failures


def _richest_patches(ctx: Context, samples: list[str], patch: int) -> list[tuple[int, tuple]]:
    """Per foreground class, the (sample, y, x, count, size) window holding most of its pixels."""
    rows = []
    for cls in ctx.classes.foreground:
        best = None
        for sample in samples:
            labels = _read(ctx.labels(sample), labels=True)
            if labels is None:
                continue
            size = min(patch, *labels.shape[:2])
            y, x, count = best_window(labels == cls, size)
            if count > 0 and (best is None or count > best[3]):
                best = (sample, y, x, count, size)
        if best is not None:
            rows.append((cls, best))
    return rows


# ----------------------------------------------------------------------------------------------
# Figure 4: per class SEM | registered LOM | mask


def fig4_examples(ctx: Context, *, patch: int = PATCH):
    """One training example per class: SEM, registered LOM, binary mask (paper Fig. 4)."""
    rows = _richest_patches(ctx, ctx.split("train"), patch)
    title = "Fig. 4: a training example per class: SEM | registered LOM | binary mask"
    if not rows:
        return placeholder(title, "No training image with labelled second-phase objects.")
    fig, axes, grid = _grid(len(rows), 3, title=title)
    for r, (cls, (sample, y, x, _count, size)) in enumerate(rows):
        sem = _read(ctx.image(sample, "sem"))
        lom = _read(ctx.image(sample, "lom"))
        mask = _read(layout.under(ctx.results_dir, layout.MASK, sample=sample))
        rgb = ctx.classes.rgb()[cls]
        _show(axes[r, 0], display_gray(_crop(sem, y, x, size)), "SEM")
        axes[r, 0].set_xlabel(f"{sample} (y={y}, x={x})", fontsize=7)
        _row_label(axes[r, 0], ctx.classes.names[cls], rgb)
        if lom is not None:
            _show(axes[r, 1], display_gray(_crop(lom, y, x, size)), "registered LOM")
        else:
            axes[r, 1].text(0.5, 0.5, "no registered LOM", ha="center", va="center",
                            transform=axes[r, 1].transAxes, fontsize=8)
        if mask is not None:
            binary = _crop(mask, y, x, size) > 0
            labels = _crop(_read(ctx.labels(sample), labels=True), y, x, size)
            tinted = np.where(binary[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=2)
            tinted[binary & (labels == cls)] = rgb
            _show(axes[r, 2], tinted, "binary mask (class in colour)")
        else:
            axes[r, 2].text(0.5, 0.5, "no mask", ha="center", va="center",
                            transform=axes[r, 2].transAxes, fontsize=8)
    add_legend(fig, grid, ctx.classes)
    return fig


# ----------------------------------------------------------------------------------------------
# Figure 6: successes and failures


def fig6_segmentation(ctx: Context, *, patch: int = PATCH):
    """Best and worst test patches (foreground pixel accuracy) of the best SEM variant."""
    variant, why = best_sem_variant(ctx)
    title = "Fig. 6: (a) successful and (b) failed SEM segmentations"
    if variant is None:
        return placeholder(title, f"No MVFCNN result to show ({why}).")
    patches = []
    for sample in ctx.split("test"):
        labels = _read(ctx.labels(sample), labels=True)
        pred = _read(ctx.pred(variant, "sem", sample))
        if labels is None or pred is None:
            continue
        size = min(patch, *labels.shape[:2])
        patches += candidate_patches(sample, labels, pred, ctx.classes, size)
    successes, failures = pick_extremes(patches, ctx.classes)
    if not successes:
        return placeholder(title, f"No test patch with second-phase ground truth ({variant}).")
    fig, axes, grid = _grid(len(successes), 6, title=f"{title} -- {variant} / SEM")
    for col0, chosen, tag in ((0, successes, "a"), (3, failures, "b")):
        for r, p in enumerate(chosen):
            if p is None:
                axes[r, col0 + 1].text(0.5, 0.5, "no worse patch of this class", ha="center",
                                       va="center", fontsize=8,
                                       transform=axes[r, col0 + 1].transAxes)
                continue
            sem = _read(ctx.image(p.sample, "sem"))
            labels = _read(ctx.labels(p.sample), labels=True)
            pred = _read(ctx.pred(variant, "sem", p.sample))
            _show(axes[r, col0], display_gray(_crop(sem, p.y, p.x, p.size)), f"({tag}) SEM")
            axes[r, col0].set_xlabel(f"{p.sample} (y={p.y}, x={p.x})", fontsize=7)
            _show(axes[r, col0 + 1], colorize(_crop(labels, p.y, p.x, p.size), ctx.classes),
                  "ground truth")
            _show(axes[r, col0 + 2], colorize(_crop(pred, p.y, p.x, p.size), ctx.classes),
                  f"prediction, fg acc. {100 * p.accuracy:.1f}%")
            if col0 == 0:
                _row_label(axes[r, 0], ctx.classes.names[p.dominant],
                           ctx.classes.rgb()[p.dominant])
    add_legend(fig, grid, ctx.classes, [("ignore", NO_TRUTH_RGB)])
    return fig


# ----------------------------------------------------------------------------------------------
# Figure 7: max-voted objects


def _display_step(shape: tuple[int, ...], limit: int = DISPLAY_MAX) -> int:
    return max(1, math.ceil(max(shape[:2]) / limit))


def object_maps(ids: np.ndarray, table: pd.DataFrame, classes: ClassSet
                ) -> tuple[np.ndarray, np.ndarray]:
    """(ground-truth RGB, max-voted RGB) of an object-id image: each object filled with its
    class colour; not-segmented white; objects without a ground-truth class grey."""
    max_id = int(max(ids.max(initial=0), table["object_id"].max() if len(table) else 0))
    colors = np.array(classes.rgb(), dtype=np.uint8)
    truth = np.tile(colors[0], (max_id + 1, 1))
    voted = np.tile(colors[0], (max_id + 1, 1))
    obj = table["object_id"].to_numpy(dtype=np.int64)
    true_cls = table["true_class"].to_numpy(dtype=np.int64)
    pred_cls = table["pred_class"].to_numpy(dtype=np.int64)
    valid_t = (true_cls >= 1) & (true_cls < classes.num_classes)
    truth[obj[valid_t]] = colors[true_cls[valid_t]]
    truth[obj[~valid_t]] = NO_TRUTH_RGB
    valid_p = (pred_cls >= 0) & (pred_cls < classes.num_classes)
    voted[obj[valid_p]] = colors[pred_cls[valid_p]]
    voted[obj[pred_cls < 0]] = NOT_SEGMENTED_RGB
    truth[0] = voted[0] = colors[0]
    return truth[ids], voted[ids]


def _image_class(classes_of_objects: pd.Series, classes: ClassSet) -> str:
    valid = classes_of_objects[classes_of_objects >= 1]
    if valid.empty:
        return "-"
    return classes.names[int(valid.value_counts().idxmax())]


def fig7_maxvoting(ctx: Context, *, max_images: int = 10):
    """Per test image: SEM | ground-truth objects | max-voted objects (paper Fig. 7)."""
    variant, why = best_sem_variant(ctx)
    title = "Fig. 7: max-voted object classes of the stitched SEM segmentation"
    if variant is None:
        return placeholder(title, f"No MVFCNN result to show ({why}).")
    objects_csv = ctx.run_dir(variant, "sem") / "objects.csv"
    if not objects_csv.exists():
        return placeholder(title, f"{objects_csv} is missing.")
    table = pd.read_csv(objects_csv)
    samples = [s for s in ctx.split("test")
               if layout.under(ctx.results_dir, layout.OBJECT_IDS, sample=s).exists()][:max_images]
    if not samples:
        return placeholder(title, "No object-id images of test samples.")
    fig, axes, grid = _grid(len(samples), 3, cell=2.8, title=f"{title} -- {variant} / SEM")
    for r, sample in enumerate(samples):
        ids = _read(layout.under(ctx.results_dir, layout.OBJECT_IDS, sample=sample))
        step = _display_step(ids.shape)
        ids = np.asarray(ids[::step, ::step]).astype(np.int64)
        rows = table[table["sample"].astype(str) == sample]
        truth, voted = object_maps(ids, rows, ctx.classes)
        sem = _read(ctx.image(sample, "sem"))
        scored = rows[rows["true_class"] >= 1]
        n_ok = int((scored["true_class"] == scored["pred_class"]).sum())
        n_miss = int((scored["pred_class"] < 0).sum())
        _show(axes[r, 0], display_gray(sem[::step, ::step]), sample)
        _show(axes[r, 1], truth, "ground truth")
        axes[r, 1].set_xlabel(f"majority: {_image_class(rows['true_class'], ctx.classes)}",
                              fontsize=8)
        _show(axes[r, 2], voted, "max-voted")
        axes[r, 2].set_xlabel(f"majority: {_image_class(rows['pred_class'], ctx.classes)}\n"
                              f"{n_ok}/{len(scored)} objects right, {n_miss} not segmented",
                              fontsize=8)
    add_legend(fig, grid, ctx.classes, [("not segmented", NOT_SEGMENTED_RGB),
                                  ("no ground-truth class", NO_TRUTH_RGB)], xlabel_lines=2)
    return fig


# ----------------------------------------------------------------------------------------------
# Figure 8a: LOM vs SEM


def lom_sem_variant(ctx: Context) -> str | None:
    """The variant shown in Fig. 8a: it must have predictions on both modalities."""

    runs = collect_runs(ctx.results_dir, ctx.config)
    both = [v for (m, v, mod) in runs if m == "mvfcnn" and mod == "sem"
            and ("mvfcnn", v, "lom") in runs]
    if not both:
        return None
    if PREFERRED_VARIANT in both:
        return PREFERRED_VARIANT
    best, _ = best_sem_variant(ctx)
    if best in both:
        return best
    return max(both, key=lambda v: (np.nan_to_num(runs[("mvfcnn", v, "sem")].accuracy), v))


def fig8a_lom_vs_sem(ctx: Context, *, patch: int = PATCH):
    """Per class, the test patch richest in it: GT | LOM | LOM seg. | SEM | SEM seg."""
    title = "Fig. 8a: LOM vs SEM segmentation"
    variant = lom_sem_variant(ctx)
    if variant is None:
        return placeholder(title, "LOM was not run in this configuration (no MVFCNN variant "
                                  "with both SEM and LOM results; see run.modalities / "
                                  "run.combinations), so there is nothing to compare.")
    samples = [s for s in ctx.split("test") if ctx.pred(variant, "lom", s).exists()]
    rows = _richest_patches(ctx, samples, patch)
    if not rows:
        return placeholder(title, f"No test patch with LOM predictions ({variant}).")
    fig, axes, grid = _grid(len(rows), 5, title=f"{title} -- {variant}")
    for r, (cls, (sample, y, x, _count, size)) in enumerate(rows):
        labels = _crop(_read(ctx.labels(sample), labels=True), y, x, size)
        lom = _read(ctx.image(sample, "lom"))
        sem = _read(ctx.image(sample, "sem"))
        cells = [(colorize(labels, ctx.classes), "ground truth")]
        axes[r, 0].set_xlabel(f"{sample} (y={y}, x={x})", fontsize=7)
        for modality, image in (("lom", lom), ("sem", sem)):
            pred = _crop(_read(ctx.pred(variant, modality, sample)), y, x, size)
            fg = labels != ctx.classes.ignore_index
            acc = 100.0 * float((pred[fg] == labels[fg]).mean()) if fg.any() else math.nan
            cells.append((display_gray(_crop(image, y, x, size)) if image is not None
                          else np.zeros((size, size)), modality.upper()))
            cells.append((colorize(pred, ctx.classes),
                          f"{modality.upper()} segmentation ({acc:.1f}%)"))
        for c, (img, text) in enumerate(cells):
            _show(axes[r, c], img, text)
        _row_label(axes[r, 0], ctx.classes.names[cls], ctx.classes.rgb()[cls])
    add_legend(fig, grid, ctx.classes, [("ignore", NO_TRUTH_RGB)])
    return fig


# ----------------------------------------------------------------------------------------------
# Figure 8b: noise robustness


def add_artefacts(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Reproducible preparation artefacts on a float [0, 1] grey patch: ``dirt`` (dark soft
    blobs), ``scratch`` (bright and dark lines), ``gaussian`` noise, ``salt`` and pepper."""
    out = image.astype(np.float32).copy()
    h, w = out.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "dirt":
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.03, 0.09) * h, rng.uniform(0.03, 0.09) * w
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.6, 0.95)
            out = out * (1 - alpha) + rng.uniform(0.0, 0.15) * alpha
    elif kind == "scratch":
        for shade in (0.95, 0.05):
            y0, y1 = rng.uniform(0, h, size=2)
            a, b, c = y1 - y0, -float(w), float(w) * y0       # line through (0,y0), (w,y1)
            dist = np.abs(a * xx + b * yy + c) / math.hypot(a, b)
            alpha = np.clip(1.0 - dist / max(1.0, 0.006 * w), 0, 1)
            out = out * (1 - alpha) + shade * alpha
    elif kind == "gaussian":
        out = out + rng.normal(0.0, 0.08, size=out.shape).astype(np.float32)
    elif kind == "salt":
        flip = rng.random(out.shape)
        out[flip < 0.02] = 0.0
        out[flip > 0.98] = 1.0
    else:
        raise InputError(f"unknown artefact {kind!r}")
    return np.clip(out, 0.0, 1.0)


def model_predictor(model_path: str | Path, inference: dict[str, Any]) -> Predictor:
    """A patch -> class map function from a trained model file (final FCN stage)."""
    from mvfcnn.models.io import load_model  # lazy: torch for Fig. 8b only

    model, _meta = load_model(model_path)
    # the workflow's own settings; with fit_tiles a patch smaller than one window runs at its
    # own size instead of being padded to the (1500 px) window, ~8x less work for Fig. 8b
    kwargs = {**inference_kwargs(inference), "batch_size": 1}

    def predict(patch: np.ndarray) -> np.ndarray:
        return np.asarray(predict_image(model, patch, **kwargs,
                                        device="auto",  # as `mvfcnn predict`
                                        progress=False))

    return predict


ARTEFACTS = ("dirt", "scratch", "gaussian", "salt")


def noise_patches(ctx: Context, size: int) -> list[tuple[str, str, int, int, int]]:
    """(label, sample, y, x, size): a plain ferrite patch (fewest second-phase pixels) and the
    richest patch of up to three second-phase classes, from the SEM test images."""
    plain = None
    per_class: dict[int, tuple[str, int, int, int, int]] = {}
    for sample in ctx.split("test"):
        labels = _read(ctx.labels(sample), labels=True)
        if labels is None:
            continue
        s = min(size, *labels.shape[:2])
        fg = np.isin(labels, [*ctx.classes.foreground, ctx.classes.ignore_index])
        # the plainest window; shrink it (down to 96 px) until it is >= 98 % matrix
        small = s
        y, x, count = best_window(~fg, small)
        while count < 0.98 * small * small and small // 2 >= 96:
            small //= 2
            y, x, count = best_window(~fg, small)
        score = count / (small * small)
        if plain is None or score > plain[3]:
            plain = (sample, y, x, score, small)
        for cls in ctx.classes.foreground:
            y, x, count = best_window(labels == cls, s)
            if count > 0 and (cls not in per_class or count > per_class[cls][3]):
                per_class[cls] = (sample, y, x, count, s)
    out = []
    if plain is not None:
        out.append((ctx.classes.names[0], plain[0], plain[1], plain[2], plain[4]))
    for cls in list(per_class)[:3]:
        sample, y, x, _count, s = per_class[cls]
        out.append((ctx.classes.names[cls], sample, y, x, s))
    return out


def fig8b_noise(ctx: Context, predictor: Predictor | None, *, patch: int = PATCH,
                model_note: str = ""):
    """Seeded artefacts on SEM test patches, segmented by the trained model (paper Fig. 8b)."""

    title = "Fig. 8b: robustness to preparation artefacts and noise"
    if predictor is None:
        return placeholder(title, f"No trained SEM model to run ({model_note or 'not found'}).")
    chosen = noise_patches(ctx, patch)
    if not chosen:
        return placeholder(title, "No labelled SEM test image.")
    rng = np.random.default_rng([ctx.seed, 8])
    fig, axes, grid = _grid(len(chosen), 4,
                            title=f"{title} -- {model_note}" if model_note else title)
    for r, (label, sample, y, x, size) in enumerate(chosen):
        kind = ARTEFACTS[r % len(ARTEFACTS)]
        sem = _read(ctx.image(sample, "sem"))
        crop = _crop(sem, y, x, size)
        if crop.ndim == 3:
            crop = to_gray(crop[..., :3])
        noisy = add_artefacts(to_unit_float(crop), kind, rng)
        noisy_u8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
        clean_u8 = np.clip(np.rint(to_unit_float(crop) * 255), 0, 255).astype(np.uint8)
        truth = _crop(_read(ctx.labels(sample), labels=True), y, x, size)
        pred_noisy = predictor(noisy_u8)
        pred_clean = predictor(clean_u8)
        keep = truth != ctx.classes.ignore_index
        acc = [100.0 * float((p[keep] == truth[keep]).mean()) if keep.any() else math.nan
               for p in (pred_noisy, pred_clean)]
        _show(axes[r, 0], noisy, f"with {kind}")
        axes[r, 0].set_xlabel(f"{sample} (y={y}, x={x})", fontsize=7)
        _row_label(axes[r, 0], label)
        _show(axes[r, 1], colorize(pred_noisy, ctx.classes), f"prediction, acc. {acc[0]:.1f}%")
        _show(axes[r, 2], colorize(pred_clean, ctx.classes),
              f"without artefacts, acc. {acc[1]:.1f}%")
        _show(axes[r, 3], colorize(truth, ctx.classes), "ground truth")
    add_legend(fig, grid, ctx.classes, [("ignore", NO_TRUTH_RGB)])
    return fig


def default_model(ctx: Context) -> tuple[Path | None, str]:
    variant, why = best_sem_variant(ctx)
    if variant is None:
        return None, why
    stage = ctx.config["fcn"]["stages"][-1]
    path = ctx.run_dir(variant, "sem") / f"fcn{stage}.pt"
    return (path if path.exists() else None), f"{variant} / SEM, FCN-{stage}"


# ----------------------------------------------------------------------------------------------
# Driver and CLI


def make_figure(name: str, ctx: Context, *, model: str | Path | None = None,
                predictor: Predictor | None = None, patch: int = PATCH):
    """The matplotlib Figure ``name`` (a key of FIGURES)."""
    if name == "fig4":
        return fig4_examples(ctx, patch=patch)
    if name == "fig6":
        return fig6_segmentation(ctx, patch=patch)
    if name == "fig7":
        return fig7_maxvoting(ctx)
    if name == "fig8a":
        return fig8a_lom_vs_sem(ctx, patch=patch)
    if name == "fig8b":
        note = ""
        if predictor is None:
            path, note = (Path(model), "") if model else default_model(ctx)
            if path is not None and path.exists():
                predictor = model_predictor(path, ctx.config["inference"])
                note = note or f"({path})"
            elif model:
                raise InputError("model file not found", path=model)
        return fig8b_noise(ctx, predictor, patch=patch, model_note=note)
    raise InputError(f"unknown figure {name!r}; choose from {list(FIGURES)}")


def write_figures(ctx: Context, outdir: str | Path, which: list[str] | None = None, *,
                  model: str | Path | None = None, predictor: Predictor | None = None,
                  patch: int = PATCH, dpi: int = DPI) -> list[Path]:
    """Make and save the selected figures (default all) as outdir/FIGURES[name]."""
    written = []
    for name in which or list(FIGURES):
        fig = make_figure(name, ctx, model=model, predictor=predictor, patch=patch)
        written.append(save_figure(fig, Path(outdir) / FIGURES[name], dpi=dpi))
    return written


def cli(argv: list[str]) -> int:
    parser = report_parser(
        "mvfcnn figures", "The paper's Figures 4, 6, 7, 8a, 8b as PNGs (class names and colours "
                          "from the config). Missing inputs give a placeholder PNG with a note.")
    parser.add_argument("--outdir", default="results/figures", help="output folder")
    parser.add_argument("--which", nargs="+", choices=list(FIGURES), default=None,
                        help="figures to make (default: all)")
    parser.add_argument("--model", default=None,
                        help="model file for fig8b (default: the best SEM variant's final stage)")
    parser.add_argument("--patch", type=int, default=PATCH, help="patch size of the crops, px")
    parser.add_argument("--best-run", default=None,
                        help="`mvfcnn best-run` output (default: decide from the metrics)")
    args = parser.parse_args(argv)
    config = load_config_arg(args.config_json)
    ctx = make_context(args.results_dir, config, best_run=args.best_run)
    written = write_figures(ctx, args.outdir, args.which, model=args.model, patch=args.patch)
    for path in written:
        print(f"mvfcnn figures: wrote {path}", file=sys.stderr)
    return 0
