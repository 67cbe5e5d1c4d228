"""The parsers every ``mvfcnn <verb>`` command starts from, so each names its verb one way and
the arguments a family of verbs shares are declared once (training jobs, report jobs)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

#: arguments many verbs take, declared once (``verb_parser(..., shared=("sample", ...))``)
SHARED: dict[str, tuple[str, dict[str, Any]]] = {
    "sample": ("--sample", {"required": True, "help": "sample id (named in messages)"}),
    "classes_json": ("--classes-json", {"required": True,
                                        "help": "the class set as JSON (the config's classes)"}),
}


def verb_parser(verb: str, description: str | None, *,
                shared: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of ``mvfcnn <verb>`` (its usage line names the verb as users type it), with
    the :data:`SHARED` arguments named in ``shared``."""
    parser = argparse.ArgumentParser(prog=f"mvfcnn {verb}", description=description)
    for name in shared:
        flag, options = SHARED[name]
        parser.add_argument(flag, **options)
    return parser


def job_parser(verb: str, description: str, *, params_help: str,
               reports_required: bool) -> argparse.ArgumentParser:
    """The parser of a training job (pretrain-trunk, train-fcn) with the arguments both take:
    --classes-json, --params-json, --seed, --out, --out-csv, --out-png (the loss table and
    plot; ``reports_required`` makes them mandatory) and --threads."""
    parser = verb_parser(verb, description, shared=("classes_json",))
    parser.add_argument("--params-json", required=True, help=params_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--out-csv", required=reports_required, default=None)
    parser.add_argument("--out-png", required=reports_required, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (e.g. {threads}; default: torch's)")
    return parser


def report_parser(verb: str, description: str) -> argparse.ArgumentParser:
    """The parser of a report verb (tables, best-run, figures) with the inputs every one reads:
    --results-dir, --config-json (read it with ``report.collect.load_config_arg``) and --runs,
    the runs' metrics files as the calling rule declares them."""
    parser = verb_parser(verb, description)
    parser.add_argument("--results-dir", default="results", help="workflow results folder")
    parser.add_argument("--config-json", required=True,
                        help="the resolved workflow config as JSON (or a JSON/YAML file path)")
    parser.add_argument("--runs", nargs="*", default=None, metavar="METRICS_JSON",
                        help="the metrics.json of every run the calling rule declares: only "
                             "these runs are read (default: every configured run found under "
                             "--results-dir)")
    return parser
