"""Where the workflow writes things: path patterns shared by the Snakemake rules and the code.

Patterns use Snakemake's wildcard syntax (``{variant}``, ``{modality}``, ``{fold}``) and are
filled with ``str.format``. A cross-validated sample sheet (a ``fold`` column) adds one level,
``fold{fold}``, under each run, so one model per fold lives beside its own predictions.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results"
PREPARED = f"{RESULTS}/prepared"
SYNTHETIC = f"{RESULTS}/synthetic"
#: formats the rest of the workflow reads directly (memory-mapped); others are prepared first
DIRECT_SUFFIXES = {".tif", ".tiff"}
#: which MVFCNN variant stands for "MVFCNN" per modality (decided once, read by the figures)
BEST_RUN = f"{RESULTS}/best.json"


def run_dir(cv: bool) -> str:
    """One MVFCNN run: models, predictions, votes, metrics."""
    base = f"{RESULTS}/mvfcnn/{{variant}}/{{modality}}"
    return f"{base}/fold{{fold}}" if cv else base


#: per-sample outputs of the data stage, the baselines and a run's predictions
REGISTERED_LOM = f"{RESULTS}/registration/{{sample}}_lom.tif"
MASK = f"{RESULTS}/masks/{{sample}}.tif"
OBJECT_IDS = f"{RESULTS}/objects/{{sample}}.tif"
OBJECTS_TABLE = f"{RESULTS}/objects/{{sample}}.csv"
BASELINE_DIR = f"{RESULTS}/baselines/{{method}}/{{modality}}"
PREDICTION = "pred/{sample}.tif"  # under a run directory
#: each pixel's most probable non-matrix class (inference.object_vote second_phase; under a run)
SECOND_PHASE_PREDICTION = "pred_second_phase/{sample}.tif"
#: a run's per-class decision offsets (inference.class_offsets; under a run directory)
CLASS_OFFSETS = "class_offsets.json"
#: float16 (K, H, W) softmax of a test image (inference.object_offsets; under a run)
PROBABILITIES = "probs/{sample}.tif"
#: a run's per-class offsets of the object vote (inference.object_offsets; under a run)
OBJECT_OFFSETS = "object_offsets.json"
#: a run's validation mean IU per stage on one step axis (under a run directory)
LEARNING_CURVE = "learning_curve.csv"
LEARNING_CURVE_PNG = "learning_curve.png"


def under(results_dir: str | Path, pattern: str, **wildcards: object) -> Path:
    """``pattern`` filled and re-rooted at ``results_dir``: how the report code (which takes
    ``--results-dir``) finds the files the rules wrote at the same pattern under results/."""
    relative = pattern.format(**wildcards).removeprefix(f"{RESULTS}/")
    return Path(results_dir) / relative


def baseline_dir(cv: bool) -> str:
    """One object-based baseline run (trained on a fold's training objects when cross-validated,
    like the MVFCNN run it is compared with)."""
    return f"{BASELINE_DIR}/fold{{fold}}" if cv else BASELINE_DIR


def crops(cv: bool) -> str:
    """The warped object crops (``crop_objects``) of one modality and split, or, cross-validated,
    of one sample: each sample trains five folds' baselines and tests one, so it is cropped once
    and every fold's baseline reads the files of its own training and test samples."""
    base = f"{RESULTS}/baselines/crops"
    return f"{base}/{{modality}}/{{sample}}.npz" if cv else f"{base}/{{modality}}_{{split}}.npz"


def tiles_stem(cv: bool) -> str:
    """The tile index of a run, without suffix (``.csv`` table, ``.json`` summary)."""
    base = f"{RESULTS}/tiles/{{variant}}/{{modality}}"
    return f"{base}/fold{{fold}}" if cv else base


def trunk_dir(cv: bool) -> str:
    """The patch-pretrained trunk (``pretrained: patches``) of a modality [and fold]."""
    base = f"{RESULTS}/pretrain/{{modality}}"
    return f"{base}/fold{{fold}}" if cv else base


def prepared(sample: str) -> dict[str, str]:
    """The files ``prepare`` writes for one sample."""
    base = f"{PREPARED}/{sample}"
    return {"image": f"{base}/image.tif", "labels": f"{base}/labels.tif",
            "json": f"{base}/prepared.json"}


def needs_prepare(sem: str, labels: str, crop_bottom: str, scale_bar_um: str,
                  upscale: int = 1, stretch: bool = False) -> bool:
    """A sample is prepared when its files are not plain TIFFs, it has a band to crop, or the
    images are enlarged or their grey values stretched."""
    if str(crop_bottom or "0") not in ("", "0") or scale_bar_um or upscale != 1 or stretch:
        return True
    return any(path and Path(path).suffix.lower() not in DIRECT_SUFFIXES
               for path in (sem, labels))


def crossval_name(samples: str) -> str:
    """The cross-validation tables' name for the config's ``samples``: ``metaldam`` for the
    MetalDAM release, ``crossval`` for any cross-validated sample sheet."""
    return "metaldam" if samples == "metaldam" else "crossval"


def crossval_table(name: str) -> dict[str, str]:
    """The cross-validation table of a dataset (``metaldam`` or ``crossval``), with its pooled
    confusion, the phase-fraction errors (per class, and per test image and class), the
    object comparison (MVFCNN and the object-based baselines, per fold) and every fold's
    learning curve."""
    base = f"{RESULTS}/tables/{name}"
    return {"csv": f"{base}.csv", "md": f"{base}.md", "html": f"{base}.html",
            "confusion": f"{base}_confusion.csv",
            "phase_fractions": f"{base}_phase_fractions.csv",
            "phase_fractions_per_image": f"{base}_phase_fractions_per_image.csv",
            "objects_csv": f"{base}_objects.csv", "objects_md": f"{base}_objects.md",
            "objects_html": f"{base}_objects.html",
            "learning_curves": f"{base}_learning_curves.csv",
            "learning_curves_png": f"{RESULTS}/figures/{name}_learning_curves.png"}


def _job_name(cv: bool, run: bool, extra: str) -> str:
    name = "{variant}_{modality}" if run else "{modality}"
    return name + ("_fold{fold}" if cv else "") + extra


def log_path(rule: str, cv: bool, *, run: bool = True, extra: str = "") -> str:
    """The log of one job of a run rule (``run=False``: keyed by modality [and fold] only)."""
    return f"{RESULTS}/logs/{rule}/{_job_name(cv, run, extra)}.log"


def benchmark_path(rule: str, cv: bool, *, run: bool = True, extra: str = "") -> str:
    """The Snakemake benchmark TSV of one job, named like its log."""
    return f"{RESULTS}/benchmarks/{rule}/{_job_name(cv, run, extra)}.tsv"
