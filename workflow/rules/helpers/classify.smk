# Helpers of rules/classify.smk: which run classifies, the bundle, the images.


def classify_run():
    """(variant, modality) whose model bundle classifies the `predict` samples."""
    section = config["classify"]
    modality = section["modality"]
    variant = section["variant"]
    if variant is None:
        runs = [v for v, m in mvfcnn_runs() if m == modality]
        if not runs:
            raise ValueError(
                f"classify.modality is {modality!r} but no configured MVFCNN run uses it; "
                "set classify.variant or add the modality to run:"
            )
        variant = runs[0]
    if variant not in config["variants"]:
        raise ValueError(
            f"classify.variant {variant!r} is not a configured variant ({sorted(config['variants'])})"
        )
    return variant, modality


def pixel_size_um():
    """µm/px of the micrographs: classify.pixel_size_um, else the synthetic dataset's, else None."""
    value = config["classify"]["pixel_size_um"]
    if value is None and SYNTHETIC_DIR is not None:
        value = config["synthetic"]["pixel_size_um"]
    return value


def _pixel_size_arg(wildcards):
    value = pixel_size_um()
    return [] if value is None else ["--pixel-size", str(value)]


def _bundle_training_json(wildcards):
    """The training settings a bundle records (what made the model)."""
    return json.dumps(
        {
            "fcn": config["fcn"],
            "variant": variant_cfg(wildcards.variant),
            "tiles": config["tiles"],
            "prepare": config["prepare"],
            "seed": config["seed"],
            "samples": config["samples"],
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def _classify_bundle(wildcards):
    variant, modality = classify_run()
    return f"results/mvfcnn/{variant}/{modality}/model_bundle.pt"


def _classify_image(wildcards):
    return modality_image(classify_run()[1], wildcards.sample)
