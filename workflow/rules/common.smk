# Shared helpers: sample sheet, classes, paths, and how rules call the mvfcnn CLI.
import json
import os
import shlex
import sys

import pandas as pd

from snakemake.exceptions import WorkflowError

from mvfcnn.core import layout
from mvfcnn.core.runs import baseline_init, baseline_runs as configured_baselines, mvfcnn_runs as configured_mvfcnn
from mvfcnn.core.config import SSL_ONLY_SPLITS, ClassSet, cv_folds, fold_samples
from mvfcnn.data.datasets import workflow_sample_sheet
from mvfcnn.inference.predict import inference_kwargs
from mvfcnn.core.errors import InputError
from mvfcnn.core.settings import report_view

# The `mvfcnn` CLI lives next to the interpreter running snakemake (a venv); put it first on the
# jobs' PATH (a conda env activated by --sdm conda still comes first).
shell.prefix(f'export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; ')

# Bad classes or a bad sample sheet stop the workflow with the package's one-line message
# (naming the sheet, the sample and the fault), without a traceback into the package.
try:
    CLASSES = ClassSet.from_config(config)
    SYNTHETIC_DIR = layout.SYNTHETIC if config["samples"] == "synthetic" else None
    SAMPLES = workflow_sample_sheet(config, CLASSES, layout.SYNTHETIC)
except InputError as err:
    raise WorkflowError(str(err)) from None
CLASSES_JSON = json.dumps(CLASSES.to_dict())

#: cross-validation folds of the sample sheet (`fold` column); empty = one train/test split
FOLDS = cv_folds(SAMPLES)
CV = bool(FOLDS)
#: results/mvfcnn/{variant}/{modality}[/fold{fold}]: one trained model and its predictions
RUN = layout.run_dir(CV)
for _row in SAMPLES.to_dict("records"):
    validate(_row, "../schemas/samples.schema.yaml")

ENV = "../envs/mvfcnn.yaml"


def needs_prepare(sample):
    """Released files (JPEG, RGB, an information band, a scale bar) go through `prepare` first."""
    row = SAMPLES.loc[sample]
    return layout.needs_prepare(row["sem"], row["labels"], row["crop_bottom"], row["scale_bar_um"],
                                config["prepare"]["upscale"],
                                config["prepare"]["intensity_percentiles"] is not None)


def sem_file(sample):
    """The SEM image the workflow reads: the prepared grey TIFF, or the sheet's file."""
    if needs_prepare(sample):
        return layout.prepared(sample)["image"]
    return SAMPLES.loc[sample, "sem"]


def labels_file(sample):
    """The label map the workflow reads (prepared beside the image when that is prepared)."""
    if not has(sample, "labels"):
        return ""
    if needs_prepare(sample):
        return layout.prepared(sample)["labels"]
    return SAMPLES.loc[sample, "labels"]


def has_mask_source(sample):
    """Objects come from a mask (given, or thresholded from the LOM), else from the labels."""
    return has(sample, "lom") or has(sample, "mask")


def fold_of(wildcards):
    """The `fold` wildcard of a cross-validated run, None otherwise."""
    return getattr(wildcards, "fold", None) if CV else None


def train_samples(wildcards):
    return fold_samples(SAMPLES, fold_of(wildcards), "train")


def test_samples(wildcards):
    return fold_samples(SAMPLES, fold_of(wildcards), "test")


def run_dirs():
    """Every configured run directory (variant x modality [x fold])."""
    return [layout.run_dir(CV).format(variant=v, modality=m, fold=f)
            for v, m in mvfcnn_runs() for f in (FOLDS or [None])]


def samples_in(*splits):
    return [s for s in SAMPLES.index if SAMPLES.loc[s, "split"] in splits]


def sample_file(column):
    """Input function: the sample sheet's file for `column` ('sem', 'lom', 'mask', 'labels')."""

    def _get(wildcards):
        if column == "labels":
            value = labels_file(wildcards.sample)
        elif column == "sem":
            value = sem_file(wildcards.sample)
        else:
            value = SAMPLES.loc[wildcards.sample, column]
        return [value] if value else []

    return _get


def has(sample, column):
    return bool(SAMPLES.loc[sample, column])


def cfg_json(*keys):
    """The config section at `keys` as compact JSON, passed to the CLI as --params-json."""
    node = config
    for key in keys:
        node = node[key]
    return json.dumps(node, separators=(",", ":"), sort_keys=True)


def network_inference_json():
    """The `inference` settings a softmax depends on (what `mvfcnn predict` reads), as JSON:
    a change to how objects vote then reruns the vote, not the network over every image."""
    return json.dumps(inference_kwargs(config["inference"]), separators=(",", ":"),
                      sort_keys=True)


def ssl_unlabelled_images(wildcards):
    """The sheet's `unlabelled` SEM micrographs, for the SSL phase of an SEM trunk only (a LOM
    would first need registering onto an SEM grid these rows may not have)."""
    if wildcards.modality != "sem" or not config["pretrain"]["ssl_iterations"]:
        return []
    return [sem_file(s) for s in samples_in(*SSL_ONLY_SPLITS)]


def modality_image(modality, sample):
    """The image a network sees: the SEM, or the LOM registered onto the SEM grid."""
    if modality == "sem":
        return sem_file(sample)
    return layout.REGISTERED_LOM.format(sample=sample)


# Each rule file adds its final targets here; `rule all` collects them.
TARGETS = {}


def all_targets(wildcards):
    return [path for paths in TARGETS.values() for path in paths]


def mvfcnn_runs():
    """(variant, modality) pairs to run: `run.combinations` if given, else variants x modalities."""
    return configured_mvfcnn(config)


def baseline_runs():
    """(method, modality) pairs of the object-based baselines to run."""
    return configured_baselines(config)


# A LOM run needs a LOM image for every labelled sample: say so before the DAG does (it would
# only report an empty input path of the register rule).
_NO_LOM = [s for s in SAMPLES.index if SAMPLES.loc[s, "split"] in ("train", "test")
           and not has(s, "lom")]
if _NO_LOM and any(m == "lom" for _, m in mvfcnn_runs() + baseline_runs()):
    raise WorkflowError(
        f"run.modalities / run.baseline_modalities include lom, but {len(_NO_LOM)} labelled "
        f"sample(s) have no LOM image (e.g. {_NO_LOM[0]!r}); run sem only or add their `lom` files"
    )


def rule_resources(rule_name, key, default):
    """Per-rule resources from config `resources.<rule>.<key>` (attempt-scaled by callers)."""
    return config.get("resources", {}).get(rule_name, {}).get(key, default)


def _mvfcnn_files(name, modalities=("sem", "lom")):
    """results/mvfcnn/{variant}/{modality}/<name> of every configured MVFCNN run."""
    run = layout.run_dir(False)
    return [f"{run.format(variant=v, modality=m)}/{name}" for v, m in mvfcnn_runs()
            if m in modalities]


def _baseline_files(name):
    """results/baselines/{method}/{modality}[/fold{fold}]/<name> of every configured baseline
    (of every fold of a cross-validated sheet)."""
    return [f"{layout.baseline_dir(CV).format(method=b, modality=m, fold=f)}/{name}"
            for b, m in baseline_runs() for f in (FOLDS or [None])]


def _preds(modalities):
    run = layout.run_dir(False)
    return [os.path.join(run.format(variant=v, modality=m), layout.PREDICTION.format(sample=s))
            for v, m in mvfcnn_runs() if m in modalities for s in samples_in("test")]


def _labels(split):
    return [labels_file(s) for s in samples_in(split) if has(s, "labels")]


def _sem(split):
    return [sem_file(s) for s in samples_in(split)]


def _lom(split):
    return [layout.REGISTERED_LOM.format(sample=s) for s in samples_in(split) if has(s, "lom")]
