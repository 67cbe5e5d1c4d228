"""Defaults of every config section, read from the config schema: the one place they are written.

The workflow validates its config against ``schemas/config.schema.yaml`` (Snakemake fills in the
schema's defaults); library functions called directly from Python (tests, notebooks, the CLIs
with a partial ``--params-json``) fill the same defaults from the same file through
:func:`with_defaults`, so no module keeps its own copy that could drift.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema (workflow/schemas/config.schema.yaml links to this file)."""
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text())


def _node(path: tuple[str, ...]) -> dict[str, Any]:
    node = schema()
    for key in path:
        try:
            node = node["properties"][key]
        except KeyError:
            raise KeyError(f"config schema has no section {'.'.join(path)!r}") from None
    return node


def _defaults(node: Mapping[str, Any]) -> Any:
    """A node's default. For an object: its properties' defaults, under the object's own default
    (``synthetic.images_per_class: {default: {train: 1, test: 1}}`` wins over its properties)."""
    if node.get("type") == "object" and "properties" in node:
        out = copy.deepcopy(node.get("default", {}))
        for key, child in node["properties"].items():
            value = _defaults(child)
            if value is _MISSING:
                continue
            if key not in out:
                out[key] = value
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = merge(value, out[key])
        return out
    return copy.deepcopy(node["default"]) if "default" in node else _MISSING


_MISSING = object()


def defaults(*path: str) -> Any:
    """The schema's defaults of one section, e.g. ``defaults("fcn")`` (nested sections filled),
    or of one setting (``defaults("ignore_index")`` = 255)."""
    value = _defaults(_node(path))
    return {} if value is _MISSING else value


def merge(base: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` deep-merged over ``base`` (a copy), as Snakemake layers ``--configfile``s."""
    out = copy.deepcopy(base)
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_defaults(section: str | tuple[str, ...], given: Mapping[str, Any] | None) -> dict[str,
                                                                                         Any]:
    """``given`` (a config section, possibly partial) over the schema's defaults, deep-merged."""
    path = (section,) if isinstance(section, str) else tuple(section)
    return merge(defaults(*path), given or {})


#: config sections the report (tables, figures, best run) reads; the others (resources,
#: registration, masking, classify, crossval) cannot change a table or a figure, so they stay
#: out of the report rules' params and changing them reruns no report job
REPORT_SECTIONS = ("seed", "classes", "ignore_index", "samples", "metaldam", "prepare",
                   "synthetic", "run", "variants", "pretrain", "tiles", "fcn", "inference",
                   "baselines")


def report_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the workflow config the report jobs receive (:data:`REPORT_SECTIONS`)."""
    return {key: copy.deepcopy(config[key]) for key in REPORT_SECTIONS if key in config}
