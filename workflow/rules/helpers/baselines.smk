# Helpers of rules/baselines.smk: crops per split or sample, initialisation, params.


def _baselines_cfg():
    return config.get("baselines", {})


def _baseline_json(*keys):
    """Only the `baselines` keys a job uses, so editing one method does not rerun the others."""
    section = _baselines_cfg()
    return json.dumps({k: section[k] for k in keys if k in section}, separators=(",", ":"),
                      sort_keys=True)


def _crop_samples(wildcards):
    """The samples whose objects a crops file holds: a split, or (cross-validated) one sample."""
    return [wildcards.sample] if CV else samples_in(wildcards.split)


def _baseline_crops(role):
    """Input function: the crops files a baseline trains (`role` train) or is tested on."""

    def _get(wildcards):
        if not CV:
            return layout.crops(CV).format(modality=wildcards.modality, split=role)
        return [layout.crops(CV).format(modality=wildcards.modality, sample=s)
                for s in fold_samples(SAMPLES, fold_of(wildcards), role)]

    return _get


def _crop_source(modality, sample):
    """§4.1: objects are cut from the masked SEM, or from the registered LOM (masked in the job);
    a sample with objects from its labels alone (MetalDAM) from its SEM, masked in the job."""
    if modality == "sem" and has_mask_source(sample):
        return f"results/masks/{sample}_masked_sem.tif"
    return modality_image(modality, sample)


def _crop_mask(sample):
    """The second-phase mask a crop is masked with: the mask rule's, or (objects from labels)
    the object id image, whose non-zero pixels are the labelled second phase above min area."""
    return layout.MASK.format(sample=sample) if has_mask_source(sample) else \
        layout.OBJECT_IDS.format(sample=sample)


def _baseline_init(method):
    """A network baseline's init: `match` resolved to the compared MVFCNN variant's."""
    from mvfcnn.baselines import PRETRAINED_METHODS

    return baseline_init(config, method) if method in PRETRAINED_METHODS else None


def _baseline_trunk(wildcards):
    """train_baseline of a `patches` baseline depends on its modality's [and fold's] pretrained
    trunk (the very file the FCN starts from); other methods and inits depend on nothing more."""
    if _baseline_init(wildcards.method) != PRETRAINED_PATCHES:
        return []
    return pretrained_trunk_file(wildcards)  # a fold's baseline: that fold's trunk


def _baseline_trunk_arg(wildcards):
    """`--trunk-json LAYOUT` (as a list for :q) when the init may be a trunk in the FCN layout."""
    init = _baseline_init(wildcards.method)
    if init is None or init in ("none", "imagenet"):
        return []
    return ["--trunk-json", trunk_layout_json()]


def _train_baseline_params(wildcards):
    method = wildcards.method
    keys = ["precision", "device", method]
    if method.endswith("_svm"):
        keys.append("svm")
    params = json.loads(_baseline_json(*keys))
    init = _baseline_init(method)
    if init is not None:
        params[method] = {**params.get(method, {}), "pretrained": init}
        trunk = _baseline_trunk(wildcards)
        if trunk:
            params[method]["pretrained"] = trunk
    return json.dumps(params, separators=(",", ":"), sort_keys=True)
