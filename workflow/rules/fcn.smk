# MVFCNN: stride-balanced tile index -> FCN-32s -> 16s -> 8s -> sliding-window prediction ->
# max-voting -> evaluation. `variant` (Table 2) and `modality` (Table 3) are wildcards whose
# values come from config; nothing here is specific to one ablation.

STAGES = config["fcn"]["stages"]
FINAL_STAGE = STAGES[-1]


wildcard_constraints:
    variant="[A-Za-z0-9_]+",
    modality="sem|lom",
    stage="32s|16s|8s",
    fold="[A-Za-z0-9_]+",

TILES = layout.tiles_stem(CV)
TRUNK = layout.trunk_dir(CV)


rule tile_index:
    """Sliding-window tiles over the training images, per-class strides when balanced."""
    input:
        images=lambda w: [modality_image(w.modality, s) for s in train_samples(w)],
        labels=lambda w: [labels_file(s) for s in train_samples(w)],
    output:
        table=TILES + ".csv",
        summary=TILES + ".json",
    params:
        samples=lambda w: " ".join(train_samples(w)),
        classes=lambda w: " ".join(f"'{SAMPLES.loc[s, 'class']}'" for s in train_samples(w)),
        tiles=cfg_json("tiles"),
        balanced=lambda w: str(variant_cfg(w.variant)["balanced"]).lower(),
        augment=lambda w: str(variant_cfg(w.variant)["augment"]).lower(),
        class_set=CLASSES_JSON,
    log:
        layout.log_path("tile_index", CV),
    benchmark:
        layout.benchmark_path("tile_index", CV),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mvfcnn tile-index --samples {params.samples} --images {input.images}"
        " --labels {input.labels} --classes {params.classes} --classes-json '{params.class_set}'"
        " --params-json '{params.tiles}' --balanced {params.balanced} --augment {params.augment}"
        " --out {output.table} --out-summary {output.summary} 2> {log}"


rule pretrain_trunk:
    """Offline ImageNet stand-in: the VGG trunk learns to classify labelled training patches."""
    input:
        images=lambda w: [modality_image(w.modality, s) for s in train_samples(w)],
        labels=lambda w: [labels_file(s) for s in train_samples(w)],
    output:
        model=TRUNK + "/trunk.pt",
        csv=TRUNK + "/pretrain.csv",
        png=report(
            TRUNK + "/pretrain.png",
            category="Training",
            subcategory="trunk pretraining / {modality}",
            caption="../report/pretraining.rst",
        ),
    params:
        pretrain=cfg_json("pretrain"),
        # only the trunk layout: FCN iterations or learning rates do not retrigger pretraining
        fcn=trunk_layout_json(),
        classes=CLASSES_JSON,
        seed=config["seed"],
    log:
        layout.log_path("pretrain_trunk", CV, run=False),
    benchmark:
        layout.benchmark_path("pretrain_trunk", CV, run=False),
    conda:
        ENV
    threads: rule_resources("pretrain_trunk", "threads", 2)
    resources:
        gpu=1,
        mem_mb=lambda w, attempt: rule_resources("pretrain_trunk", "mem_mb", 4000) * attempt,
        runtime=lambda w, attempt: rule_resources("pretrain_trunk", "runtime", 30) * attempt,
    shell:
        "mvfcnn pretrain-trunk --images {input.images} --labels {input.labels}"
        " --classes-json '{params.classes}' --params-json '{params.pretrain}'"
        " --fcn-json '{params.fcn}' --seed {params.seed} --out {output.model}"
        " --out-csv {output.csv} --out-png {output.png} --threads {threads} 2> {log}"


rule train_fcn:
    """Train one FCN stage; 16s/8s start from the previous stage. Resumes from checkpoints."""
    input:
        tiles=TILES + ".csv",
        images=lambda w: [modality_image(w.modality, s) for s in train_samples(w)],
        parent=_parent_model,
        trunk=_pretrained_trunk,
    output:
        model=RUN + "/fcn{stage}.pt",
        csv=RUN + "/train_{stage}.csv",
        png=report(
            RUN + "/train_{stage}.png",
            category="Training",
            subcategory="{variant} / {modality}",
            caption="../report/training_curve.rst",
        ),
    params:
        parent=lambda w, input: f"--parent {input.parent}" if input.parent else "",
        fcn=cfg_json("fcn"),
        variant=_variant_json,
        classes=CLASSES_JSON,
        seed=config["seed"],
        checkpoints=lambda w: RUN.format(**w) + f"/checkpoints/{w.stage}",
    log:
        layout.log_path("train_fcn", CV, extra="_{stage}"),
    benchmark:
        layout.benchmark_path("train_fcn", CV, extra="_{stage}"),
    conda:
        ENV
    threads: rule_resources("train_fcn", "threads", 2)
    resources:
        gpu=1,
        mem_mb=lambda w, attempt: rule_resources("train_fcn", "mem_mb", 6000) * attempt,
        runtime=lambda w, attempt: rule_resources("train_fcn", "runtime", 60) * attempt,
    shell:
        "mvfcnn train-fcn --stage {wildcards.stage} {params.parent} --tiles {input.tiles}"
        " --classes-json '{params.classes}' --params-json '{params.fcn}'"
        " --variant-json '{params.variant}' --seed {params.seed} --out {output.model}"
        " --out-csv {output.csv} --out-png {output.png} --checkpoint-dir {params.checkpoints}"
        " --threads {threads} 2> {log}"


rule predict:
    """Sliding-window FCN-8s inference over one whole image, stitched into a class map."""
    input:
        model=RUN + f"/fcn{FINAL_STAGE}.pt",
        image=lambda w: modality_image(w.modality, w.sample),
    output:
        RUN + "/pred/{sample}.tif",
    params:
        inference=cfg_json("inference"),
    log:
        layout.log_path("predict", CV, extra="_{sample}"),
    benchmark:
        layout.benchmark_path("predict", CV, extra="_{sample}"),
    conda:
        ENV
    threads: rule_resources("predict", "threads", 2)
    resources:
        gpu=1,
        mem_mb=lambda w, attempt: rule_resources("predict", "mem_mb", 4000) * attempt,
        runtime=lambda w, attempt: rule_resources("predict", "runtime", 30) * attempt,
    shell:
        "mvfcnn predict --model {input.model} --image {input.image} --sample {wildcards.sample}"
        " --params-json '{params.inference}' --threads {threads} --out {output} 2> {log}"


rule vote:
    """Max-voting: each object takes the majority non-matrix class of its predicted pixels."""
    input:
        pred=RUN + "/pred/{sample}.tif",
        ids="results/objects/{sample}.tif",
        objects="results/objects/{sample}.csv",
    output:
        RUN + "/votes/{sample}.csv",
    params:
        classes=CLASSES_JSON,
    log:
        layout.log_path("vote", CV, extra="_{sample}"),
    benchmark:
        layout.benchmark_path("vote", CV, extra="_{sample}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mvfcnn vote --pred {input.pred} --objects-ids {input.ids} --objects {input.objects}"
        " --classes-json '{params.classes}' --sample {wildcards.sample} --out {output} 2> {log}"


rule evaluate:
    """Pixel metrics over all test images (one confusion matrix) and object metrics."""
    input:
        preds=lambda w: [RUN.format(**w) + f"/pred/{s}.tif" for s in test_samples(w)],
        votes=lambda w: [RUN.format(**w) + f"/votes/{s}.csv" for s in test_samples(w)],
        objects=lambda w: [f"results/objects/{s}.csv" for s in test_samples(w)],
        labels=lambda w: [labels_file(s) for s in test_samples(w)],
    output:
        metrics=RUN + "/metrics.json",
        objects=RUN + "/objects.csv",
        confusion=RUN + "/confusion.csv",
        pixel_confusion=RUN + "/pixel_confusion.csv",
    params:
        classes=CLASSES_JSON,
        samples=lambda w: " ".join(test_samples(w)),
    log:
        layout.log_path("evaluate", CV),
    benchmark:
        layout.benchmark_path("evaluate", CV),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "mvfcnn evaluate --method mvfcnn --variant {wildcards.variant} --modality {wildcards.modality}"
        " --classes-json '{params.classes}' --samples {params.samples}"
        " --preds {input.preds} --votes {input.votes} --objects {input.objects} --labels {input.labels}"
        " --out-metrics {output.metrics} --out-objects {output.objects}"
        " --out-confusion {output.confusion} --out-pixel-confusion {output.pixel_confusion}"
        " 2> {log}"


TARGETS["mvfcnn"] = [f"{run}/metrics.json" for run in run_dirs()]
