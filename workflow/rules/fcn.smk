# MVFCNN: stride-balanced tile index -> FCN-32s -> 16s -> 8s -> sliding-window prediction ->
# max-voting -> evaluation. `variant` (Table 2) and `modality` (Table 3) are wildcards whose
# values come from config; nothing here is specific to one ablation.

include: "helpers/fcn.smk"


STAGES = config["fcn"]["stages"]
FINAL_STAGE = STAGES[-1]


wildcard_constraints:
    variant="[A-Za-z0-9_]+",
    modality="sem|lom",
    stage="32s|16s|8s|4s|2s",
    fold="[A-Za-z0-9_]+",

TILES = layout.tiles_stem(CV)
TRUNK = layout.trunk_dir(CV)


rule tile_index:
    """Sliding-window tiles over the training images, per-class strides when balanced."""
    input:
        images=lambda w: [modality_image(w.modality, s) for s in train_samples(w)],
        labels=lambda w: [labels_file(s) for s in train_samples(w)],
    output:
        table=f"{TILES}.csv",
        summary=f"{TILES}.json",
    params:
        samples=lambda w: train_samples(w),
        # quoted here, not with :q, because an empty class ('' = mixed image) must stay an argument
        classes=lambda w: " ".join(shlex.quote(SAMPLES.loc[s, "class"]) for s in train_samples(w)),
        tiles=cfg_json("tiles"),
        balanced=lambda w: str(variant_cfg(w.variant)["balanced"]).lower(),
        augment=lambda w: str(variant_cfg(w.variant)["augment"]).lower(),
        class_set=CLASSES_JSON,
        seed=config["seed"],
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
        "mvfcnn tile-index --samples {params.samples:q} --images {input.images:q}"
        " --labels {input.labels:q} --classes {params.classes} --classes-json {params.class_set:q}"
        " --params-json {params.tiles:q} --balanced {params.balanced:q} --augment {params.augment:q}"
        " --seed {params.seed:q} --out {output.table:q} --out-summary {output.summary:q} 2> {log:q}"


rule pretrain_trunk:
    """Offline ImageNet stand-in: the VGG trunk learns to classify labelled training patches."""
    input:
        images=lambda w: [modality_image(w.modality, s) for s in train_samples(w)],
        labels=lambda w: [labels_file(s) for s in train_samples(w)],
        unlabelled=ssl_unlabelled_images,
    output:
        model=os.path.join(TRUNK, "trunk.pt"),
        csv=os.path.join(TRUNK, "pretrain.csv"),
        png=report(
            os.path.join(TRUNK, "pretrain.png"),
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
        "mvfcnn pretrain-trunk --images {input.images:q} --labels {input.labels:q}"
        " --classes-json {params.classes:q} --params-json {params.pretrain:q}"
        " --fcn-json {params.fcn:q} --seed {params.seed:q} --out {output.model:q}"
        " --unlabelled {input.unlabelled:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} --threads {threads} 2> {log:q}"


rule train_fcn:
    """Train one FCN stage; 16s/8s start from the previous stage. Resumes from checkpoints."""
    input:
        tiles=f"{TILES}.csv",
        images=lambda w: [modality_image(w.modality, s) for s in train_samples(w)],
        parent=_parent_model,
        trunk=_pretrained_trunk,
    output:
        model=os.path.join(RUN, "fcn{stage}.pt"),
        csv=os.path.join(RUN, "train_{stage}.csv"),
        png=report(
            os.path.join(RUN, "train_{stage}.png"),
            category="Training",
            subcategory="{variant} / {modality}",
            caption="../report/training_curve.rst",
        ),
    params:
        parent=lambda w, input: ["--parent", input.parent] if input.parent else [],
        fcn=cfg_json("fcn"),
        variant=_variant_json,
        classes=CLASSES_JSON,
        seed=config["seed"],
        checkpoints=lambda w: os.path.join(RUN.format(**w), f"checkpoints/{w.stage}"),
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
        "mvfcnn train-fcn --stage {wildcards.stage:q} {params.parent:q} --tiles {input.tiles:q}"
        " --classes-json {params.classes:q} --params-json {params.fcn:q}"
        " --variant-json {params.variant:q} --seed {params.seed:q} --out {output.model:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} --checkpoint-dir {params.checkpoints:q}"
        " --threads {threads} 2> {log:q}"


rule learning_curve:
    """Validation mean IU of every stage of a run on one axis, so saturation is visible."""
    input:
        csvs=expand(os.path.join(RUN, "train_{stage}.csv"), stage=STAGES, allow_missing=True),
    output:
        csv=os.path.join(RUN, layout.LEARNING_CURVE),
        png=report(
            os.path.join(RUN, layout.LEARNING_CURVE_PNG),
            category="Training",
            subcategory="{variant} / {modality}",
            caption="../report/learning_curve.rst",
        ),
    params:
        stages=STAGES,
        title=lambda w: " / ".join(str(v) for v in w),
    log:
        layout.log_path("learning_curve", CV),
    benchmark:
        layout.benchmark_path("learning_curve", CV),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "mvfcnn learning-curve --stages {params.stages:q} --csvs {input.csvs:q}"
        " --title {params.title:q} --out-csv {output.csv:q} --out-png {output.png:q} 2> {log:q}"


rule fit_class_offsets:
    """Per-class decision offsets of the final stage, fitted on the tile positions it never saw."""
    input:
        model=os.path.join(RUN, f"fcn{FINAL_STAGE}.pt"),
        tiles=f"{TILES}.csv",
    output:
        os.path.join(RUN, layout.CLASS_OFFSETS),
    params:
        inference=network_inference_json(),
        objective=config["inference"]["class_offsets"],
        # the positions train_fcn held out (none when validation is off: the offsets stay 0)
        every=config["fcn"]["val_holdout_every"] if config["fcn"]["validate_every"] > 0 else 0,
    log:
        layout.log_path("fit_class_offsets", CV),
    benchmark:
        layout.benchmark_path("fit_class_offsets", CV),
    conda:
        ENV
    threads: rule_resources("predict", "threads", 2)
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    shell:
        "mvfcnn fit-class-offsets --model {input.model:q} --tiles {input.tiles:q}"
        " --params-json {params.inference:q} --holdout-every {params.every:q}"
        " --objective {params.objective:q} --threads {threads} --out {output:q} 2> {log:q}"


rule predict:
    """Sliding-window FCN inference over one whole image, stitched into a class map."""
    input:
        model=os.path.join(RUN, f"fcn{FINAL_STAGE}.pt"),
        image=lambda w: modality_image(w.modality, w.sample),
        offsets=class_offsets_file,
    output:
        **predict_outputs(),
    params:
        inference=network_inference_json(),
        offsets=class_offsets_arg,
        extra=predict_extra_outputs_arg,
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
        "mvfcnn predict --model {input.model:q} --image {input.image:q} --sample {wildcards.sample:q}"
        " --params-json {params.inference:q} {params.offsets:q} --threads {threads}"
        " --out {output.pred:q} {params.extra:q} 2> {log:q}"


rule evaluate:
    """Pixel metrics over all test images (one confusion matrix) and object metrics."""
    input:
        preds=lambda w: [os.path.join(RUN.format(**w), f"pred/{s}.tif") for s in test_samples(w)],
        votes=lambda w: [os.path.join(RUN.format(**w), f"votes/{s}.csv") for s in test_samples(w)],
        objects=lambda w: [layout.OBJECTS_TABLE.format(sample=s) for s in test_samples(w)],
        labels=lambda w: [labels_file(s) for s in test_samples(w)],
    output:
        metrics=os.path.join(RUN, "metrics.json"),
        objects=os.path.join(RUN, "objects.csv"),
        confusion=os.path.join(RUN, "confusion.csv"),
        pixel_confusion=os.path.join(RUN, "pixel_confusion.csv"),
    params:
        classes=CLASSES_JSON,
        samples=lambda w: test_samples(w),
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
        "mvfcnn evaluate --method mvfcnn --variant {wildcards.variant:q} --modality {wildcards.modality:q}"
        " --classes-json {params.classes:q} --samples {params.samples:q}"
        " --preds {input.preds:q} --votes {input.votes:q} --objects {input.objects:q} --labels {input.labels:q}"
        " --out-metrics {output.metrics:q} --out-objects {output.objects:q}"
        " --out-confusion {output.confusion:q}"
        " --out-pixel-confusion {output.pixel_confusion:q} 2> {log:q}"


TARGETS["mvfcnn"] = [f"{run}/{name}" for run in run_dirs()
                     for name in ("metrics.json", layout.LEARNING_CURVE, layout.LEARNING_CURVE_PNG)]
