"""Which runs a config asks for: the MVFCNN (variant, modality) pairs, the object-based
baselines, and the variant the baselines are compared with. One answer for the workflow, which
needs it when the DAG is built, and for the report; no torch, no results needed.
"""

from __future__ import annotations

from typing import Any

from mvfcnn.baselines import MATCH, PRETRAINED_METHODS
from mvfcnn.core.errors import InputError
from mvfcnn.core.settings import with_defaults

#: the paper's best configuration: the variant that stands for "MVFCNN" when it was run
PREFERRED_VARIANT = "ft_balanced_aug"


def filled_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every schema default filled in (a partial config from Python or a CLI
    reads the same values the validated workflow config has)."""
    return with_defaults((), config)


def mvfcnn_runs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(variant, modality) pairs the config runs; the workflow's and the report's."""
    run = config["run"]
    combos = run.get("combinations")  # optional: no default, variants x modalities instead
    if combos:
        return [(c["variant"], c["modality"]) for c in combos]
    return [(v, m) for v in run["variants"] for m in run["modalities"]]


def baseline_runs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, modality) pairs of the configured object-based baselines."""
    run = config["run"]
    return [(b, m) for b in run["baselines"] for m in run["baseline_modalities"]]


def compared_variant(config: dict[str, Any]) -> str | None:
    """The MVFCNN variant the tables set the baselines against, decided from the config alone
    (before any run exists, so ``pretrained: match`` can be resolved when the DAG is built):
    :data:`PREFERRED_VARIANT` if it is configured, else the first configured variant; None
    without MVFCNN runs. :func:`mvfcnn.report.collect.best_variant` makes the same choice when the
    preferred variant ran; otherwise it picks by accuracy, which the workflow cannot know in
    advance."""
    variants = [v for v, _ in mvfcnn_runs(filled_config(config))]
    if PREFERRED_VARIANT in variants:
        return PREFERRED_VARIANT
    return variants[0] if variants else None


def baseline_init(config: dict[str, Any], method: str) -> str:
    """The ``pretrained`` value a network baseline runs with: its setting, with ``match``
    resolved to the compared variant's ``pretrained`` (``none`` without MVFCNN runs).
    ``patches`` stays ``patches`` (the workflow maps it to the trunk file)."""

    if method not in PRETRAINED_METHODS:
        raise InputError(f"baseline {method!r} has no pretrained setting "
                         f"(only {list(PRETRAINED_METHODS)})")
    config = filled_config(config)
    value = str(config["baselines"][method]["pretrained"])
    if value != MATCH:
        return value
    variant = compared_variant(config)
    return "none" if variant is None else str(variant_settings(config, variant)["pretrained"])


def variant_settings(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """A configured variant's settings (pretrained, balanced, augment: required by the schema)."""
    return dict(config["variants"][variant])
