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
#: `inference.object_offsets`: that vote after per-class offsets fitted on the other folds'
#: test objects, so predict writes the probabilities instead (rule fit_object_offsets)
OBJECT_OFFSETS = config["inference"]["object_offsets"]
OBJECT_OFFSETS_ON = OBJECT_OFFSETS != "none"
if OBJECT_OFFSETS_ON and len(FOLDS) < 2:
    raise WorkflowError(
        f"config: inference.object_offsets {OBJECT_OFFSETS} needs a sample sheet with 2 or more "
        f"cross-validation folds (a `fold` column; this one has {len(FOLDS)}): each fold's "
        "offsets are fitted on the other folds' test objects"
    )


def predict_outputs():
    """The class map, and what the vote reads: the second-phase map, or the probabilities."""
    outputs = {"pred": os.path.join(RUN, layout.PREDICTION)}
    if OBJECT_OFFSETS_ON:
        outputs["probs"] = os.path.join(RUN, layout.PROBABILITIES)
    elif SECOND_PHASE_VOTE:
        outputs["second_phase"] = os.path.join(RUN, layout.SECOND_PHASE_PREDICTION)
    return outputs


def predict_extra_outputs_arg(wildcards, output):
    """`--out-probs FILE` or `--out-second-phase FILE` (as a list for :q): what the vote reads."""
    if OBJECT_OFFSETS_ON:
        return ["--out-probs", str(output.probs)]
    return ["--out-second-phase", str(output.second_phase)] if SECOND_PHASE_VOTE else []


def vote_inputs():
    """The vote rule's inputs: the map it votes on, or the probabilities and the offsets."""
    inputs = {"ids": layout.OBJECT_IDS, "objects": layout.OBJECTS_TABLE}
    if OBJECT_OFFSETS_ON:
        inputs["probs"] = os.path.join(RUN, layout.PROBABILITIES)
        inputs["offsets"] = os.path.join(RUN, layout.OBJECT_OFFSETS)
    else:
        voted = layout.SECOND_PHASE_PREDICTION if SECOND_PHASE_VOTE else layout.PREDICTION
        inputs["pred"] = os.path.join(RUN, voted)
    return inputs


def vote_source_arg(wildcards, input):
    """`--pred MAP`, or `--probs FILE --object-offsets FILE` (as a list for :q)."""
    if OBJECT_OFFSETS_ON:
        return ["--probs", str(input.probs), "--object-offsets", str(input.offsets)]
    return ["--pred", str(input.pred)]


def other_folds_test_samples(wildcards):
    """(fold, sample) of every test image of the folds other than this run's."""
    return [(fold, sample) for fold in FOLDS if str(fold) != str(wildcards.fold)
            for sample in fold_samples(SAMPLES, fold, "test")]


def other_folds_evidence(wildcards):
    """What fold f's object offsets are fitted on: the other folds' test probabilities (each
    from its own fold's model), object ids and objects tables."""
    pairs = other_folds_test_samples(wildcards)
    run = {key: value for key, value in wildcards.items() if key != "fold"}
    return {
        "probs": [os.path.join(RUN.format(**run, fold=f), layout.PROBABILITIES.format(sample=s))
                  for f, s in pairs],
        "ids": [layout.OBJECT_IDS.format(sample=s) for _, s in pairs],
        "objects": [layout.OBJECTS_TABLE.format(sample=s) for _, s in pairs],
    }
