"""Model bundle: the final FCN plus everything needed to use it outside the workflow.

A trained ``fcn8s.pt`` knows its classes and training settings, but not how the workflow ran
inference (tile size, overlap, precision), how it found objects (the masking section), the pixel
size of the images it learned from, or how well it did. ``mvfcnn classify`` on a new micrograph
should need none of the workflow's config, so the ``bundle`` rule rewrites the model file with
those facts in its ``extra`` dict (same ``mvfcnn-model/1`` format: :func:`load_model` reads both).

Bundle ``extra`` keys (besides the training keys of ``fcn{stage}.pt``, kept under ``model``):
``bundle`` (format tag), ``classes``, ``normalisation``, ``tile_size`` (training),
``inference`` (with ``decision_offsets`` when the run fitted them), ``precision_choice`` (what
``inference.precision`` resolved to on the machine that wrote the bundle, and why; classify
resolves it again on its own machine, so ``auto`` travels), ``masking``, ``pixel_size_um``,
``modality``, ``variant``, ``training`` (``fcn``, ``variant``, ``tiles``, ``prepare``, ``seed``,
``samples``; classify repeats ``prepare``'s grey-value stretch on new images), ``metrics``
(the run's metrics.json),
``git_commit``, ``git_dirty``, ``mvfcnn_version``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mvfcnn
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.runtime import choose_precision, resolve_device
from mvfcnn.core.settings import defaults, with_defaults
from mvfcnn.models.io import load_model, save_model

BUNDLE_FORMAT = "mvfcnn-bundle/1"


@dataclass
class LoadedModel:
    """A model ready for inference and the facts classify takes from its file."""

    model: Any
    path: Path
    classes: ClassSet
    inference: dict[str, Any]
    masking: dict[str, Any]
    pixel_size_um: float | None
    modality: str | None
    is_bundle: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """What a classification result should record about the model that made it."""
        keys = ("variant", "modality", "git_commit", "git_dirty", "mvfcnn_version")
        info = {k: self.extra.get(k) for k in keys if k in self.extra}
        metrics = self.extra.get("metrics") or {}
        for key in ("object_accuracy", "object_accuracy_segmented"):
            if key in metrics:
                info[f"test_{key}"] = metrics[key]
        return {"path": str(self.path), "bundle": self.is_bundle, **info}


def git_commit(where: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding the mvfcnn code, or (None, None) without git.

    Asked about the package's own folder, not the working directory: the workflow may run in
    a directory that is no repository, and it is the code that trained the model that matters.
    """
    if where is None:
        where = Path(mvfcnn.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                 "--untracked-files=no"], check=True, capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (commit or None), bool(status.strip())


def bundle_extra(model_extra: dict[str, Any], *, classes: ClassSet, inference: dict[str, Any],
                 masking: dict[str, Any] | None = None, pixel_size_um: float | None = None,
                 modality: str | None = None, variant: str | None = None,
                 training: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None,
                 decision_offsets: list[float] | None = None) -> dict[str, Any]:
    """The bundle's ``extra`` dict (see module docstring); plain values only. The run's fitted
    ``decision_offsets`` (``inference.class_offsets``) travel in ``inference``, where
    :func:`mvfcnn.inference.predict.predict_image` takes them."""
    missing = [k for k in ("tile_size", "overlap", "batch_size", "precision") if k not in inference]
    if missing:
        raise InputError(f"inference settings lack key(s) {missing}")

    commit, dirty = git_commit()
    choice = choose_precision(str(inference["precision"]), resolve_device("auto"))
    return {
        "bundle": BUNDLE_FORMAT,
        "classes": classes.to_dict(),
        "normalisation": model_extra.get("normalisation", "imagenet"),
        "tile_size": model_extra.get("tile_size"),
        "inference": {**with_defaults("inference", inference),
                      **({"decision_offsets": [float(v) for v in decision_offsets]}
                         if decision_offsets is not None else {})},
        "precision_choice": choice.as_dict(),
        "masking": with_defaults("masking", masking),
        "pixel_size_um": None if pixel_size_um is None else float(pixel_size_um),
        "modality": modality,
        "variant": variant,
        "training": dict(training or {}),
        "model": dict(model_extra),
        "metrics": dict(metrics or {}),
        "git_commit": commit,
        "git_dirty": dirty,
        "mvfcnn_version": mvfcnn.__version__,
    }


def write_bundle(model_path: str | Path, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Re-save the trained model at ``model_path`` as a bundle at ``out``; returns its extra.

    ``kwargs`` go to :func:`bundle_extra`. The model's own class set must equal ``classes``:
    a bundle whose labels disagree with its weights would classify silently wrong.
    """

    model, meta = load_model(model_path)
    model_extra = dict(meta.get("extra") or {})
    classes: ClassSet = kwargs["classes"]
    check_classes(model_classes(meta, model_path), classes, model_path)
    extra = bundle_extra(model_extra, **kwargs)
    save_model(out, model, arch=meta["arch"], kwargs=meta["kwargs"], extra=extra)
    return extra


def model_classes(meta: dict[str, Any], path: str | Path) -> ClassSet | None:
    """The class set stored in a model file (None for a file without one)."""
    stored = (meta.get("extra") or {}).get("classes")
    if stored is None:
        return None
    try:
        return ClassSet.from_config(stored)
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise InputError(f"model file holds an invalid class set ({err})", path=path) from err


def check_classes(stored: ClassSet | None, given: ClassSet, path: str | Path) -> None:
    """Names and indices must agree (colours may differ: they only affect display)."""
    if stored is None:
        return
    if stored.names != given.names or stored.indices != given.indices:
        raise InputError(f"model was trained for classes {list(stored.names)}, but the class set "
                         f"given has {list(given.names)}: a model file from another class set",
                         path=path)


def load_for_inference(path: str | Path, classes: ClassSet | None = None) -> LoadedModel:
    """Load a bundle or a bare ``fcn*.pt`` and check its class set.

    ``classes`` (e.g. from ``--classes-json``) is optional for files that carry their classes
    and required for those that do not; given, it must match the file's names and indices
    (its colours win). A model whose output width differs from its class count is rejected.
    """

    path = Path(path)
    model, meta = load_model(path)
    extra = dict(meta.get("extra") or {})
    stored = model_classes(meta, path)
    if stored is None and classes is None:
        raise InputError("model file carries no class set; pass --classes-json", path=path)
    if classes is not None:
        check_classes(stored, classes, path)
    use = classes if classes is not None else stored
    assert use is not None
    outputs = meta.get("kwargs", {}).get("num_classes")
    if outputs is not None and int(outputs) != use.num_classes:
        raise InputError(f"model predicts {outputs} classes but the class set has "
                         f"{use.num_classes} ({list(use.names)}): a model file from another "
                         "class set", path=path)
    is_bundle = extra.get("bundle") == BUNDLE_FORMAT
    inference = defaults("inference")
    if is_bundle:
        inference.update(extra.get("inference") or {})
    masking = with_defaults("masking", extra.get("masking") if is_bundle else None)
    pixel = extra.get("pixel_size_um") if is_bundle else None
    return LoadedModel(model=model, path=path, classes=use, inference=inference, masking=masking,
                       pixel_size_um=None if pixel is None else float(pixel),
                       modality=extra.get("modality"), is_bundle=is_bundle, extra=extra)
