# Helpers of rules/fcn.smk: stage chaining, the pretrained trunk, a variant's settings.


def variant_cfg(variant):
    return config["variants"][variant]


def _parent_model(wildcards):
    index = STAGES.index(wildcards.stage)
    if index == 0:
        return []
    return os.path.join(RUN.format(**wildcards), f"fcn{STAGES[index - 1]}.pt")


#: `pretrained:` value that makes FCN-32s start from the trunk of the pretrain_trunk rule
PRETRAINED_PATCHES = "patches"


def pretrained_trunk_file(wildcards):
    return os.path.join(layout.trunk_dir(CV).format(**wildcards), "trunk.pt")


def trunk_layout_json():
    """The `fcn` keys that shape the trunk (what pretraining needs), as compact JSON."""
    layout = {key: config["fcn"][key] for key in ("width", "fc_channels")}
    if config["fcn"].get("batch_norm"):  # only when on: the paper's runs keep their params
        layout["batch_norm"] = True
    return json.dumps(layout, separators=(",", ":"), sort_keys=True)


def _pretrained_trunk(wildcards):
    """FCN-32s of a `pretrained: patches` variant depends on its modality's pretrained trunk."""
    if wildcards.stage != STAGES[0]:
        return []
    if variant_cfg(wildcards.variant)["pretrained"] != PRETRAINED_PATCHES:
        return []
    return pretrained_trunk_file(wildcards)


def _variant_json(wildcards):
    """The variant's settings, with `patches` resolved to the pretrained trunk file."""
    settings = dict(variant_cfg(wildcards.variant))
    if settings["pretrained"] == PRETRAINED_PATCHES:
        settings["pretrained"] = pretrained_trunk_file(wildcards)
    return json.dumps(settings, separators=(",", ":"))


def class_offsets_file(wildcards):
    """The run's fitted decision offsets when `inference.class_offsets` is on, else nothing."""
    if config["inference"]["class_offsets"] == "none":
        return []
    return os.path.join(RUN.format(**wildcards), layout.CLASS_OFFSETS)


def class_offsets_arg(wildcards, input):
    """`--class-offsets FILE` (as a list for :q) when the offsets are fitted."""
    return ["--class-offsets", str(input.offsets)] if input.offsets else []


#: `inference.object_vote: second_phase`: objects vote on each pixel's best non-matrix class,
#: a map predict writes beside the class map (src/mvfcnn/inference/predict.py)
SECOND_PHASE_VOTE = config["inference"]["object_vote"] == "second_phase"
#: the map the vote rule reads
VOTED_MAP = layout.SECOND_PHASE_PREDICTION if SECOND_PHASE_VOTE else layout.PREDICTION


def predict_outputs():
    """The class map, and the second-phase map when objects vote on it."""
    outputs = {"pred": os.path.join(RUN, layout.PREDICTION)}
    if SECOND_PHASE_VOTE:
        outputs["second_phase"] = os.path.join(RUN, layout.SECOND_PHASE_PREDICTION)
    return outputs


def second_phase_arg(wildcards, output):
    """`--out-second-phase FILE` (as a list for :q) when objects vote on that map."""
    return ["--out-second-phase", str(output.second_phase)] if SECOND_PHASE_VOTE else []
