# Tables 1-6 and Figures 4, 6, 7, 8 of the paper, with the paper's numbers beside ours, for
# `snakemake --report results/report.html`. The paper's numbers live only in
# workflow/resources/paper_tables.yaml. Which MVFCNN run stands for "the best" is decided once by
# `best_run` (ft_balanced_aug if configured, else the best object accuracy; results/best.json).
# Report jobs get only the config sections they read (mvfcnn.core.settings.REPORT_SECTIONS), so a
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
        " --runs {input.metrics:q} --out {output:q} 2> {log:q}"


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
        " --runs {input.mvfcnn:q} {input.baselines:q}"
        " --paper {input.paper:q} --outdir results/tables 2> {log:q}"


# The paper's figures, one rule each (`--which` picks the figure): what they read, their label
# in the report, their memory and time. fig8b segments noisy patches, so it runs like predict.
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
            best_run=["--best-run", layout.BEST_RUN] if figure["best"] else [],
            runs=["--runs", *figure["inputs"]["metrics"]] if "metrics" in figure["inputs"] else [],
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
            " --outdir results/figures --which {params.which:q} {params.best_run:q}"
            " {params.runs:q} 2> {log:q}"


TARGETS["report"] = [] if CV else (
    expand("results/tables/{name}.{ext}", name=TABLE_NAMES, ext=["csv", "md", "html"])
    + ["results/tables/summary.md", "results/tables/summary.html"]
    + [f"results/figures/{figure['file']}.png" for figure in FIGURES.values()]
)
