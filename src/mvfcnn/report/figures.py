"""The paper's Figures 4, 6, 7 and 8 from the workflow's results.

Every colour and class name comes from the configured class set (``ClassSet.rgb()``), so a
dataset with other classes needs no code change. Each figure degrades to a placeholder PNG with
a note when its inputs do not exist in this configuration (e.g. Fig. 8a without a LOM run),
instead of failing the workflow. PNGs are written atomically through ``mvfcnn.core.io.atomic_path``.

Which MVFCNN run a figure shows is chosen as in the tables: ``ft_balanced_aug`` when it was
run, else the variant with the best SEM object accuracy (``mvfcnn.report.collect.best_variant``).
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mvfcnn.core import layout
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.runs import PREFERRED_VARIANT
from mvfcnn.inference.predict import window_starts
from mvfcnn.report.figure_kit import (
    DISPLAY_MAX,
    DPI,
    NO_TRUTH_RGB,
    NOT_SEGMENTED_RGB,
    PATCH,
    Context,
    Predictor,
    add_legend,
    best_sem_variant,
    best_window,
    colorize,
    crop_square,
    display_gray,
    figure_grid,
    placeholder,
    read_optional,
    row_label,
    save_figure,
    show_image,
)
from mvfcnn.report.noise_figure import default_model, fig8b_noise, model_predictor

FIGURES = {
    "fig4": "fig4_examples.png",
    "fig6": "fig6_segmentation.png",
    "fig7": "fig7_maxvoting.png",
    "fig8a": "fig8a_lom_vs_sem.png",
    "fig8b": "fig8b_noise.png",
}




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
            lab = crop_square(labels, y, x, size)
            fg = np.isin(lab, fg_classes)
            n_fg = int(fg.sum())
            if n_fg < min_foreground * lab.size or n_fg == 0:
                continue
            correct = int((crop_square(pred, y, x, size)[fg] == lab[fg]).sum())
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
            labels = read_optional(ctx.labels(sample), labels=True)
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
    fig, axes, grid = figure_grid(len(rows), 3, title=title)
    for r, (cls, (sample, y, x, _count, size)) in enumerate(rows):
        sem = read_optional(ctx.image(sample, "sem"))
        lom = read_optional(ctx.image(sample, "lom"))
        mask = read_optional(layout.under(ctx.results_dir, layout.MASK, sample=sample))
        rgb = ctx.classes.rgb()[cls]
        show_image(axes[r, 0], display_gray(crop_square(sem, y, x, size)), "SEM")
        axes[r, 0].set_xlabel(f"{sample} (y={y}, x={x})", fontsize=7)
        row_label(axes[r, 0], ctx.classes.names[cls], rgb)
        if lom is not None:
            show_image(axes[r, 1], display_gray(crop_square(lom, y, x, size)), "registered LOM")
        else:
            axes[r, 1].text(0.5, 0.5, "no registered LOM", ha="center", va="center",
                            transform=axes[r, 1].transAxes, fontsize=8)
        if mask is not None:
            binary = crop_square(mask, y, x, size) > 0
            labels = crop_square(read_optional(ctx.labels(sample), labels=True), y, x, size)
            tinted = np.where(binary[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=2)
            tinted[binary & (labels == cls)] = rgb
            show_image(axes[r, 2], tinted, "binary mask (class in colour)")
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
        labels = read_optional(ctx.labels(sample), labels=True)
        pred = read_optional(ctx.pred(variant, "sem", sample))
        if labels is None or pred is None:
            continue
        size = min(patch, *labels.shape[:2])
        patches += candidate_patches(sample, labels, pred, ctx.classes, size)
    successes, failures = pick_extremes(patches, ctx.classes)
    if not successes:
        return placeholder(title, f"No test patch with second-phase ground truth ({variant}).")
    fig, axes, grid = figure_grid(len(successes), 6, title=f"{title} -- {variant} / SEM")
    for col0, chosen, tag in ((0, successes, "a"), (3, failures, "b")):
        for r, p in enumerate(chosen):
            if p is None:
                axes[r, col0 + 1].text(0.5, 0.5, "no worse patch of this class", ha="center",
                                       va="center", fontsize=8,
                                       transform=axes[r, col0 + 1].transAxes)
                continue
            sem = read_optional(ctx.image(p.sample, "sem"))
            labels = read_optional(ctx.labels(p.sample), labels=True)
            pred = read_optional(ctx.pred(variant, "sem", p.sample))
            window = (p.y, p.x, p.size)
            show_image(axes[r, col0], display_gray(crop_square(sem, *window)), f"({tag}) SEM")
            axes[r, col0].set_xlabel(f"{p.sample} (y={p.y}, x={p.x})", fontsize=7)
            show_image(axes[r, col0 + 1], colorize(crop_square(labels, *window), ctx.classes),
                       "ground truth")
            show_image(axes[r, col0 + 2], colorize(crop_square(pred, *window), ctx.classes),
                       f"prediction, fg acc. {100 * p.accuracy:.1f}%")
            if col0 == 0:
                row_label(axes[r, 0], ctx.classes.names[p.dominant],
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
    fig, axes, grid = figure_grid(len(samples), 3, cell=2.8, title=f"{title} -- {variant} / SEM")
    for r, sample in enumerate(samples):
        ids = read_optional(layout.under(ctx.results_dir, layout.OBJECT_IDS, sample=sample))
        step = _display_step(ids.shape)
        ids = np.asarray(ids[::step, ::step]).astype(np.int64)
        rows = table[table["sample"].astype(str) == sample]
        truth, voted = object_maps(ids, rows, ctx.classes)
        sem = read_optional(ctx.image(sample, "sem"))
        scored = rows[rows["true_class"] >= 1]
        n_ok = int((scored["true_class"] == scored["pred_class"]).sum())
        n_miss = int((scored["pred_class"] < 0).sum())
        show_image(axes[r, 0], display_gray(sem[::step, ::step]), sample)
        show_image(axes[r, 1], truth, "ground truth")
        axes[r, 1].set_xlabel(f"majority: {_image_class(rows['true_class'], ctx.classes)}",
                              fontsize=8)
        show_image(axes[r, 2], voted, "max-voted")
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

    runs = ctx.runs()
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
    fig, axes, grid = figure_grid(len(rows), 5, title=f"{title} -- {variant}")
    for r, (cls, (sample, y, x, _count, size)) in enumerate(rows):
        labels = crop_square(read_optional(ctx.labels(sample), labels=True), y, x, size)
        lom = read_optional(ctx.image(sample, "lom"))
        sem = read_optional(ctx.image(sample, "sem"))
        cells = [(colorize(labels, ctx.classes), "ground truth")]
        axes[r, 0].set_xlabel(f"{sample} (y={y}, x={x})", fontsize=7)
        for modality, image in (("lom", lom), ("sem", sem)):
            pred = crop_square(read_optional(ctx.pred(variant, modality, sample)), y, x, size)
            fg = labels != ctx.classes.ignore_index
            acc = 100.0 * float((pred[fg] == labels[fg]).mean()) if fg.any() else math.nan
            cells.append((display_gray(crop_square(image, y, x, size)) if image is not None
                          else np.zeros((size, size)), modality.upper()))
            cells.append((colorize(pred, ctx.classes),
                          f"{modality.upper()} segmentation ({acc:.1f}%)"))
        for c, (img, text) in enumerate(cells):
            show_image(axes[r, c], img, text)
        row_label(axes[r, 0], ctx.classes.names[cls], ctx.classes.rgb()[cls])
    add_legend(fig, grid, ctx.classes, [("ignore", NO_TRUTH_RGB)])
    return fig


# ----------------------------------------------------------------------------------------------
# Driver


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
