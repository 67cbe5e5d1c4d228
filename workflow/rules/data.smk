# Data stage: synthetic dataset -> registration (LOM -> SEM) -> mask -> objects.

include: "helpers/data.smk"


if SYNTHETIC_DIR is not None:

    rule synthesize:
        """Generate one synthetic SEM/LOM/labels triple and its known LOM transform."""
        output:
            sem=f"{SYNTHETIC_DIR}/{{sample}}/sem.tif",
            lom=f"{SYNTHETIC_DIR}/{{sample}}/lom.tif",
            labels=f"{SYNTHETIC_DIR}/{{sample}}/labels.tif",
            transform=f"{SYNTHETIC_DIR}/{{sample}}/transform.json",
        params:
            synthetic=cfg_json("synthetic"),
            classes=CLASSES_JSON,
            seed=config["seed"],
            outdir=lambda wildcards, output: os.path.dirname(output.sem),
        log:
            "results/logs/synthesize/{sample}.log",
        benchmark:
            "results/benchmarks/synthesize/{sample}.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        shell:
            "mvfcnn synthesize --sample {wildcards.sample:q} --seed {params.seed:q}"
            " --params-json {params.synthetic:q} --classes-json {params.classes:q}"
            " --outdir {params.outdir:q} 2> {log:q}"


rule prepare:
    """Released files as the workflow reads them: grey TIFF without the information band, the
    label map checked on the same grid, the pixel size from the scale bar (mvfcnn.data.prepare)."""
    input:
        image=lambda w: SAMPLES.loc[w.sample, "sem"],
        labels=lambda w: SAMPLES.loc[w.sample, "labels"] or [],
    output:
        image=layout.prepared("{sample}")["image"],
        labels=layout.prepared("{sample}")["labels"],
        report=layout.prepared("{sample}")["json"],
    params:
        classes=CLASSES_JSON,
        labels=lambda w, input: ["--labels", input.labels] if input.labels else [],
        crop=lambda w: SAMPLES.loc[w.sample, "crop_bottom"] or 0,
        upscale=config["prepare"]["upscale"],
        stretch=(
            ["--intensity-percentiles", *map(str, config["prepare"]["intensity_percentiles"])]
            if config["prepare"]["intensity_percentiles"] is not None
            else []
        ),
        scale_bar=lambda w: (
            ["--scale-bar-um", str(float(SAMPLES.loc[w.sample, "scale_bar_um"]))]
            if SAMPLES.loc[w.sample, "scale_bar_um"]
            else []
        ),
    log:
        "results/logs/prepare/{sample}.log",
    benchmark:
        "results/benchmarks/prepare/{sample}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mvfcnn prepare --sample {wildcards.sample:q} --image {input.image:q}"
        " {params.labels:q} --classes-json {params.classes:q}"
        " --crop-bottom {params.crop:q} {params.scale_bar:q} --upscale {params.upscale:q}"
        " {params.stretch:q} --out-image {output.image:q}"
        " --out-labels {output.labels:q} --out-json {output.report:q} 2> {log:q}"


rule register:
    """Estimate the LOM -> SEM transform, warp the LOM onto the SEM grid, score it."""
    input:
        unpack(_registration_inputs),
    output:
        report="results/registration/{sample}.json",
        lom=layout.REGISTERED_LOM,
    params:
        registration=cfg_json("registration"),
        truth=lambda wildcards, input: ["--truth", input.truth] if "truth" in input.keys() else [],
    log:
        "results/logs/register/{sample}.log",
    benchmark:
        "results/benchmarks/register/{sample}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "mvfcnn register --sample {wildcards.sample:q} --sem {input.sem:q} --lom {input.lom:q}"
        " {params.truth:q} --params-json {params.registration:q}"
        " --out-json {output.report:q} --out-lom {output.lom:q} 2> {log:q}"


rule mask:
    """Binary second-phase mask (threshold/Otsu on the registered LOM, or the supplied mask)."""
    input:
        unpack(_mask_inputs),
    output:
        mask=layout.MASK,
        report="results/masks/{sample}.json",
        masked_sem="results/masks/{sample}_masked_sem.tif",
    params:
        masking=cfg_json("masking"),
        source=lambda wildcards, input: (
            ["--mask", input.mask] if "mask" in input.keys() else ["--lom", input.lom]
        ),
        labels=_labels_arg,
        ignore=config["ignore_index"],
    log:
        "results/logs/mask/{sample}.log",
    benchmark:
        "results/benchmarks/mask/{sample}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "mvfcnn mask --sample {wildcards.sample:q} --sem {input.sem:q} {params.source:q}"
        " {params.labels:q} --params-json {params.masking:q} --ignore-index {params.ignore:q}"
        " --out-mask {output.mask:q} --out-json {output.report:q}"
        " --out-masked-sem {output.masked_sem:q} 2> {log:q}"


rule objects:
    """Connected components of the mask: objects table (with ground-truth class) + id image."""
    input:
        mask=lambda w: f"results/masks/{w.sample}.tif" if has_mask_source(w.sample) else [],
        labels=sample_file("labels"),
    output:
        table=layout.OBJECTS_TABLE,
        ids=layout.OBJECT_IDS,
    params:
        classes=CLASSES_JSON,
        labels=lambda wildcards, input: ["--labels", input.labels] if input.labels else [],
        mask=lambda wildcards, input: ["--mask", input.mask] if input.mask else [],
        min_area=config["masking"]["min_object_area"],
        label_objects=config["masking"]["label_objects"],
        image_class=lambda wildcards: (
            ["--image-class", SAMPLES.loc[wildcards.sample, "class"]]
            if has(wildcards.sample, "class")
            else []
        ),
    log:
        "results/logs/objects/{sample}.log",
    benchmark:
        "results/benchmarks/objects/{sample}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "mvfcnn objects --sample {wildcards.sample:q} {params.mask:q} {params.labels:q}"
        " --min-area {params.min_area:q} --label-objects {params.label_objects:q}"
        " {params.image_class:q} --classes-json {params.classes:q}"
        " --out-table {output.table:q} --out-ids {output.ids:q} 2> {log:q}"


TARGETS["data"] = (
    [f"results/registration/{s}.json" for s in SAMPLES.index if has(s, "lom")]
    + [f"results/masks/{s}.json" for s in SAMPLES.index if has_mask_source(s)]
    + [layout.prepared(s)["json"] for s in SAMPLES.index if needs_prepare(s)]
    + [layout.OBJECTS_TABLE.format(sample=s) for s in SAMPLES.index if SAMPLES.loc[s, "split"] not in SSL_ONLY_SPLITS]
)
