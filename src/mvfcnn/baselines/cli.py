"""The command lines of the baseline verbs: ``mvfcnn crop-objects`` and ``train-baseline``
(the science is in :mod:`~mvfcnn.baselines.crops` and :mod:`~mvfcnn.baselines.run`).
train-baseline imports torch when it runs; crop-objects never does."""

from __future__ import annotations

import sys

import pandas as pd

from mvfcnn.baselines import METHODS
from mvfcnn.baselines.crops import CropSet
from mvfcnn.baselines.crops import crop_objects as make_crops
from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import classes_from_json, json_arg
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_json
from mvfcnn.core.settings import with_defaults
from mvfcnn.evaluation.evaluate import write_evaluation


def crop_objects(argv: list[str]) -> int:
    """`mvfcnn crop-objects`: the warped object crops of one (modality, split) as .npz."""
    parser = verb_parser(
        "crop-objects",
        "Crop every labelled object (true_class >= 1) by its bounding box from the "
        "masked image, warp it to crop_size^2 and compute its hand-crafted "
        "features; write one .npz per (modality, split).")
    parser.add_argument("--modality", required=True, help="sem | lom (recorded in the file)")
    parser.add_argument("--split", required=True, choices=("train", "test", "sample"),
                        help="the split the samples form, or 'sample' for one sample's objects "
                        "(cross-validation: its fold decides where they train or test)")
    parser.add_argument("--samples", nargs="+", required=True, help="sample ids")
    parser.add_argument("--images", nargs="+", required=True,
                        help="masked SEM or registered LOM, one per sample")
    parser.add_argument("--masks", nargs="+", default=None,
                        help="binary second-phase masks (0 = matrix), one per sample")
    parser.add_argument("--objects-tables", nargs="+", required=True, help="objects CSVs")
    parser.add_argument("--objects-ids", nargs="+", required=True, help="object id images")
    parser.add_argument("--params-json", default="{}", help="the config 'baselines' section")
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args(argv)

    params = json_arg(args.params_json, "--params-json")
    size = int(with_defaults("baselines", params)["crop_size"])
    if size < 8:
        raise InputError(f"baselines.crop_size must be >= 8, got {size}")
    crops = make_crops(args.samples, args.images, args.objects_tables, args.objects_ids,
                       modality=args.modality, split=args.split, size=size, masks=args.masks,
                       handcrafted=params.get("handcrafted"))
    crops.save(args.out)
    counts = pd.Series(crops.true_class).value_counts().sort_index().to_dict()
    print(f"mvfcnn crop-objects: {args.modality}/{args.split}: {len(crops)} objects from "
          f"{len(args.samples)} samples, {size}x{size}, per class {counts}", file=sys.stderr)
    return 0


def _check_sets(train: CropSet, test: CropSet, modality: str) -> None:
    for name, crops in (("train", train), ("test", test)):
        if crops.modality != modality:
            raise InputError(f"{name} crops are of modality {crops.modality!r}, not {modality!r}")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise InputError(f"train crops {train.images.shape[1:]} and test crops "
                         f"{test.images.shape[1:]} differ in size")
    if len(train) == 0:
        raise InputError("no labelled training objects (true_class >= 1) to train on")


def train_baseline(argv: list[str]) -> int:
    """`mvfcnn train-baseline`: train, classify and evaluate one object-based baseline."""
    parser = verb_parser(
        "train-baseline",
        "Train one object-based baseline on the training crops, classify the test "
        "crops and write objects.csv / metrics.json / confusion.csv.", shared=("classes_json",))
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--modality", required=True, help="sem | lom")
    parser.add_argument("--train", nargs="+", required=True,
                        help="training crops (.npz of crop-objects; several are concatenated)")
    parser.add_argument("--test", nargs="+", required=True, help="test crops (.npz, as --train)")
    parser.add_argument("--params-json", default="{}", help="the config 'baselines' section")
    parser.add_argument("--trunk-json", default=None,
                        help="the FCN trunk layout {width, fc_channels} for a trunk init")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-metrics", required=True)
    parser.add_argument("--out-objects", required=True)
    parser.add_argument("--out-confusion", required=True)
    parser.add_argument("--out-model", default=None, help="optional trained model file")
    parser.add_argument("--out-info", default=None,
                        help="optional JSON with timings, training curve, chosen SVM parameters")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: config)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    # torch: train-baseline alone needs it (crop-objects never imports it)
    from mvfcnn.baselines.run import merged_params, run_baseline, save_trained
    from mvfcnn.core.runtime import resolve_device, set_threads

    classes = classes_from_json(args.classes_json)
    params = json_arg(args.params_json, "--params-json")
    train = CropSet.load_all(args.train, split="train")
    test = CropSet.load_all(args.test, split="test")
    _check_sets(train, test, args.modality)

    p = merged_params(params)
    device = str(resolve_device(args.device or p["device"]))
    if args.threads and args.method != "handcrafted_svm":
        set_threads(args.threads)
    trunk = json_arg(args.trunk_json, "--trunk-json") if args.trunk_json else None
    frame, info, model = run_baseline(args.method, train, test, classes, params=params,
                                      seed=args.seed, device=device, trunk=trunk)

    metrics = write_evaluation(frame, classes, method=args.method, modality=args.modality,
                               variant=None, out_metrics=args.out_metrics,
                               out_objects=args.out_objects, out_confusion=args.out_confusion)
    if args.out_model:
        save_trained(model, args.out_model)
    if args.out_info:
        write_json(args.out_info, {**info, "device": device, "seed": args.seed})
    acc = metrics["object_accuracy"]
    print(f"mvfcnn train-baseline: {args.method}/{args.modality}: {len(train)} train, "
          f"{metrics['n_objects']} test objects, accuracy "
          f"{'n/a' if acc is None else f'{acc:.4f}'} ({info['total_seconds']:.1f} s on {device})",
          file=sys.stderr)
    return 0
