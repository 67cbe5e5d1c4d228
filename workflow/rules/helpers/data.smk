# Helpers of rules/data.smk: what registration and masking read.


def _registration_inputs(wildcards):
    inputs = {"sem": sem_file(wildcards.sample), "lom": SAMPLES.loc[wildcards.sample, "lom"]}
    if SYNTHETIC_DIR is not None:
        inputs["truth"] = f"{SYNTHETIC_DIR}/{wildcards.sample}/transform.json"
    return inputs


def _mask_inputs(wildcards):
    inputs = {"sem": sem_file(wildcards.sample)}
    if has(wildcards.sample, "mask"):
        inputs["mask"] = SAMPLES.loc[wildcards.sample, "mask"]
    else:
        inputs["lom"] = layout.REGISTERED_LOM.format(sample=wildcards.sample)
    if has(wildcards.sample, "labels"):
        inputs["labels"] = labels_file(wildcards.sample)
    return inputs


def _labels_arg(wildcards, input):
    """Optional `--labels FILE` as a list, so the rule's `{params.labels:q}` quotes each item."""
    return ["--labels", input.labels] if "labels" in input.keys() else []
