# Helpers of rules/crossval.smk: the folds' files of the run the tables report.


#: name of the cross-validation table and figure (results/tables/<name>.csv, ...)
CROSSVAL_NAME = layout.crossval_name(config["samples"])


def crossval_run():
    """(variant, modality) whose folds the cross-validation table reports: the first run."""
    return mvfcnn_runs()[0]


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
