# Shared helpers: sample sheet, classes, paths, and how rules call the mvfcnn CLI.
import json
import os
import shlex
import sys

import pandas as pd

from snakemake.exceptions import WorkflowError

from mvfcnn import layout
from mvfcnn.runs import baseline_init, baseline_runs as configured_baselines, mvfcnn_runs as configured_mvfcnn
from mvfcnn.config import SSL_ONLY_SPLITS, ClassSet, cv_folds, fold_samples, workflow_sample_sheet
from mvfcnn.errors import InputError
from mvfcnn.settings import report_view

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
#: name of the cross-validation table and figure (results/tables/<name>.csv, ...)
CROSSVAL_NAME = layout.crossval_name(config["samples"])


def crossval_run():
    """(variant, modality) whose folds the cross-validation table reports: the first run."""
    return mvfcnn_runs()[0]

for _row in SAMPLES.to_dict("records"):
    validate(_row, "../schemas/samples.schema.yaml")

ENV = "../envs/mvfcnn.yaml"


def needs_prepare(sample):
    """Released files (JPEG, RGB, an information band, a scale bar) go through `prepare` first."""
    row = SAMPLES.loc[sample]
    return layout.needs_prepare(row["sem"], row["labels"], row["crop_bottom"], row["scale_bar_um"],
                                config["prepare"]["upscale"])


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


def _registration_inputs(wildcards):
    inputs = {"sem": sem_file(wildcards.sample), "lom": SAMPLES.loc[wildcards.sample, "lom"]}
    if SYNTHETIC_DIR is not None:
        inputs["truth"] = f"{SYNTHETIC_DIR}/{wildcards.sample}/transform.json"
    return inputs


def _mask_inputs(wildcards):
    inputs = {"sem": sem_file(wildcards.sample)}
    if has(wildcards.sample, "mask"):
        inputs["mask"] = SAMPLES.loc[wildcards.sample, "mask"]
    else:
        inputs["lom"] = layout.REGISTERED_LOM.format(sample=wildcards.sample)
    if has(wildcards.sample, "labels"):
        inputs["labels"] = labels_file(wildcards.sample)
    return inputs


def _labels_arg(wildcards, input):
    """Optional `--labels FILE` as a list, so the rule's `{params.labels:q}` quotes each item."""
    return ["--labels", input.labels] if "labels" in input.keys() else []


def variant_cfg(variant):
    return config["variants"][variant]


def rule_resources(rule_name, key, default):
    """Per-rule resources from config `resources.<rule>.<key>` (attempt-scaled by callers)."""
    return config.get("resources", {}).get(rule_name, {}).get(key, default)


def _parent_model(wildcards):
    index = STAGES.index(wildcards.stage)
    if index == 0:
        return []
    return os.path.join(RUN.format(**wildcards), f"fcn{STAGES[index - 1]}.pt")


#: `pretrained:` value that makes FCN-32s start from the trunk of the pretrain_trunk rule
PRETRAINED_PATCHES = "patches"


def pretrained_trunk_file(wildcards):
    return os.path.join(layout.trunk_dir(CV).format(**wildcards), "trunk.pt")


def trunk_layout_json():
    """The `fcn` keys that shape the trunk (what pretraining needs), as compact JSON."""
    layout = {key: config["fcn"][key] for key in ("width", "fc_channels")}
    if config["fcn"].get("batch_norm"):  # only when on: the paper's runs keep their params
        layout["batch_norm"] = True
    return json.dumps(layout, separators=(",", ":"), sort_keys=True)


def _pretrained_trunk(wildcards):
    """FCN-32s of a `pretrained: patches` variant depends on its modality's pretrained trunk."""
    if wildcards.stage != STAGES[0]:
        return []
    if variant_cfg(wildcards.variant)["pretrained"] != PRETRAINED_PATCHES:
        return []
    return pretrained_trunk_file(wildcards)


def _variant_json(wildcards):
    """The variant's settings, with `patches` resolved to the pretrained trunk file."""
    settings = dict(variant_cfg(wildcards.variant))
    if settings["pretrained"] == PRETRAINED_PATCHES:
        settings["pretrained"] = pretrained_trunk_file(wildcards)
    return json.dumps(settings, separators=(",", ":"))


def _baselines_cfg():
    return config.get("baselines", {})


def _baseline_json(*keys):
    """Only the `baselines` keys a job uses, so editing one method does not rerun the others."""
    section = _baselines_cfg()
    return json.dumps({k: section[k] for k in keys if k in section}, separators=(",", ":"),
                      sort_keys=True)



def _crop_samples(wildcards):
    """The samples whose objects a crops file holds: a split, or (cross-validated) one sample."""
    return [wildcards.sample] if CV else samples_in(wildcards.split)


def _baseline_crops(role):
    """Input function: the crops files a baseline trains (`role` train) or is tested on."""

    def _get(wildcards):
        if not CV:
            return layout.crops(CV).format(modality=wildcards.modality, split=role)
        return [layout.crops(CV).format(modality=wildcards.modality, sample=s)
                for s in fold_samples(SAMPLES, fold_of(wildcards), role)]

    return _get


def _crop_source(modality, sample):
    """§4.1: objects are cut from the masked SEM, or from the registered LOM (masked in the job);
    a sample with objects from its labels alone (MetalDAM) from its SEM, masked in the job."""
    if modality == "sem" and has_mask_source(sample):
        return f"results/masks/{sample}_masked_sem.tif"
    return modality_image(modality, sample)


def _crop_mask(sample):
    """The second-phase mask a crop is masked with: the mask rule's, or (objects from labels)
    the object id image, whose non-zero pixels are the labelled second phase above min area."""
    return layout.MASK.format(sample=sample) if has_mask_source(sample) else \
        layout.OBJECT_IDS.format(sample=sample)


def _baseline_init(method):
    """A network baseline's init: `match` resolved to the compared MVFCNN variant's."""
    from mvfcnn.baselines import PRETRAINED_METHODS

    return baseline_init(config, method) if method in PRETRAINED_METHODS else None


def _baseline_trunk(wildcards):
    """train_baseline of a `patches` baseline depends on its modality's [and fold's] pretrained
    trunk (the very file the FCN starts from); other methods and inits depend on nothing more."""
    if _baseline_init(wildcards.method) != PRETRAINED_PATCHES:
        return []
    return pretrained_trunk_file(wildcards)  # a fold's baseline: that fold's trunk


def _baseline_trunk_arg(wildcards):
    """`--trunk-json LAYOUT` (as a list for :q) when the init may be a trunk in the FCN layout."""
    init = _baseline_init(wildcards.method)
    if init is None or init in ("none", "imagenet"):
        return []
    return ["--trunk-json", trunk_layout_json()]


def _train_baseline_params(wildcards):
    method = wildcards.method
    keys = ["precision", "device", method]
    if method.endswith("_svm"):
        keys.append("svm")
    params = json.loads(_baseline_json(*keys))
    init = _baseline_init(method)
    if init is not None:
        params[method] = {**params.get(method, {}), "pretrained": init}
        trunk = _baseline_trunk(wildcards)
        if trunk:
            params[method]["pretrained"] = trunk
    return json.dumps(params, separators=(",", ":"), sort_keys=True)


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


# --- classify (workflow/rules/classify.smk)


def classify_run():
    """(variant, modality) whose model bundle classifies the `predict` samples."""
    section = config["classify"]
    modality = section["modality"]
    variant = section["variant"]
    if variant is None:
        runs = [v for v, m in mvfcnn_runs() if m == modality]
        if not runs:
            raise ValueError(
                f"classify.modality is {modality!r} but no configured MVFCNN run uses it; "
                "set classify.variant or add the modality to run:"
            )
        variant = runs[0]
    if variant not in config["variants"]:
        raise ValueError(
            f"classify.variant {variant!r} is not a configured variant ({sorted(config['variants'])})"
        )
    return variant, modality


def pixel_size_um():
    """µm/px of the micrographs: classify.pixel_size_um, else the synthetic dataset's, else None."""
    value = config["classify"]["pixel_size_um"]
    if value is None and SYNTHETIC_DIR is not None:
        value = config["synthetic"]["pixel_size_um"]
    return value


def _pixel_size_arg(wildcards):
    value = pixel_size_um()
    return [] if value is None else ["--pixel-size", str(value)]


def _bundle_training_json(wildcards):
    """The training settings a bundle records (what made the model)."""
    return json.dumps(
        {
            "fcn": config["fcn"],
            "variant": variant_cfg(wildcards.variant),
            "tiles": config["tiles"],
            "seed": config["seed"],
            "samples": config["samples"],
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def _classify_bundle(wildcards):
    variant, modality = classify_run()
    return f"results/mvfcnn/{variant}/{modality}/model_bundle.pt"


def _classify_image(wildcards):
    return modality_image(classify_run()[1], wildcards.sample)


# --- cross-validation table and figure (workflow/rules/report.smk)

CROSSVAL = layout.crossval_table(CROSSVAL_NAME)
CROSSVAL_FIGURE = f"results/figures/{CROSSVAL_NAME}_examples.png"


def _crossval_run_dir(fold):
    variant, modality = crossval_run()
    return layout.run_dir(CV).format(variant=variant, modality=modality, fold=fold)


def _crossval_confusions(wildcards):
    return [os.path.join(_crossval_run_dir(f), "pixel_confusion.csv") for f in FOLDS]


def _crossval_predictions(wildcards):
    return [os.path.join(_crossval_run_dir(f), "pred", f"{s}.tif")
            for f in FOLDS for s in fold_samples(SAMPLES, f, "test")]


def _crossval_tests():
    """(fold, sample, labels, prediction) of every test image of every fold."""
    return [(fold, sample, labels_file(sample),
             os.path.join(_crossval_run_dir(fold), "pred", f"{sample}.tif"))
            for fold in FOLDS for sample in fold_samples(SAMPLES, fold, "test")]


def _crossval_test_labels(wildcards):
    return [labels for _, _, labels, _ in _crossval_tests()]


def _crossval_test_images(wildcards, input):
    """--test-image FOLD SAMPLE IMAGE LABELS PRED for every test image (quoted by :q)."""
    modality = crossval_run()[1]
    parts = []
    for fold, sample, labels, pred in _crossval_tests():
        parts += ["--test-image", fold, sample, modality_image(modality, sample), labels, pred]
    return parts


def _crossval_test_pairs(wildcards, input):
    """--test-pair FOLD SAMPLE LABELS PRED for every test image (quoted by :q): the phase
    fractions compare each prediction with the labels the evaluation scored it against."""
    parts = []
    for test in _crossval_tests():
        parts += ["--test-pair", *test]
    return parts


def _crossval_object_runs():
    """(method, fold, metrics.json) of MVFCNN and of every configured baseline (of the
    cross-validated modality) on every fold: the runs the crossval objects table compares."""
    modality = crossval_run()[1]
    runs = []
    for fold in FOLDS:
        runs.append(("mvfcnn", fold, os.path.join(_crossval_run_dir(fold), "metrics.json")))
        runs += [(method, fold, os.path.join(layout.baseline_dir(CV).format(
                     method=method, modality=modality, fold=fold), "metrics.json"))
                 for method, m in baseline_runs() if m == modality]
    return runs


def _crossval_object_metrics(wildcards):
    return [path for _, _, path in _crossval_object_runs()]


def _crossval_object_args(wildcards):
    """--run METHOD FOLD METRICS for every compared run (quoted by :q)."""
    return [part for run in _crossval_object_runs() for part in ("--run", *run)]
