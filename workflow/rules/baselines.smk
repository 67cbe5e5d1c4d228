# Object-based baselines (paper §4.1, Tables 1 and 3): the data stage's objects are cropped from
# the masked SEM / masked grey LOM and warped (crop_objects, one .npz per modality and split, or
# per modality and sample when cross-validated),
# then each method trains on the training crops and is scored on the test crops in the shared
# evaluation format (train_baseline). `method` and `modality` are wildcards; which combinations
# run comes from config run.baselines x run.baseline_modalities. A cross-validated sample sheet
# (MetalDAM) adds the `fold` wildcard: each fold's baselines train on the objects of the images
# its MVFCNN model trains on and are scored on the same test objects (crossval objects table).

# The method names live in the package (mvfcnn.baselines.METHODS); the schema's enum checks
# the config against the same list (tests/test_baselines.py keeps the two equal).

include: "helpers/baselines.smk"


from mvfcnn.baselines import METHODS as BASELINE_METHODS
from mvfcnn.baselines import NETWORK_METHODS as BASELINE_NETWORKS  # these get resources: gpu=1


#: results/baselines/{method}/{modality}[/fold{fold}]: one trained baseline and its test objects
BASELINE_RUN = layout.baseline_dir(CV)
FOLD_SUFFIX = "_fold{fold}" if CV else ""
CROPS_KEY = "{sample}" if CV else "{split}"  # a crops file holds one sample or one split


wildcard_constraints:
    method="|".join(BASELINE_METHODS),
    split="train|test",
    modality="sem|lom",


rule crop_objects:
    """Crop every labelled object by its bbox, warp it to crop_size^2, add hand-crafted features."""
    input:
        images=lambda w: [_crop_source(w.modality, s) for s in _crop_samples(w)],
        masks=lambda w: [_crop_mask(s) for s in _crop_samples(w)],
        tables=lambda w: [layout.OBJECTS_TABLE.format(sample=s) for s in _crop_samples(w)],
        ids=lambda w: [layout.OBJECT_IDS.format(sample=s) for s in _crop_samples(w)],
    output:
        layout.crops(CV),
    params:
        samples=_crop_samples,
        split=lambda w: "sample" if CV else w.split,
        crops=_baseline_json("crop_size", "handcrafted"),
    log:
        f"results/logs/crop_objects/{{modality}}_{CROPS_KEY}.log",
    benchmark:
        f"results/benchmarks/crop_objects/{{modality}}_{CROPS_KEY}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda w, attempt: rule_resources("crop_objects", "mem_mb", 2000) * attempt,
        runtime=lambda w, attempt: rule_resources("crop_objects", "runtime", 10) * attempt,
    shell:
        "mvfcnn crop-objects --modality {wildcards.modality:q} --split {params.split:q}"
        " --samples {params.samples:q} --images {input.images:q} --masks {input.masks:q}"
        " --objects-tables {input.tables:q} --objects-ids {input.ids:q}"
        " --params-json {params.crops:q} --out {output:q} 2> {log:q}"


rule train_baseline:
    """Train one object-based baseline on the training crops; evaluate it on the test crops."""
    input:
        train=_baseline_crops("train"),
        test=_baseline_crops("test"),
        # `pretrained: patches` (or `match` with a patches variant): the FCN's own trunk
        trunk=_baseline_trunk,
    output:
        metrics=os.path.join(BASELINE_RUN, "metrics.json"),
        objects=os.path.join(BASELINE_RUN, "objects.csv"),
        confusion=os.path.join(BASELINE_RUN, "confusion.csv"),
        info=os.path.join(BASELINE_RUN, "info.json"),
    params:
        baselines=_train_baseline_params,
        trunk=_baseline_trunk_arg,
        classes=CLASSES_JSON,
        seed=config["seed"],
    log:
        f"results/logs/train_baseline/{{method}}_{{modality}}{FOLD_SUFFIX}.log",
    benchmark:
        f"results/benchmarks/train_baseline/{{method}}_{{modality}}{FOLD_SUFFIX}.tsv"
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


TARGETS["baselines"] = _baseline_files("metrics.json")
