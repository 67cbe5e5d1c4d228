# Tables 1-6 and Figures 4, 6, 7, 8 of the paper, with the paper's numbers beside ours, for
# `snakemake --report results/report.html`. The paper's numbers live only in
# workflow/resources/paper_tables.yaml. Which MVFCNN run stands for "the best" is decided once by
# `best_run` (ft_balanced_aug if configured, else the best object accuracy; results/best.json).
# Report jobs get only the config sections they read (mvfcnn.settings.REPORT_SECTIONS), so a
# change of resources, registration or classify settings reruns no table or figure.

PAPER_TABLES = os.path.join(workflow.basedir, "resources", "paper_tables.yaml")
TABLE_NAMES = [f"table{i}" for i in range(1, 7)]
REPORT_CONFIG_JSON = json.dumps(report_view(config), separators=(",", ":"), sort_keys=True)


rule best_run:
    """Which MVFCNN variant stands for "MVFCNN" in the figures, per modality."""
    input:
        metrics=_mvfcnn_files("metrics.json"),
    output:
        layout.BEST_RUN,
    params:
        config=REPORT_CONFIG_JSON,
    log:
        "results/logs/report/best_run.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "mvfcnn best-run --results-dir results --config-json {params.config:q}"
        " --out {output:q} 2> {log:q}"


rule tables:
    """Tables 1-6 (CSV, markdown, HTML for the report) and summary.md: ours beside the paper's."""
    input:
        paper=PAPER_TABLES,
        mvfcnn=_mvfcnn_files("metrics.json"),
        confusion=_mvfcnn_files("confusion.csv"),
        objects=_mvfcnn_files("objects.csv"),
        tiles=[f"results/tiles/{v}/{m}.csv" for v, m in mvfcnn_runs()],
        baselines=_baseline_files("metrics.json"),
        baseline_info=_baseline_files("info.json"),
    output:
        csv=expand("results/tables/{name}.csv", name=TABLE_NAMES),
        md=expand("results/tables/{name}.md", name=TABLE_NAMES),
        html=[
            report(
                f"results/tables/{name}.html",
                category="Tables",
                caption=f"../report/{name}.rst",
                labels={"table": name.replace("table", "Table ")},
            )
            for name in TABLE_NAMES
        ],
        summary="results/tables/summary.md",
        summary_html=report(
            "results/tables/summary.html",
            category="Tables",
            caption="../report/summary.rst",
            labels={"table": "Summary"},
        ),
    params:
        config=REPORT_CONFIG_JSON,
    log:
        "results/logs/report/tables.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "mvfcnn tables --results-dir results --config-json {params.config:q}"
        " --paper {input.paper:q} --outdir results/tables 2> {log:q}"


# The paper's figures, one rule each (`--which` picks the figure): what they read, their label
# in the report, their memory and time. fig8b segments noisy patches, so it runs like predict.
BEST_RUN_ARG = f" --best-run {shlex.quote(layout.BEST_RUN)}"
FIGURES = {
    # Fig. 4: one training example per class: SEM | registered LOM | binary mask
    "fig4": dict(
        rule_name="figure_examples", file="fig4_examples", label="Fig. 4", best=False,
        mem_mb=2000, runtime=10,
        inputs=dict(
            sem=_sem("train"),
            lom=_lom("train"),
            labels=_labels("train"),
            masks=[layout.MASK.format(sample=s) for s in samples_in("train") if has_mask_source(s)],
        ),
    ),
    # Fig. 6: best and worst SEM test patches (image | ground truth | prediction)
    "fig6": dict(
        rule_name="figure_segmentation", file="fig6_segmentation", label="Fig. 6", best=True,
        mem_mb=4000, runtime=15,
        inputs=dict(
            metrics=_mvfcnn_files("metrics.json", ("sem",)),
            preds=_preds(("sem",)),
            sem=_sem("test"),
            labels=_labels("test"),
        ),
    ),
    # Fig. 7: per test image, the max-voted object map beside the ground-truth objects
    "fig7": dict(
        rule_name="figure_maxvoting", file="fig7_maxvoting", label="Fig. 7", best=True,
        mem_mb=4000, runtime=15,
        inputs=dict(
            metrics=_mvfcnn_files("metrics.json", ("sem",)),
            objects=_mvfcnn_files("objects.csv", ("sem",)),
            ids=[layout.OBJECT_IDS.format(sample=s) for s in samples_in("test")],
            sem=_sem("test"),
        ),
    ),
    # Fig. 8a: ground truth | LOM | LOM segmentation | SEM | SEM segmentation
    "fig8a": dict(
        rule_name="figure_lom_vs_sem", file="fig8a_lom_vs_sem", label="Fig. 8a", best=True,
        mem_mb=4000, runtime=15,
        inputs=dict(
            metrics=_mvfcnn_files("metrics.json"),
            preds=_preds(("sem", "lom")),
            sem=_sem("test"),
            lom=_lom("test"),
            labels=_labels("test"),
        ),
    ),
    # Fig. 8b: seeded dirt/scratch/noise on SEM test patches, segmented by the final model
    "fig8b": dict(
        rule_name="figure_noise", file="fig8b_noise", label="Fig. 8b", best=True,
        mem_mb=rule_resources("predict", "mem_mb", 4000), runtime=30,
        threads=rule_resources("predict", "threads", 2),
        inputs=dict(
            metrics=_mvfcnn_files("metrics.json", ("sem",)),
            models=_mvfcnn_files(f"fcn{FINAL_STAGE}.pt", ("sem",)),
            sem=_sem("test"),
            labels=_labels("test"),
        ),
    ),
}

for which, figure in FIGURES.items():

    rule:
        name:
            figure["rule_name"]
        input:
            **({"best": layout.BEST_RUN} if figure["best"] else {}),
            **figure["inputs"],
        output:
            report(
                f"results/figures/{figure['file']}.png",
                category="Figures",
                caption=f"../report/{figure['file']}.rst",
                labels={"figure": figure["label"]},
            ),
        params:
            config=REPORT_CONFIG_JSON,
            which=which,
            best_run=BEST_RUN_ARG if figure["best"] else "",
        log:
            f"results/logs/report/{which}.log",
        conda:
            ENV
        threads: figure.get("threads", 1)
        resources:
            mem_mb=lambda w, attempt, mem=figure["mem_mb"]: mem * attempt,
            runtime=figure["runtime"],
        shell:
            "mvfcnn figures --results-dir results --config-json {params.config:q}"
            " --outdir results/figures --which {params.which}{params.best_run} 2> {log:q}"


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


TARGETS["report"] = [
    CROSSVAL[key]
    for key in ("csv", "md", "html", "phase_fractions", "phase_fractions_per_image",
                "learning_curves", "learning_curves_png")
] + [CROSSVAL_FIGURE] + [
    CROSSVAL[key] for key in ("objects_csv", "objects_md", "objects_html") if baseline_runs()
] if CV else (
    expand("results/tables/{name}.{ext}", name=TABLE_NAMES, ext=["csv", "md", "html"])
    + ["results/tables/summary.md", "results/tables/summary.html"]
    + [
        "results/figures/fig4_examples.png",
        "results/figures/fig6_segmentation.png",
        "results/figures/fig7_maxvoting.png",
        "results/figures/fig8a_lom_vs_sem.png",
        "results/figures/fig8b_noise.png",
    ]
)
