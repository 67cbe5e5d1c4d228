"""The command lines of the FCN verbs: ``mvfcnn tile-index``, ``pretrain-trunk``, ``train-fcn``
and ``learning-curve`` (the science is in :mod:`~mvfcnn.fcn.tiling`, :mod:`~mvfcnn.fcn.pretrain`,
:mod:`~mvfcnn.fcn.train` and :mod:`~mvfcnn.fcn.curves`). The two training verbs import torch
when they run; tile-index and learning-curve never do."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from mvfcnn.core.cli_args import job_parser, verb_parser
from mvfcnn.core.config import FCN_STAGES as STAGES
from mvfcnn.core.config import classes_from_json, json_arg
from mvfcnn.core.io import read_labels, read_tables, write_json, write_table
from mvfcnn.core.settings import with_defaults
from mvfcnn.fcn import curves, tiling


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def tile_index(argv: list[str]) -> int:
    """`mvfcnn tile-index`: write the tile table (CSV) and a per-class stride/count summary."""
    parser = verb_parser("tile-index", "Sliding-window tile index with per-class stride "
                         "balancing (Azimi et al. 2018, §4.3.4).", shared=("classes_json",))
    parser.add_argument("--samples", nargs="+", required=True)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--classes", nargs="+", required=True,
                        help='image-level class per sample; "" = majority class of its labels')
    parser.add_argument("--params-json", required=True, help="the `tiles` config section")
    parser.add_argument("--balanced", type=_bool, required=True)
    parser.add_argument("--augment", type=_bool, required=True)
    parser.add_argument("--strict", action="store_true",
                        help="fail if a class cannot be balanced within the tolerance")
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the rare-class centres (tiles.rare_share > 0)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--out-summary", default=None, help="JSON: strides and counts per class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    classes = classes_from_json(args.classes_json)
    params = with_defaults("tiles", json_arg(args.params_json, "--params-json"))
    table = tiling.build_image_table(args.samples, args.images, args.labels, args.classes,
                                     classes)
    index = tiling.tile_index(table, size=int(params["size"]), stride=int(params["stride"]),
                              balanced=args.balanced, augment=args.augment,
                              tolerance=float(params["balance_tolerance"]), strict=args.strict)
    if float(params["rare_share"]) > 0:
        maps = [np.asarray(read_labels(p, sample=s))
                for s, p in zip(table["sample"], table["labels"], strict=True)]
        index = tiling.add_rare_tiles(index, maps, classes, share=float(params["rare_share"]),
                                      names=params["rare_classes"],
                                      max_frequency=float(params["rare_max_frequency"]),
                                      seed=args.seed)
    write_table(args.out, index.tiles)
    summary = index.summary()
    if args.out_summary:
        write_json(args.out_summary, summary)
    tiling.log.info("tile-index: %d tiles; %s", len(index.tiles),
                    json.dumps({n: {"stride": c.stride, "rows": index.counts[n]}
                                for n, c in index.classes.items()}))
    return 0


def _start_job(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    # torch (core.runtime): only the training verbs start a job, tile-index never does
    from mvfcnn.core.runtime import start_job

    return start_job(parser, argv)


def pretrain_trunk(argv: list[str]) -> int:
    """`mvfcnn pretrain-trunk`: the ``pretrained: patches`` trunk of one modality."""
    parser = job_parser("pretrain-trunk", "Offline stand-in for ImageNet initialisation: "
                        "pretrain the VGG16 trunk on labelled patches.",
                        params_help="the `pretrain` config section", reports_required=False)
    parser.add_argument("--images", nargs="+", required=True, help="training images")
    parser.add_argument("--labels", nargs="+", required=True, help="their label maps")
    parser.add_argument("--fcn-json", required=True, help="the `fcn` section (width, fc_channels)")
    parser.add_argument("--unlabelled", nargs="*", default=[],
                        help="label-free micrographs for the SSL phase only (split unlabelled)")
    args = _start_job(parser, argv)
    from mvfcnn.fcn import pretrain  # torch, as in _start_job

    cfg = json_arg(args.params_json, "--params-json")
    fcn_cfg = json_arg(args.fcn_json, "--fcn-json")
    summary = pretrain.pretrain_trunk(images=args.images, labels=args.labels,
                                      classes=classes_from_json(args.classes_json), cfg=cfg,
                                      fcn_cfg=fcn_cfg, seed=args.seed, out_model=args.out,
                                      out_csv=args.out_csv, out_png=args.out_png,
                                      unlabelled=args.unlabelled)
    pretrain.log.info("pretrained trunk -> %s (%s)", Path(args.out), summary)
    return 0


def train_fcn(argv: list[str]) -> int:
    """`mvfcnn train-fcn`: one FCN stage from a tile index (see :mod:`mvfcnn.fcn.train`)."""
    parser = job_parser("train-fcn", "Train one FCN stage (32s → 16s → 8s, Azimi et al. 2018 "
                        "§4.3.3) on a tile index.",
                        params_help="the `fcn` config section", reports_required=True)
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--parent", default=None, help="trained previous stage (16s, 8s)")
    parser.add_argument("--tiles", required=True)
    parser.add_argument("--variant-json", required=True, help="{pretrained, balanced, augment}")
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 (default: fcn."
                        "device or auto)")
    parser.add_argument("--val-tiles", default=None,
                        help="separate validation tile index (default: held-out positions)")
    parser.add_argument("--val-holdout-every", type=int, default=None,
                        help="hold out every k-th tile position (default fcn.val_holdout_every)")
    parser.add_argument("--num-workers", type=int, default=None)
    args = _start_job(parser, argv)
    from mvfcnn.fcn import train  # torch, as in _start_job

    cfg = json_arg(args.params_json, "--params-json")
    variant = json_arg(args.variant_json, "--variant-json")
    if args.num_workers is not None:
        cfg["num_workers"] = args.num_workers
    full = with_defaults("fcn", cfg)
    tiles = tiling.read_tiles(args.tiles)
    if args.val_tiles:
        val_tiles = tiling.read_tiles(args.val_tiles)
    else:
        every = (args.val_holdout_every if args.val_holdout_every is not None
                 else int(full["val_holdout_every"]))
        if int(full["validate_every"]) <= 0:
            every = 0
        tiles, val_tiles = train.split_validation(tiles, every, int(full["val_max_tiles"]))
        if every > 1:
            train.log.info("validation: %d held-out tiles (every %d-th position); training on %d",
                           len(val_tiles), every, len(tiles))
    train.train_stage(stage=args.stage, tiles=tiles, classes=classes_from_json(args.classes_json),
                      cfg=cfg, variant=variant, parent=args.parent, out_model=args.out,
                      out_csv=args.out_csv, out_png=args.out_png,
                      checkpoint_dir=args.checkpoint_dir, seed=args.seed,
                      device=args.device or str(full["device"]), val_tiles=val_tiles)
    return 0


def learning_curve(argv: list[str]) -> int:
    """`mvfcnn learning-curve`: a run's validation mean IU per stage (CSV + PNG)."""
    parser = verb_parser("learning-curve", learning_curve.__doc__)
    parser.add_argument("--stages", nargs="+", required=True, choices=STAGES)
    parser.add_argument("--csvs", nargs="+", required=True, help="train_<stage>.csv, same order")
    parser.add_argument("--title", default="learning curve")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-png", required=True)
    args = parser.parse_args(argv)
    curve = curves.learning_curve(read_tables(args.stages, args.csvs, what="training CSV"))
    write_table(args.out_csv, curve)
    curves.plot_learning_curve(curve, args.out_png, title=args.title)
    return 0
