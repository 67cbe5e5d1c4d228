"""Words about how a run was made (data, initialisation, budget), for the tables' notes and
the summary page: read from the config filled from the schema and the run's own info files.
"""


from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mvfcnn.baselines import MATCH, PRETRAINED_METHODS
from mvfcnn.core import layout
from mvfcnn.core.runs import (
    baseline_init,
    compared_variant,
    variant_settings,
)
from mvfcnn.core.settings import with_defaults
from mvfcnn.report.collect import Run


def iterations_text(fcn: dict[str, Any]) -> str:
    """Iterations per FCN stage for prose: "300/150/150 (32s/16s/8s)"."""
    stages = fcn["stages"]
    return "/".join(str(fcn["iterations"][s]) for s in stages) + f" ({'/'.join(stages)})"


def train_info(results_dir: Path, variant: str | None, modality: str) -> str:
    """Training images and tile count, read from the tile index when it exists."""
    if variant is None:
        return ""
    tiles = layout.under(results_dir, layout.tiles_stem(False) + ".csv", variant=variant,
                         modality=modality)
    if not tiles.exists():
        return ""
    try:
        frame = pd.read_csv(tiles, usecols=["sample"])
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return ""
    return f"{frame['sample'].nunique()} train images ({len(frame)} tiles)"


def test_info(run: Run) -> str:
    """Test images and objects of a run, read from its own files."""
    objects = run.directory / "objects.csv"
    parts = []
    if objects.exists():
        try:
            samples = pd.read_csv(objects, usecols=["sample"])["sample"].nunique()
            parts.append(f"{samples} test images")
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            pass
    if run.metrics.get("n_objects") is not None:
        parts.append(f"{run.metrics['n_objects']} test objects")
    return ", ".join(parts)


def describe_run(run: Run | None, config: dict[str, Any]) -> str:
    """The configuration that produced ``run``: variant, modality, init, network, tiles,
    iterations and image counts (from the config and the run's own files)."""
    if run is None:
        return ""
    parts = [f"{run.modality.upper()}"]
    if run.method == "mvfcnn" and run.variant is not None:
        settings = variant_settings(config, run.variant)
        fcn = config["fcn"]
        parts[0] = f"{run.variant} / {run.modality.upper()}"
        parts.append(f"init={settings['pretrained']}")
        parts.append(f"balanced={str(settings['balanced']).lower()}")
        parts.append(f"augment={str(settings['augment']).lower()}")
        parts.append(f"VGG16 width x{fcn['width']}, fc {fcn['fc_channels']}")
        parts.append(f"tile {config['tiles']['size']} px")
        parts.append(f"budget: {mvfcnn_budget(run, config)}")
        parts.append(train_info(run.results_dir, run.variant, run.modality))
    else:
        settings = baseline_settings(config, run.method)
        info = _read_info(run.directory)
        parts.append(baseline_init_text(config, run.method, info))
        parts.append(f"crop {settings['crop_size']} px")
        parts.append(f"budget: {baseline_budget(config, run, info)}")
        if info.get("n_train") is not None:
            parts.append(f"{info['n_train']} train objects")
    parts.append(test_info(run))
    return "; ".join(p for p in parts if p)


def _read_info(directory: Path) -> dict[str, Any]:
    """A baseline's info.json (timings, init, training summary); {} when absent or unreadable."""
    path = directory / "info.json"
    try:
        info = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def seconds_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def hms_text(seconds: float) -> str:
    """``h:mm:ss``, for wall times of whole runs."""
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


#: what :func:`seconds_text` and :func:`hms_text` (with its unit) write: the only part of a
#: table or summary that differs between two runs of the same code on the same data
MEASURED_TIME = re.compile(r"(?<![\d.])\d+(?:\.\d)? s\b|(?<![\d:])\d+:\d{2}:\d{2} \(h:m:s\)")


def without_measured_times(text: str) -> str:
    """``text`` with every measured duration replaced by ``<time>``."""
    return MEASURED_TIME.sub("<time>", text)


def csv_seconds(path: Path) -> float | None:
    """Sum of the ``seconds`` column of a training CSV (the iterations' wall time)."""
    if not path.exists():
        return None
    try:
        return float(pd.read_csv(path, usecols=["seconds"])["seconds"].sum())
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _pretrain_text(config: dict[str, Any], results_dir: Path, modality: str) -> str:
    """The trunk pretraining a ``patches`` init costs: iterations x batch, and its wall time."""
    pretrain = config["pretrain"]
    text = (f"trunk pretraining {pretrain['iterations']} iterations x {pretrain['batch_size']} "
            f"patches")
    seconds = csv_seconds(layout.under(results_dir, layout.trunk_dir(False), modality=modality)
                           / "pretrain.csv")
    return text + (f" ({seconds_text(seconds)})" if seconds is not None else "")


def mvfcnn_budget(run: Run, config: dict[str, Any]) -> str:
    """Iterations per FCN stage (plus the trunk pretraining of a ``patches`` init) and the
    training wall time summed from the stages' CSVs when they exist."""
    fcn = config["fcn"]
    text = f"FCN iterations {iterations_text(fcn)}, batch {fcn['batch_size']}"
    times = [csv_seconds(run.directory / f"train_{stage}.csv") for stage in fcn["stages"]]
    if all(t is not None for t in times):
        text += f" ({seconds_text(sum(t for t in times if t is not None))})"
    if run.variant is not None and str(variant_settings(config, run.variant)["pretrained"]) \
            == "patches":
        text += " + " + _pretrain_text(config, run.results_dir, run.modality)
    return text


def baseline_init_text(config: dict[str, Any], method: str,
                       info: dict[str, Any] | None = None) -> str:
    """How a baseline's network starts, named for the tables: ``init=<resolved>``, what
    ``match`` matched, and the network it implies (from info.json when the run recorded it)."""

    info = info or {}
    if method == "handcrafted_svm":
        return "init=none (no network: hand-crafted features)"
    if method not in PRETRAINED_METHODS:
        init = baseline_settings(config, method).get("init", "torch")
        return f"init=none (from scratch, {init} random init)"
    setting = str(config["baselines"][method]["pretrained"])
    init = baseline_init(config, method)
    text = f"init={init}"
    if setting == MATCH:
        text += f" (match: as {compared_variant(config) or 'no MVFCNN run'})"
    trunk = _uses_trunk(info, init)
    fcn = config["fcn"]
    layout = f"width x{fcn['width']}, fc {fcn['fc_channels']}"
    if method == "vgg16":
        return text + (f", the FCN's VGG16 trunk ({layout}) + GAP pool5 + new linear layer"
                       if trunk else ", torchvision VGG16 with a new fc8")
    return text + (f", SVM on GAP pool5 of the FCN's VGG16 trunk ({layout}), not VGG19 fc7"
                   if trunk else ", SVM on VGG19 fc7 (DeCAF)")


def _uses_trunk(info: dict[str, Any], init: str) -> bool:
    """Whether a baseline ran on the FCN's trunk: as its info.json says, else by its init."""
    if "network" in info or "features" in info:
        return (info.get("network") == "vgg16_trunk_classifier"
                or info.get("features") == "vgg16_trunk_pool5_gap")
    return init == "patches"


def baseline_budget_words(config: dict[str, Any], method: str) -> str:
    """What a baseline trains for: its epochs and batch, or the SVM's grid search."""
    settings = with_defaults("baselines", config["baselines"])
    if method in ("handcrafted_svm", "vgg19_svm"):
        svm = settings["svm"]
        return (f"RBF SVM grid {len(svm['C'])} C x {len(svm['gamma_factor'])} gamma, "
                f"{svm['folds']}-fold CV, no network training")
    return f"{settings[method]['epochs']} epochs, batch {settings[method]['batch_size']}"


def baseline_budget(config: dict[str, Any], run: Run, info: dict[str, Any]) -> str:
    """Epochs (networks) or the SVM's grid search, the training wall time info.json records
    (``train_seconds``), and the shared trunk pretraining when the network starts from it."""
    method = run.method
    text = baseline_budget_words(config, method)
    if info.get("train_seconds") is not None:
        text += f" ({seconds_text(float(info['train_seconds']))})"
    if method in ("vgg16", "vgg19_svm") and _uses_trunk(info, baseline_init(config, method)):
        text += " + the FCN's " + _pretrain_text(config, run.results_dir, run.modality)
    return text


def baseline_settings(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The effective settings of one baseline: the config's ``baselines`` section over the
    schema's defaults, flattened to the top level plus the method's section (handcrafted_svm
    has no section of its own)."""
    base = with_defaults("baselines", config["baselines"])
    flat = {k: v for k, v in base.items() if not isinstance(v, dict | list)}
    flat.update({k: v for k, v in (base.get(method) or {}).items()
                 if not isinstance(v, dict | list)})
    return flat


def strategy_words(settings: dict[str, Any]) -> str:
    pretrained = str(settings["pretrained"])
    if pretrained == "none":
        return "from scratch"
    if pretrained == "patches":
        return "fine tuning (trunk pretrained on labelled training patches, ImageNet stand-in)"
    return f"fine tuning ({pretrained} init)"


def data_words(settings: dict[str, Any], modality: str) -> str:
    balanced, augment = settings["balanced"], settings["augment"]
    words = ("Balanced and augmented" if balanced and augment else "Balanced" if balanced
             else "Augmented unbalanced" if augment else "Unbalanced")
    return f"{words} {modality.upper()}"
