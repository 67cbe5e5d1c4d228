# Object-based baselines (paper §4.1, Tables 1 and 3): the data stage's objects are cropped from
# the masked SEM / masked grey LOM and warped (crop_objects, one .npz per modality and split),
# then each method trains on the training crops and is scored on the test crops in the shared
# evaluation format (train_baseline). `method` and `modality` are wildcards; which combinations
# run comes from config run.baselines x run.baseline_modalities.

# The method names live in the package (mvfcnn.baselines.METHODS); the schema's enum checks
# the config against the same list (tests/test_baselines.py keeps the two equal).
from mvfcnn.baselines import METHODS as BASELINE_METHODS
from mvfcnn.baselines import NETWORK_METHODS as BASELINE_NETWORKS  # these get resources: gpu=1


wildcard_constraints:
    method="|".join(BASELINE_METHODS),
    split="train|test",
    modality="sem|lom",


rule crop_objects:
    """Crop every labelled object by its bbox, warp it to crop_size^2, add hand-crafted features."""
    input:
        images=lambda w: [_crop_source(w.modality, s) for s in samples_in(w.split)],
        masks=lambda w: [layout.MASK.format(sample=s) for s in samples_in(w.split)],
        tables=lambda w: [f"results/objects/{s}.csv" for s in samples_in(w.split)],
        ids=lambda w: [layout.OBJECT_IDS.format(sample=s) for s in samples_in(w.split)],
    output:
        "results/baselines/crops/{modality}_{split}.npz",
    params:
        samples=lambda w: samples_in(w.split),
        crops=_baseline_json("crop_size", "handcrafted"),
    log:
        "results/logs/crop_objects/{modality}_{split}.log",
    benchmark:
        "results/benchmarks/crop_objects/{modality}_{split}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda w, attempt: rule_resources("crop_objects", "mem_mb", 2000) * attempt,
        runtime=lambda w, attempt: rule_resources("crop_objects", "runtime", 10) * attempt,
    shell:
        "mvfcnn crop-objects --modality {wildcards.modality:q} --split {wildcards.split:q}"
        " --samples {params.samples:q} --images {input.images:q} --masks {input.masks:q}"
        " --objects-tables {input.tables:q} --objects-ids {input.ids:q}"
        " --params-json {params.crops:q} --out {output:q} 2> {log:q}"


rule train_baseline:
    """Train one object-based baseline on the training crops; evaluate it on the test crops."""
    input:
        train="results/baselines/crops/{modality}_train.npz",
        test="results/baselines/crops/{modality}_test.npz",
        # `pretrained: patches` (or `match` with a patches variant): the FCN's own trunk
        trunk=_baseline_trunk,
    output:
        metrics=os.path.join(layout.BASELINE_DIR, "metrics.json"),
        objects=os.path.join(layout.BASELINE_DIR, "objects.csv"),
        confusion=os.path.join(layout.BASELINE_DIR, "confusion.csv"),
        info=os.path.join(layout.BASELINE_DIR, "info.json"),
    params:
        baselines=_train_baseline_params,
        trunk=_baseline_trunk_arg,
        classes=CLASSES_JSON,
        seed=config["seed"],
    log:
        "results/logs/train_baseline/{method}_{modality}.log",
    benchmark:
        "results/benchmarks/train_baseline/{method}_{modality}.tsv"
    conda:
        ENV
    threads: rule_resources("train_baseline", "threads", 2)
    resources:
        gpu=lambda w: 1 if w.method in BASELINE_NETWORKS else 0,
        mem_mb=lambda w, attempt: rule_resources("train_baseline", "mem_mb", 6000) * attempt,
        runtime=lambda w, attempt: rule_resources("train_baseline", "runtime", 30) * attempt,
    shell:
        "mvfcnn train-baseline --method {wildcards.method:q} --modality {wildcards.modality:q}"
        " --train {input.train:q} --test {input.test:q} --classes-json {params.classes:q}"
        " --params-json {params.baselines:q} {params.trunk:q} --seed {params.seed:q} --threads {threads}"
        " --out-metrics {output.metrics:q} --out-objects {output.objects:q}"
        " --out-confusion {output.confusion:q} --out-info {output.info:q} 2> {log:q}"


TARGETS["baselines"] = expand(
    os.path.join(layout.BASELINE_DIR, "metrics.json"),
    method=config["run"]["baselines"],
    modality=config["run"]["baseline_modalities"],
)
