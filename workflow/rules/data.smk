# Data stage: synthetic dataset -> registration (LOM -> SEM) -> mask -> objects.


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


rule register:
    """Estimate the LOM -> SEM transform, warp the LOM onto the SEM grid, score it."""
    input:
        unpack(_registration_inputs),
    output:
        report="results/registration/{sample}.json",
        lom="results/registration/{sample}_lom.tif",
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
        mask="results/masks/{sample}.tif",
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
        mask="results/masks/{sample}.tif",
        labels=sample_file("labels"),
    output:
        table="results/objects/{sample}.csv",
        ids="results/objects/{sample}.tif",
    params:
        classes=CLASSES_JSON,
        labels=lambda wildcards, input: ["--labels", input.labels] if input.labels else [],
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
        "mvfcnn objects --sample {wildcards.sample:q} --mask {input.mask:q} {params.labels:q}"
        " {params.image_class:q} --classes-json {params.classes:q}"
        " --out-table {output.table:q} --out-ids {output.ids:q} 2> {log:q}"


TARGETS["data"] = (
    [f"results/registration/{s}.json" for s in SAMPLES.index if has(s, "lom")]
    + [f"results/masks/{s}.json" for s in SAMPLES.index]
    + [f"results/objects/{s}.csv" for s in SAMPLES.index]
)
