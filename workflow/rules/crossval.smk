# Cross-validated sample sheets (MetalDAM): per-fold and mean ± SE pixel metrics beside the
# published numbers, phase fractions, the objects table against the baselines, an example figure
# and the learning curves, over the folds of the first configured MVFCNN run.

include: "helpers/crossval.smk"


rule crossval_table:
    """Cross-validation: per fold and mean ± SE pixel metrics, per-class IoU, pooled confusion,
    beside the published numbers (workflow/resources/paper_tables.yaml); and the phase-fraction
    errors of every test prediction against its labels (per image, and per class over all)."""
    input:
        paper=PAPER_TABLES,
        confusions=_crossval_confusions,
        preds=_crossval_predictions,
        labels=_crossval_test_labels,
    output:
        csv=CROSSVAL["csv"],
        md=CROSSVAL["md"],
        confusion=CROSSVAL["confusion"],
        phase_per_image=CROSSVAL["phase_fractions_per_image"],
        phase=report(
            CROSSVAL["phase_fractions"],
            category="Tables",
            caption="../report/phase_fractions.rst",
            labels={"table": "Phase fractions"},
        ),
        html=report(
            CROSSVAL["html"],
            category="Tables",
            caption="../report/crossval.rst",
            labels={"table": "Cross-validation"},
        ),
    params:
        folds=FOLDS,
        classes=CLASSES_JSON,
        key=CROSSVAL_NAME,
        exclude=config["crossval"]["secondary_mean_excludes"],
        test_pairs=_crossval_test_pairs,
        title=lambda w: "{} cross-validation, {} / {}, {} folds".format(
            CROSSVAL_NAME, *crossval_run(), len(FOLDS)
        ),
    log:
        "results/logs/report/crossval_table.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "mvfcnn crossval --folds {params.folds:q} --confusions {input.confusions:q}"
        " --classes-json {params.classes:q} --literature {input.paper:q}"
        " --literature-key {params.key:q} --secondary-exclude {params.exclude:q}"
        " --title {params.title:q} --out-csv {output.csv:q} --out-md {output.md:q}"
        " --out-html {output.html:q} --out-confusion {output.confusion:q}"
        " {params.test_pairs:q} --out-phase-fractions {output.phase:q}"
        " --out-phase-fractions-per-image {output.phase_per_image:q} 2> {log:q}"


rule crossval_objects:
    """The paper's central comparison on every fold: MVFCNN (majority of each object's predicted
    pixels) against the object-based baselines (each object's crop), on the same test objects:
    object accuracy, mean class recall and per-class recall, per fold and mean ± SE."""
    input:
        paper=PAPER_TABLES,
        metrics=_crossval_object_metrics,
    output:
        csv=CROSSVAL["objects_csv"],
        md=CROSSVAL["objects_md"],
        html=report(
            CROSSVAL["objects_html"],
            category="Tables",
            caption="../report/crossval_objects.rst",
            labels={"table": "Objects, cross-validated"},
        ),
    params:
        runs=_crossval_object_args,
        classes=CLASSES_JSON,
        title=lambda w: "{} objects: MVFCNN ({} / {}) vs object-based baselines, {} folds".format(
            CROSSVAL_NAME, *crossval_run(), len(FOLDS)
        ),
        note=(
            "objects: 8-connected components of each second-phase class of the test labels, "
            f"{config['masking']['min_object_area']} px and up; MVFCNN votes the majority class "
            "of its predicted pixels, each baseline classifies the object crop (trained on the "
            "fold's training images)"
        ),
        config=REPORT_CONFIG_JSON,
        exclude=config["crossval"]["secondary_mean_excludes"],
    log:
        "results/logs/report/crossval_objects.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "mvfcnn crossval-objects {params.runs:q} --classes-json {params.classes:q}"
        " --paper {input.paper:q} --title {params.title:q} --config-json {params.config:q}"
        " --secondary-exclude {params.exclude:q}"
        " --note {params.note:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-html {output.html:q} 2> {log:q}"


rule crossval_figure:
    """One test image per fold: micrograph, truth and prediction in the class colours."""
    input:
        preds=_crossval_predictions,
        images=lambda w: [modality_image(crossval_run()[1], s) for s in samples_in("test")],
        labels=lambda w: [labels_file(s) for s in samples_in("test")],
    output:
        report(
            CROSSVAL_FIGURE,
            category="Figures",
            caption="../report/crossval_examples.rst",
            labels={"figure": "Cross-validation examples"},
        ),
    params:
        classes=CLASSES_JSON,
        test_images=_crossval_test_images,
    log:
        "results/logs/report/crossval_figure.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mvfcnn crossval-figure {params.test_images:q} --classes-json {params.classes:q}"
        " --out {output:q} 2> {log:q}"


rule crossval_learning_curves:
    """Every fold's validation mean IU per stage on one figure: saturation visible per fold."""
    input:
        curves=lambda w: [os.path.join(_crossval_run_dir(f), layout.LEARNING_CURVE) for f in FOLDS],
    output:
        csv=CROSSVAL["learning_curves"],
        png=report(
            CROSSVAL["learning_curves_png"],
            category="Training",
            caption="../report/crossval_learning_curves.rst",
        ),
    params:
        folds=FOLDS,
        title="{} learning curves, {} / {}, {} folds".format(
            CROSSVAL_NAME, *crossval_run(), len(FOLDS)
        ),
    log:
        "results/logs/report/crossval_learning_curves.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "mvfcnn crossval-curves --folds {params.folds:q} --curves {input.curves:q}"
        " --title {params.title:q} --out-csv {output.csv:q} --out-png {output.png:q} 2> {log:q}"


TARGETS["crossval"] = [
    CROSSVAL[key]
    for key in ("csv", "md", "html", "phase_fractions", "phase_fractions_per_image",
                "learning_curves", "learning_curves_png")
] + [CROSSVAL_FIGURE] + [
    CROSSVAL[key] for key in ("objects_csv", "objects_md", "objects_html") if baseline_runs()
] if CV else []
