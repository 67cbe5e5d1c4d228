"""What every report figure shares: the context of a results folder (config, classes, samples,
the run shown), class colours and legends, panel grids, placeholders and atomic PNG writing.
"""


from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core import layout
from mvfcnn.core.config import ClassSet
from mvfcnn.core.io import atomic_path, contrast_stretch, read_image, read_labels, to_unit_float
from mvfcnn.core.runs import filled_config
from mvfcnn.data.datasets import workflow_sample_sheet
from mvfcnn.inference.predict import window_starts
from mvfcnn.report.collect import Run, best_variant, collect_runs, read_best_run

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
    #: the runs' metrics files the figure's rule declares (None: every configured run found)
    declared_runs: tuple[Path, ...] | None = None

    def runs(self) -> dict[tuple, Run]:
        """The evaluated runs this figure may show (:func:`collect_runs`)."""
        return collect_runs(self.results_dir, self.config, self.declared_runs)

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
                 best_run: str | Path | None = None,
                 declared_runs: list[str] | None = None) -> Context:
    """The figures' inputs; ``config`` may be partial (schema defaults are filled in)."""

    config = filled_config(config)
    classes = ClassSet.from_config(config)
    if samples is None:
        samples = sample_sheet(config, results_dir, classes)
    return Context(Path(results_dir), config, classes, samples,
                   Path(best_run) if best_run else None,
                   None if declared_runs is None else tuple(map(Path, declared_runs)))


def read_optional(path: Path | None, *, labels: bool = False) -> np.ndarray | None:
    if path is None or not Path(path).exists():
        return None

    return np.asarray(read_labels(path) if labels else read_image(path))


def best_sem_variant(ctx: Context) -> tuple[str | None, str]:
    if ctx.best_run is not None:
        return read_best_run(ctx.best_run, "sem")
    return best_variant(ctx.runs(), "sem")


# ----------------------------------------------------------------------------------------------
# Rendering helpers


def display_gray(image: np.ndarray) -> np.ndarray:
    """Any 8/16-bit/float grey or RGB image -> float [0, 1] for imshow, contrast-stretched
    by :func:`mvfcnn.core.io.contrast_stretch`."""

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
    """The panel grid of a figure made by :func:`figure_grid`: ``rows`` rows of ``cell``-inch panels
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


def figure_grid(rows: int, cols: int, cell: float = 2.2, title: str = ""):
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
    fig, axes, _ = figure_grid(1, 1, cell=4.0, title=title)
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


def show_image(ax, image: np.ndarray, title: str = "", color=None) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8, color=color or "black")


def row_label(ax, text: str, rgb: tuple[int, int, int] | None = None) -> None:
    ax.set_ylabel(text, fontsize=9)
    if rgb is not None:
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_edgecolor(np.array(rgb) / 255.0)
            spine.set_linewidth(3)


# ----------------------------------------------------------------------------------------------
# Patch search


def crop_square(array: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
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
