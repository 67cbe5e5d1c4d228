# Use the trained model on new micrographs: a self-contained model bundle per MVFCNN run, and
# `mvfcnn classify` on every sample with split "predict" (objects from the sample's mask, i.e.
# the same objects the `vote` rule uses), into results/classify/{sample}/ and the report.

include: "helpers/classify.smk"


CLASSIFY_FILES = [
    "objects.csv",
    "summary.csv",
    "low_confidence.csv",
    "overlay.png",
    "overlay_preview.png",
    "classmap.ome.tif",
    "size_distribution.png",
    "run.json",
]


rule bundle:
    """Final-stage model + classes, inference/masking settings, pixel size, training config,
    metrics and git commit in one file, so `mvfcnn classify` needs no workflow config."""
    input:
        model=f"results/mvfcnn/{{variant}}/{{modality}}/fcn{FINAL_STAGE}.pt",
        metrics="results/mvfcnn/{variant}/{modality}/metrics.json",
        offsets=class_offsets_file,
    output:
        "results/mvfcnn/{variant}/{modality}/model_bundle.pt",
    params:
        offsets=class_offsets_arg,
        classes=CLASSES_JSON,
        inference=cfg_json("inference"),
        masking=cfg_json("masking"),
        training=_bundle_training_json,
        pixel=_pixel_size_arg,
    log:
        "results/logs/bundle/{variant}_{modality}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mvfcnn bundle --model {input.model:q} --metrics {input.metrics:q}"
        " --classes-json {params.classes:q} --inference-json {params.inference:q}"
        " --masking-json {params.masking:q} --training-json {params.training:q} {params.pixel:q}"
        " --modality {wildcards.modality:q} --variant {wildcards.variant:q} {params.offsets:q}"
        " --out {output:q} 2> {log:q}"


rule classify:
    """Classify one `predict` sample: segmentation, max-voting, phase fractions, sizes, review list."""
    input:
        bundle=_classify_bundle,
        image=_classify_image,
        mask=layout.MASK,
    output:
        objects="results/classify/{sample}/objects.csv",
        summary=report(
            "results/classify/{sample}/summary.csv",
            category="Classification",
            subcategory="{sample}",
            caption="../report/classify_summary.rst",
            labels={"sample": "{sample}", "output": "phase fractions and sizes"},
        ),
        low_confidence="results/classify/{sample}/low_confidence.csv",
        overlay="results/classify/{sample}/overlay.png",
        preview=report(
            "results/classify/{sample}/overlay_preview.png",
            category="Classification",
            subcategory="{sample}",
            caption="../report/classify_overlay.rst",
            labels={"sample": "{sample}", "output": "overlay"},
        ),
        classmap="results/classify/{sample}/classmap.ome.tif",
        sizes=report(
            "results/classify/{sample}/size_distribution.png",
            category="Classification",
            subcategory="{sample}",
            caption="../report/classify_sizes.rst",
            labels={"sample": "{sample}", "output": "size distribution"},
        ),
        run="results/classify/{sample}/run.json",
    params:
        outdir=lambda w, output: os.path.dirname(os.path.dirname(output.objects)),
        classes=CLASSES_JSON,
        low_confidence=config["classify"]["low_confidence"],
    log:
        "results/logs/classify/{sample}.log",
    benchmark:
        "results/benchmarks/classify/{sample}.tsv"
    conda:
        ENV
    threads: rule_resources("classify", "threads", 2)
    resources:
        gpu=1,
        mem_mb=lambda w, attempt: rule_resources("classify", "mem_mb", 4000) * attempt,
        runtime=lambda w, attempt: rule_resources("classify", "runtime", 30) * attempt,
    shell:
        "mvfcnn classify {input.image:q} --model {input.bundle:q} --mask {input.mask:q}"
        " --names {wildcards.sample:q} --out {params.outdir:q} --classes-json {params.classes:q}"
        " --low-confidence {params.low_confidence:q} --threads {threads} --prepared --no-progress"
        " 2> {log:q}"


# A cross-validated sheet trains one model per fold: there is no single model to bundle or to
# classify new micrographs with (train one on all labelled images with a sheet without folds).
TARGETS["bundle"] = [] if CV else _mvfcnn_files("model_bundle.pt")
TARGETS["classify"] = [] if CV else [
    f"results/classify/{s}/{name}" for s in samples_in("predict") for name in CLASSIFY_FILES
]
