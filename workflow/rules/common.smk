# Shared helpers: sample sheet, classes, paths, and how rules call the mvfcnn CLI.
import json
import os
import sys

import pandas as pd

from mvfcnn.config import ClassSet, check_sample_sheet, load_sample_sheet

# The CLI lives next to the interpreter running snakemake (a venv or conda env); put it first.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

CLASSES = ClassSet.from_config(config)
CLASSES_JSON = json.dumps(CLASSES.to_dict())

if config["samples"] == "synthetic":
    from mvfcnn.synthetic import sample_sheet as _synthetic_sheet

    SYNTHETIC_DIR = "results/synthetic"
    SAMPLES = check_sample_sheet(
        _synthetic_sheet(config["synthetic"], SYNTHETIC_DIR, CLASSES), classes=CLASSES
    )
else:
    SYNTHETIC_DIR = None
    SAMPLES = load_sample_sheet(config["samples"], CLASSES)

for _row in SAMPLES.to_dict("records"):
    validate(_row, "../schemas/samples.schema.yaml")

ENV = "../../envs/mvfcnn.yaml"


def samples_in(*splits):
    return [s for s in SAMPLES.index if SAMPLES.loc[s, "split"] in splits]


def sample_file(column):
    """Input function: the sample sheet's file for `column` ('sem', 'lom', 'mask', 'labels')."""

    def _get(wildcards):
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


def modality_image(modality, sample):
    """The image a network sees: the SEM, or the LOM registered onto the SEM grid."""
    if modality == "sem":
        return SAMPLES.loc[sample, "sem"]
    return f"results/registration/{sample}_lom.tif"


# Each rule file adds its final targets here; `rule all` collects them.
TARGETS = {}


def all_targets(wildcards):
    return [path for paths in TARGETS.values() for path in paths]


def mvfcnn_runs():
    """(variant, modality) pairs to run: `run.combinations` if given, else variants x modalities."""
    combos = config["run"].get("combinations")
    if combos:
        return [(c["variant"], c["modality"]) for c in combos]
    return [(v, m) for v in config["run"]["variants"] for m in config["run"]["modalities"]]


def baseline_runs():
    """(method, modality) pairs of the object-based baselines to run."""
    return [(b, m) for b in config["run"]["baselines"] for m in config["run"]["baseline_modalities"]]
