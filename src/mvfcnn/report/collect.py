"""Which runs the report shows: the evaluated runs found under a results folder, the paper's
numbers, the best MVFCNN variant (``mvfcnn best-run``), and the two inputs every report command
reads (--results-dir, --config-json).
"""


from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mvfcnn.core import layout
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_json
from mvfcnn.core.runs import (
    PREFERRED_VARIANT,
    baseline_runs,
    filled_config,
    mvfcnn_runs,
)

# ----------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class Run:
    """One evaluated (method, variant, modality): its metrics and where it lives."""

    method: str
    variant: str | None
    modality: str
    directory: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the results folder the run was found in (its tile index and trunk live there too)
    results_dir: Path = Path(layout.RESULTS)

    @property
    def accuracy(self) -> float:
        return as_percent(self.metrics.get("object_accuracy"))


def load_paper(path: str | Path) -> dict[str, Any]:
    """The paper's numbers (workflow/resources/paper_tables.yaml)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise InputError("paper tables file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML ({err})", path=path) from err
    missing = [k for k in ("table1", "table2", "table3", "table4", "table5", "table6")
               if k not in (data or {})]
    if missing:
        raise InputError(f"paper tables file lacks {missing}", path=path)
    return data


def _class_words(name: str) -> str:
    return str(name).lower().replace("_", " ").strip()


def paper_classes_match(classes: ClassSet, paper: dict[str, Any]) -> bool:
    """Whether this run classifies the paper's classes (matrix, martensite, tempered martensite,
    bainite, pearlite, by name in the paper's order): only then do its numbers compare."""
    return ([_class_words(n) for n in classes.names]
            == [_class_words(n) for n in paper.get("table6_classes", [])])


def without_paper(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables of a dataset that is not the paper's: no paper columns, no paper block in
    Table 4, and no row that only the paper fills (e.g. a variant this run did not train)."""
    out = {}
    for name, frame in tables.items():
        if name == "table4":
            out[name] = frame[frame["source"] != "paper"].reset_index(drop=True)
            continue
        ours = [c for c in frame.columns if c == "ours" or c.endswith("_ours")]
        kept = frame[frame[ours].notna().any(axis=1)] if ours else frame
        out[name] = kept.drop(columns=[c for c in frame.columns
                                       if c == "paper" or c.endswith("_paper")]
                              ).reset_index(drop=True)
    return out


def collect_runs(results_dir: str | Path, config: dict[str, Any],
                 declared: Iterable[str | Path] | None = None) -> dict[tuple, Run]:
    """Metrics of every configured run that exists, keyed (method, variant, modality).

    A configured run without metrics.json is left out (its rows print the paper value only);
    a metrics.json that cannot be parsed is an error, since it means a broken upstream job.
    ``declared``: the metrics.json files the calling rule lists as inputs. Then only those are
    read, and one that is no configured run's is an error: the rule's inputs and what the
    report reads are one list, not two descriptions that could drift.
    """

    config = filled_config(config)
    results_dir = Path(results_dir)
    runs: dict[tuple, Run] = {}
    wanted = [("mvfcnn", v, m, layout.under(results_dir, layout.run_dir(False), variant=v,
                                            modality=m)) for v, m in mvfcnn_runs(config)]
    wanted += [(b, None, m, layout.under(results_dir, layout.BASELINE_DIR, method=b, modality=m))
               for b, m in baseline_runs(config)]
    listed = None if declared is None else {Path(p).resolve(): Path(p) for p in declared}
    for method, variant, modality, directory in wanted:
        path = directory / "metrics.json"
        if listed is not None and listed.pop(path.resolve(), None) is None:
            print(f"mvfcnn tables: {path} is not among the declared runs; its rows show the "
                  "paper's value only", file=sys.stderr)
            continue
        if not path.exists():
            print(f"mvfcnn tables: no {path}; its rows show the paper's value only",
                  file=sys.stderr)
            continue
        runs[(method, variant, modality)] = Run(method, variant, modality, directory,
                                                read_json(path), results_dir)
    if listed:
        raise InputError("declared as a run's metrics, but no configured run writes it "
                         f"(configured runs live under {results_dir})",
                         path=next(iter(listed.values())))
    return runs


def best_variant(runs: dict[tuple, Run], modality: str = "sem") -> tuple[str | None, str]:
    """The MVFCNN variant standing for "MVFCNN" in Tables 1, 3, 4: the paper's best
    configuration when it was run, else the highest object accuracy. Returns (variant, why)."""
    available = {k[1]: r for k, r in runs.items() if k[0] == "mvfcnn" and k[2] == modality}
    if not available:
        return None, f"no MVFCNN run on {modality.upper()}"
    if PREFERRED_VARIANT in available:
        return PREFERRED_VARIANT, f"{PREFERRED_VARIANT} (the paper's best configuration)"
    scored = sorted(available.items(),
                    key=lambda kv: (-nan_to(kv[1].accuracy, -1.0), kv[0]))
    variant = scored[0][0]
    return variant, (f"{variant} (best object accuracy among the configured variants "
                     f"{sorted(available)}; {PREFERRED_VARIANT} was not run)")


def best_runs(runs: dict[tuple, Run]) -> dict[str, dict[str, str | None]]:
    """``best_variant`` for every modality that has MVFCNN runs: {modality: {variant, why}}."""
    modalities = sorted({key[2] for key in runs if key[0] == "mvfcnn"})
    return {m: dict(zip(("variant", "why"), best_variant(runs, m), strict=True))
            for m in modalities}


def read_best_run(path: str | Path, modality: str = "sem") -> tuple[str | None, str]:
    """(variant, why) from the ``best-run`` output (``results/best.json``)."""

    entry = read_json(path).get(modality)
    if entry is None:
        return None, f"no MVFCNN run on {modality.upper()}"
    return entry["variant"], entry["why"]


# ----------------------------------------------------------------------------------------------
# Small helpers


def as_percent(value: Any) -> float:
    """Fraction -> percent rounded to 2 decimals; None/nan -> nan."""
    if value is None:
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return round(100.0 * value, 2) if math.isfinite(value) else math.nan


def number_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def nan_to(value: float, default: float) -> float:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value



def load_config_arg(text: str) -> dict[str, Any]:
    """--config-json: inline JSON, or a path to a JSON/YAML file; schema defaults filled in."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return filled_config(json.loads(text))
        except json.JSONDecodeError as err:
            raise InputError(f"--config-json is not valid JSON ({err})") from err
    path = Path(text)
    if not path.exists():
        raise InputError("config file not found", path=path)
    import yaml

    try:
        return filled_config(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise InputError(f"cannot parse config ({err})", path=path) from err
