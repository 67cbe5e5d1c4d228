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
            "mvfcnn synthesize --sample {wildcards.sample} --seed {params.seed}"
            " --params-json '{params.synthetic}' --classes-json '{params.classes}'"
            " --outdir {params.outdir} 2> {log}"


rule register:
    """Estimate the LOM -> SEM transform, warp the LOM onto the SEM grid, score it."""
    input:
        unpack(_registration_inputs),
    output:
        report="results/registration/{sample}.json",
        lom="results/registration/{sample}_lom.tif",
    params:
        registration=cfg_json("registration"),
        truth=lambda wildcards, input: f"--truth {input.truth}" if "truth" in input.keys() else "",
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
        "mvfcnn register --sample {wildcards.sample} --sem {input.sem} --lom {input.lom}"
        " {params.truth} --params-json '{params.registration}'"
        " --out-json {output.report} --out-lom {output.lom} 2> {log}"


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
        source=lambda wildcards, input: f"--mask {input.mask}" if "mask" in input.keys() else f"--lom {input.lom}",
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
        "mvfcnn mask --sample {wildcards.sample} --sem {input.sem} {params.source} {params.labels}"
        " --params-json '{params.masking}' --ignore-index {params.ignore} --out-mask {output.mask}"
        " --out-json {output.report} --out-masked-sem {output.masked_sem} 2> {log}"


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
        labels=lambda wildcards, input: f"--labels {input.labels}" if input.labels else "",
        image_class=lambda wildcards: (
            f"--image-class {SAMPLES.loc[wildcards.sample, 'class']}"
            if has(wildcards.sample, "class")
            else ""
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
        "mvfcnn objects --sample {wildcards.sample} --mask {input.mask} {params.labels}"
        " {params.image_class} --classes-json '{params.classes}'"
        " --out-table {output.table} --out-ids {output.ids} 2> {log}"


TARGETS["data"] = (
    [f"results/registration/{s}.json" for s in SAMPLES.index if has(s, "lom")]
    + [f"results/masks/{s}.json" for s in SAMPLES.index]
    + [f"results/objects/{s}.csv" for s in SAMPLES.index]
)
