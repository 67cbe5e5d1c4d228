"""`mvfcnn <verb> ...`: one console script, verbs dispatched lazily to their modules.

Each verb maps to a ``module:function``, the function of its stage package's ``cli`` module
(``mvfcnn.<package>.cli``; the science modules hold no command line) that takes ``argv`` (the
remaining arguments) and parses them itself. Importing the CLI costs nothing until a verb is
chosen (torch is only imported by verbs that need it).
"""

from __future__ import annotations

import importlib
import sys

from mvfcnn.core.errors import InputError

VERBS: dict[str, tuple[str, str]] = {
    "synthesize": ("mvfcnn.data.cli:synthesize", "Generate the embedded synthetic dataset"),
    "prepare": ("mvfcnn.data.cli:prepare",
                "Released micrograph -> grey TIFF without the band, checked labels, pixel size "
                "from the scale bar"),
    "register": ("mvfcnn.data.cli:register", "Register LOM onto SEM, write transform + score"),
    "mask": ("mvfcnn.objects.cli:mask", "Binary second-phase mask from registered LOM"),
    "objects": ("mvfcnn.objects.cli:objects", "Connected-component objects table + id image"),
    "tile-index": ("mvfcnn.fcn.cli:tile_index", "Stride-balanced sliding-window tile table"),
    "pretrain-trunk": ("mvfcnn.fcn.cli:pretrain_trunk",
                       "Pretrain the VGG trunk on labelled patches (pretrained: patches)"),
    "train-fcn": ("mvfcnn.fcn.cli:train_fcn", "Train one FCN stage (32s/16s/8s/4s/2s)"),
    "learning-curve": ("mvfcnn.fcn.cli:learning_curve",
                       "A run's validation mean IU per stage, over all stages (CSV + PNG)"),
    "predict": ("mvfcnn.inference.cli:predict", "Sliding-window inference + stitching"),
    "fit-class-offsets": ("mvfcnn.inference.cli:fit_class_offsets",
                          "Per-class decision offsets fitted on held-out tiles"),
    "vote": ("mvfcnn.evaluation.cli:vote", "Max-vote predicted pixels inside each object"),
    "fit-object-offsets": ("mvfcnn.evaluation.cli:fit_object_offsets",
                           "Per-class offsets for the second-phase object vote, fitted on "
                           "labelled objects"),
    "evaluate": ("mvfcnn.evaluation.cli:evaluate", "Pixel and object metrics over a test set"),
    "crop-objects": ("mvfcnn.baselines.cli:crop_objects",
                     "Crop + warp objects for object-based baselines"),
    "train-baseline": ("mvfcnn.baselines.cli:train_baseline",
                       "Train/evaluate one object-based baseline"),
    "crossval": ("mvfcnn.evaluation.crossval_cli:crossval",
                 "Cross-validation table: per fold, mean ± SE, literature"),
    "crossval-objects": ("mvfcnn.evaluation.crossval_cli:crossval_objects",
                         "MVFCNN vs the object-based baselines on every fold: object accuracy, "
                         "class recall, mean ± SE"),
    "crossval-curves": ("mvfcnn.evaluation.crossval_cli:crossval_curves",
                        "Every fold's validation mean IU per stage (CSV + figure)"),
    "crossval-figure": ("mvfcnn.evaluation.crossval_cli:crossval_figure",
                        "One test image per fold: micrograph | truth | prediction"),
    "best-run": ("mvfcnn.report.cli:best_run",
                 "Which MVFCNN variant the report shows, per modality (results/best.json)"),
    "tables": ("mvfcnn.report.cli:tables", "Regenerate the paper's tables and summary.md"),
    "figures": ("mvfcnn.report.cli:figures", "Regenerate the paper's figures"),
    "compare-tables": ("mvfcnn.report.cli:compare_tables",
                       "Two runs' tables: the same numbers and words, measured times aside?"),
    "bundle": ("mvfcnn.classify.cli:bundle",
               "Self-contained model bundle for classify (weights + settings)"),
    "classify": ("mvfcnn.classify.cli:classify",
                 "Classify new micrographs with a trained model bundle"),
}


def _usage() -> str:
    lines = ["usage: mvfcnn <verb> [options]", "", "verbs:"]
    lines += [f"  {verb:<15} {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "`mvfcnn <verb> --help` shows the options of one verb."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"mvfcnn: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = VERBS[verb][0].partition(":")
    module = importlib.import_module(module_name)
    try:
        result = getattr(module, function)(rest)
    except InputError as err:
        print(f"mvfcnn {verb}: error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
