"""The command lines of ``mvfcnn classify`` (its options, per-image output names and the loop
over images; the classification itself is :mod:`mvfcnn.classify.pipeline`; every input is checked
before anything is written) and ``mvfcnn bundle`` (the bundle is :mod:`mvfcnn.classify.bundle`).
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mvfcnn.classify.bundle import LoadedModel, load_for_inference, write_bundle
from mvfcnn.classify.outputs import (
    OUTPUT_FILES,
    write_outputs,
)
from mvfcnn.classify.pipeline import (
    IMAGE_SUFFIXES,
    as_trained,
    check_as_trained,
    classify_image,
    read_lom_for,
    read_mask_for,
    read_micrograph,
    training_stretch,
)
from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import classes_from_json, json_arg
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import check_writable, read_json
from mvfcnn.core.progress import progress
from mvfcnn.core.runtime import announce, choose_precision, resolve_device, set_threads
from mvfcnn.inference.calibration import read_class_offsets

# ----------------------------------------------------------------------------------------------
# CLI


def _threshold(text: str | None) -> float | str | None:
    if text is None:
        return None
    if text.lower() == "otsu":
        return "otsu"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--threshold must be a grey level in [0, 1] or 'otsu', "
                         f"got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"--threshold must be in [0, 1], got {value}")
    return value


def output_names(images: list[str], names: list[str] | None) -> list[str]:
    """One output folder name per image: --names, else the file name without suffix(es)."""
    if names is not None:
        if len(names) != len(images):
            raise InputError(f"--names gives {len(names)} name(s) for {len(images)} image(s)")
        chosen = list(names)
    else:
        chosen = []
        for image in images:
            stem = Path(image).name
            for suffix in (*IMAGE_SUFFIXES, ".ome"):
                if stem.lower().endswith(suffix):
                    stem = stem[:-len(suffix)]
            chosen.append(stem or Path(image).name)
    dupes = sorted({n for n in chosen if chosen.count(n) > 1})
    if dupes:
        raise InputError(f"two images would write to the same folder {dupes}; give --names")
    bad = [n for n in chosen if not n or "/" in n or n in (".", "..")
           or any(ord(c) < 32 or ord(c) == 127 for c in n)]  # a newline names no folder
    if bad:
        raise InputError(f"invalid output name(s) {bad}")
    return chosen


def _per_image(values: list[str] | None, images: list[str], option: str) -> list[str | None]:
    if values is None:
        return [None] * len(images)
    if len(values) != len(images):
        raise InputError(f"{option} gives {len(values)} file(s) for {len(images)} image(s); "
                         "give one per image, in the same order")
    return list(values)


def _parser() -> argparse.ArgumentParser:
    parser = verb_parser(
        "classify",
        "Classify new micrographs with a trained model (bundle): sliding-window "
        "FCN inference, objects from a mask / thresholded registered LOM / the "
        "prediction, max-voting; writes per-object and per-class tables, a "
        "low-confidence list, an overlay, a pyramidal OME-TIFF class map and a "
        "size-distribution plot under OUT/<name>/.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="micrograph(s): TIFF/PNG, 8/16-bit grey or RGB (give them "
                             "before --mask/--lom, which take one file per image)")
    parser.add_argument("--model", required=True,
                        help="model_bundle.pt (mvfcnn bundle) or a bare fcn8s.pt")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mask", nargs="+", help="binary second-phase mask(s) on the image "
                                                  "grid, one per image (> 0 = phase)")
    source.add_argument("--lom", nargs="+", help="LOM image(s) registered onto the image grid, "
                                                 "one per image, thresholded into objects")
    parser.add_argument("--threshold", default=None,
                        help="LOM grey level in [0, 1] or 'otsu' (default: the bundle's "
                             "masking.threshold; null there = Otsu)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--names", nargs="+", help="output sub-folder per image "
                                                   "(default: the image file name)")
    parser.add_argument("--float-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="value range of the images, rescaled to [0, 1] (default: floats "
                             "must be in [0, 1], 8/16-bit integers use their bit depth, other "
                             "integer types are refused)")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="µm per pixel (default: the bundle's pixel size, else none)")
    parser.add_argument("--low-confidence", type=float, default=0.6,
                        help="objects with a vote share below this are listed for review "
                             "(default 0.6)")
    parser.add_argument("--classes-json", default=None,
                        help="expected class set (JSON); must match the model's; its colours "
                             "are used for display")
    parser.add_argument("--tile-size", type=int, help="override the bundle's inference tile size")
    parser.add_argument("--overlap", type=int, help="override the bundle's tile overlap")
    parser.add_argument("--batch-size", type=int, help="override the bundle's batch size")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="override the bundle's inference precision (auto: bf16 where the "
                             "device computes it natively, else fp32)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation: average the softmax over the 8 flips and "
                             "rotations of each window (8x the network time); --no-tta turns "
                             "it off (default: the bundle's inference.tta_rotations/tta_flips)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; an inherited "
                             "OMP_NUM_THREADS=1 would cut it to one core)")
    parser.add_argument("--prepared", action="store_true",
                        help="the images are prepared like the training images (the "
                             "workflow's prepared TIFFs: information band cropped, prepare."
                             "upscale and prepare.intensity_percentiles applied); without it "
                             "the bundle's stretch is applied here and an enlarged-image model "
                             "is refused")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _stretch_record(loaded: LoadedModel, grey_values: list[float] | None, prepared: bool
                    ) -> dict[str, Any] | None:
    """run.json's record of the training images' grey-value stretch (None: they had none)."""
    percentiles = training_stretch(loaded)
    if percentiles is None:
        return None
    return {"percentiles": list(percentiles),
            "grey_values": None if prepared else grey_values,
            "applied": "by prepare (--prepared)" if prepared else "here"}


def classify(argv: list[str]) -> int:
    """`mvfcnn classify`: classify new micrographs with a trained model bundle."""
    args = _parser().parse_args(argv)

    set_threads(args.threads)

    # --- check everything before the first output is written
    if args.threshold is not None and not args.lom:
        raise InputError("--threshold applies to --lom only")
    threshold = _threshold(args.threshold)
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be > 0, got {args.pixel_size}")
    if not 0.0 <= args.low_confidence <= 1.0:
        raise InputError(f"--low-confidence must be in [0, 1], got {args.low_confidence}")
    names = output_names(args.images, args.names)
    if args.float_range is not None and not args.float_range[0] < args.float_range[1]:
        raise InputError(f"--float-range needs LO < HI, got {args.float_range}")
    value_range = tuple(args.float_range) if args.float_range else None
    for name in names:  # every output location, before the model is loaded
        for file in OUTPUT_FILES:
            check_writable(Path(args.out) / name / file)
    masks = _per_image(args.mask, args.images, "--mask")
    loms = _per_image(args.lom, args.images, "--lom")
    classes = None
    if args.classes_json:
        classes = classes_from_json(args.classes_json)
    loaded = load_for_inference(args.model, classes)
    overrides = {k: v for k, v in {"tile_size": args.tile_size, "overlap": args.overlap,
                                   "batch_size": args.batch_size,
                                   "precision": args.precision}.items() if v is not None}
    if args.tta is not None:
        overrides.update(tta_rotations=args.tta, tta_flips=args.tta)
    inference = {**loaded.inference, **overrides}
    if inference["tile_size"] < 32 or not 0 <= inference["overlap"] < inference["tile_size"]:
        raise InputError(f"need tile size >= 32 and 0 <= overlap < tile size, got "
                         f"{inference['tile_size']} / {inference['overlap']}")
    device = str(resolve_device(args.device))
    choice = choose_precision(str(inference["precision"]), device)
    pixel = args.pixel_size if args.pixel_size is not None else loaded.pixel_size_um
    if threshold is None:
        threshold = loaded.masking.get("threshold")
    threshold = None if threshold == "otsu" else threshold
    gray = loaded.modality == "sem"
    for image_path, mask_path, lom_path in zip(args.images, masks, loms, strict=True):
        image = read_micrograph(image_path, gray=gray, value_range=value_range)
        if not args.prepared:  # e.g. a flat image, refused before any output
            check_as_trained(image, loaded, image_path)
        if mask_path:
            read_mask_for(mask_path, image.shape[:2], image_path)
        if lom_path:
            read_lom_for(lom_path, image.shape[:2], image_path)
        del image

    # --- classify, one image at a time
    announce("classify", choice, device)
    bar = progress(len(args.images), "classify", unit="image", enabled=not args.no_progress)
    for image_path, name, mask_path, lom_path in zip(args.images, names, masks, loms,
                                                     strict=True):
        image = read_micrograph(image_path, gray=gray, value_range=value_range)
        model_image, stretched = image, None
        if not args.prepared:
            model_image, stretched = as_trained(image, loaded, image_path)
        mask = read_mask_for(mask_path, image.shape[:2], image_path) if mask_path else None
        lom, valid = (read_lom_for(lom_path, image.shape[:2], image_path) if lom_path
                      else (None, None))
        try:
            result = classify_image(model_image, loaded, mask=mask, lom=lom, lom_valid=valid,
                                    threshold=threshold, name=name, pixel_size_um=pixel,
                                    low_confidence_threshold=args.low_confidence,
                                    inference=inference, device=device,
                                    progress=not args.no_progress)
        except InputError as err:
            if err.path is None:
                raise InputError(str(err), path=lom_path or image_path) from err
            raise
        del mask, lom, valid, model_image
        info = {"image": str(image_path), "mask": mask_path, "lom": lom_path,
                "lom_threshold": threshold if lom_path else None,
                "intensity_stretch": _stretch_record(loaded, stretched, args.prepared),
                "inference": inference, "precision_choice": choice.as_dict(),
                "model": loaded.provenance()}
        write_outputs(result, image, loaded.classes, Path(args.out) / name, info=info)
        counts = ", ".join(f"{row.class_name} {row.n_objects}"
                           for row in result.summary.itertuples() if row.n_objects)
        megapixels = result.class_map.size / 1e6
        print(f"mvfcnn classify: {name}: {len(result.objects)} objects ({counts or 'none'}), "
              f"{len(result.low_confidence)} below vote share {args.low_confidence}; "
              f"{megapixels:.2f} MP in {result.seconds:.1f} s", file=sys.stderr)
        bar.update(1)
    bar.close()
    return 0


def bundle(argv: list[str]) -> int:
    """`mvfcnn bundle`: a trained model and its settings as one self-contained file."""
    parser = verb_parser(
        "bundle",
        "Write a self-contained model bundle (weights + classes, inference and "
        "masking settings, pixel size, training config, metrics, git commit) so "
        "`mvfcnn classify` needs no workflow config.", shared=("classes_json",))
    parser.add_argument("--model", required=True, help="trained final-stage model (fcn8s.pt)")
    parser.add_argument("--inference-json", required=True, help="config 'inference' section")
    parser.add_argument("--masking-json", default="{}", help="config 'masking' section")
    parser.add_argument("--training-json", default="{}",
                        help="training config to record: {fcn, variant, tiles, seed}")
    parser.add_argument("--metrics", help="the run's metrics.json")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="pixel size of the training images, µm/px (default: unknown)")
    parser.add_argument("--modality", choices=("sem", "lom"), default=None)
    parser.add_argument("--variant", default=None, help="variant name (for provenance)")
    parser.add_argument("--class-offsets", default=None,
                        help="the run's class offsets JSON (mvfcnn fit-class-offsets)")
    parser.add_argument("--out", required=True, help="bundle file to write")
    args = parser.parse_args(argv)

    classes = classes_from_json(args.classes_json)
    offsets = (read_class_offsets(args.class_offsets, list(classes.names))
               if args.class_offsets else None)
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be > 0, got {args.pixel_size}")
    metrics = read_json(args.metrics) if args.metrics else None
    write_bundle(args.model, args.out, classes=classes,
                 inference=json_arg(args.inference_json, "--inference-json"),
                 masking=json_arg(args.masking_json, "--masking-json"),
                 training=json_arg(args.training_json, "--training-json"),
                 pixel_size_um=args.pixel_size, modality=args.modality, variant=args.variant,
                 metrics=metrics, decision_offsets=offsets)
    return 0
