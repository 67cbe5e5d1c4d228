"""What training writes beside the weights: the per-iteration CSV and plot of a stage, and
the learning curve of a whole run (every stage's validation mean IU, for the report).
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from mvfcnn.core.io import atomic_path, write_table

CSV_COLUMNS = ["iteration", "loss", "lr", "seconds", "pixel_accuracy", "mean_iu"]


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str) -> None:
    """Training loss (raw + running mean) and validation metrics vs iteration, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    if len(frame):
        loss = frame["loss"].astype(float)
        ax_loss.plot(frame["iteration"], loss, lw=0.6, alpha=0.4, color="C0", label="loss")
        window = max(1, min(50, len(frame) // 10))
        ax_loss.plot(frame["iteration"], loss.rolling(window, min_periods=1).mean(),
                     color="C0", label=f"running mean ({window})")
        val = frame.dropna(subset=["pixel_accuracy"])
        for col, label, color in (("pixel_accuracy", "pixel accuracy", "C1"),
                                  ("mean_iu", "mean IU", "C2")):
            if len(val):
                ax_val.plot(val["iteration"], val[col].astype(float), "o-", color=color,
                            label=label)
    ax_loss.set(xlabel="iteration", ylabel="cross-entropy per labelled pixel", title=title)
    ax_val.set(xlabel="iteration", ylabel="validation", ylim=(0, 1), title="held-out tiles")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


#: columns of a run's learning curve (validation rows of every stage, in training order)
CURVE_COLUMNS = ["stage", "iteration", "step", "train_loss", "pixel_accuracy", "mean_iu",
                 "mean_iu_gain"]


def learning_curve(stage_rows: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The validation rows of every stage's ``train_<stage>.csv`` on one axis of training steps.

    ``step`` counts iterations over the stages in order (32s, then 16s on top, ...);
    ``train_loss`` is the running mean of the last 20 training losses up to that row;
    ``mean_iu_gain`` is the change of validation mean IU since the stage's previous
    validation, so a stage still rising when it stopped (gain clearly > 0 on its last row) is
    visible rather than assumed saturated.
    """
    frames, offset = [], 0
    for stage, rows in stage_rows.items():
        rows = rows.reset_index(drop=True)
        loss = rows["loss"].astype(float).rolling(20, min_periods=1).mean()
        val = rows[rows["mean_iu"].notna()]
        frames.append(pd.DataFrame({
            "stage": stage, "iteration": val["iteration"].astype(int),
            "step": val["iteration"].astype(int) + offset, "train_loss": loss[val.index],
            "pixel_accuracy": val["pixel_accuracy"].astype(float),
            "mean_iu": val["mean_iu"].astype(float),
            "mean_iu_gain": val["mean_iu"].astype(float).diff()}))
        offset += int(rows["iteration"].max()) if len(rows) else 0
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS]


def plot_learning_curve(curve: pd.DataFrame, path: str | os.PathLike[str], *,
                        title: str) -> None:
    """Validation mean IU and pixel accuracy over all stages' steps, one colour per stage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (stage, part) in enumerate(curve.groupby("stage", sort=False)):
        ax.plot(part["step"], part["mean_iu"], "o-", color=f"C{i}", label=f"FCN-{stage} mean IU")
        ax.plot(part["step"], part["pixel_accuracy"], "s--", color=f"C{i}", alpha=0.5, ms=3,
                label=f"FCN-{stage} pixel acc.")
        last = part.iloc[-1]
        ax.annotate(f"{last['mean_iu']:.3f}", (last["step"], last["mean_iu"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.axvline(part["step"].iloc[-1], color="0.8", lw=0.8, zorder=0)
    ax.set(xlabel="training step (stages in order)", ylabel="validation (held-out tiles)",
           ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_rows(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    write_table(path, pd.DataFrame(rows, columns=CSV_COLUMNS))
