"""`mvfcnn <verb> ...`: one console script, verbs dispatched lazily to their modules.

Each verb maps to a module (its ``cli``) or a ``module:function`` that takes ``argv`` (the
remaining arguments) and parses them itself, so importing the CLI costs nothing until a verb
is chosen (torch is only imported by verbs that need it).
"""

from __future__ import annotations

import importlib
import sys

from mvfcnn.core.errors import InputError

VERBS: dict[str, tuple[str, str]] = {
    "synthesize": ("mvfcnn.data.synthetic", "Generate the embedded synthetic dataset"),
    "prepare": ("mvfcnn.data.prepare", "Released micrograph -> grey TIFF without the band, checked "
                "labels, pixel size from the scale bar"),
    "register": ("mvfcnn.data.registration", "Register LOM onto SEM, write transform + score"),
    "mask": ("mvfcnn.objects.masking", "Binary second-phase mask from registered LOM"),
    "objects": ("mvfcnn.objects.components", "Connected-component objects table + id image"),
    "tile-index": ("mvfcnn.fcn.tiling", "Stride-balanced sliding-window tile table"),
    "pretrain-trunk": ("mvfcnn.fcn.pretrain", "Pretrain the VGG trunk on labelled patches "
                       "(pretrained: patches)"),
    "train-fcn": ("mvfcnn.fcn.train", "Train one FCN stage (32s/16s/8s/4s/2s)"),
    "learning-curve": ("mvfcnn.fcn.curves:learning_curve_cli",
                       "A run's validation mean IU per stage, over all stages (CSV + PNG)"),
    "predict": ("mvfcnn.inference.predict", "Sliding-window inference + stitching"),
    "vote": ("mvfcnn.evaluation.voting", "Max-vote predicted pixels inside each object"),
    "evaluate": ("mvfcnn.evaluation.evaluate", "Pixel and object metrics over a test set"),
    "crop-objects": ("mvfcnn.baselines.crops", "Crop + warp objects for object-based baselines"),
    "train-baseline": ("mvfcnn.baselines.run", "Train/evaluate one object-based baseline"),
    "crossval": ("mvfcnn.evaluation.crossval",
                 "Cross-validation table: per fold, mean ± SE, literature"),
    "crossval-objects": ("mvfcnn.evaluation.crossval_objects",
                         "MVFCNN vs the object-based baselines on "
                         "every fold: object accuracy, class recall, mean ± SE"),
    "crossval-curves": ("mvfcnn.evaluation.crossval:learning_curves_cli",
                        "Every fold's validation mean IU per stage (CSV + figure)"),
    "crossval-figure": ("mvfcnn.evaluation.crossval:figure_cli",
                        "One test image per fold: micrograph | truth | prediction"),
    "best-run": ("mvfcnn.report.collect:best_run_cli", "Which MVFCNN variant the report shows, per "
                 "modality (results/best.json)"),
    "tables": ("mvfcnn.report.summary:report_cli", "Regenerate the paper's tables and summary.md"),
    "figures": ("mvfcnn.report.figures", "Regenerate the paper's figures"),
    "compare-tables": ("mvfcnn.report.compare", "Two runs' tables: the same numbers and words, "
                       "measured times aside?"),
    "bundle": ("mvfcnn.classify.bundle",
               "Self-contained model bundle for classify (weights + settings)"),
    "classify": ("mvfcnn.classify.cli", "Classify new micrographs with a trained model bundle"),
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
        result = getattr(module, function or "cli")(rest)
    except InputError as err:
        print(f"mvfcnn {verb}: error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
