"""Train one object-based baseline on the training crops, classify the test crops, evaluate.

Methods (paper Table 1 / Table 3):

* ``handcrafted_svm`` -- hand-crafted morphology/texture features + RBF SVM (Pauly et al.
  stand-in; features computed at crop time, see :mod:`mvfcnn.baselines.features`);
* ``cifarnet`` -- :func:`mvfcnn.models.cifarnet.cifarnet` trained from scratch with SGD
  (§4.3.1: lr 1e-3, momentum 0.9, weight decay 0.004, Gaussian init ``init: paper`` with Caffe
  input 0..255 minus the training mean; the CPU default is ``init: torch`` with standardised input
  and lr 3e-3, because the paper init does not leave chance level within a CPU demo's budget);
* ``vgg19_svm`` -- VGG19 fc7 (DeCAF) features + RBF SVM (§4.3.2);
* ``vgg16`` -- VGG16 with a new last layer, fine-tuned with SGD (lr 1e-4), ImageNet-normalised
  grey repeated to 3 channels.

Initialisation (``baselines.{vgg16,vgg19_svm}.pretrained``, the same choices as the MVFCNN
variants; Table 1 should compare methods, not initialisations). The workflow resolves ``match``
(the compared variant's init, :func:`mvfcnn.core.runs.baseline_init`) and ``patches`` (the file
``results/pretrain/{modality}/trunk.pt`` the FCN starts from), so this module sees "none",
"imagenet" or a path. "none" / "imagenet" / a torchvision state dict of the method's own VGG
build torchvision's VGG16 / VGG19 (the paper's networks, :mod:`mvfcnn.models.vgg_classifier`);
any other file (the pretrained trunk, an FCN model) builds the FCN's VGG16 trunk in the layout
``--trunk-json`` gives (``fcn.width``, ``fcn.fc_channels``;
:mod:`mvfcnn.models.trunk_classifier`):

* ``vgg16``: trunk → global average pool → new linear layer, fine-tuned like torchvision's VGG16;
* ``vgg19_svm``: the RBF SVM reads the trunk's globally pooled pool5 (C5 = 128 values at width
  0.25) instead of VGG19 fc7. Why not a VGG19 trunk pretrained the same way: VGG19 has three more
  3×3 convolutions (conv3_4, conv4_4, conv5_4), 1.27× the FLOPs of VGG16 on 64-px patches
  (computed layer by layer), so its own ``pretrain_trunk`` would cost ~1.27× the VGG16 one per
  modality (an estimate, not measured) plus a second trunk layout and rule; and it would *not*
  be the MVFCNN's initialisation, which is the point of ``match``. Reusing the trunk costs one
  forward pass over the crops (no training). The table's row then reads "VGG16-trunk pool5 +
  SVM", named in its configuration text.

Networks classify into the foreground classes only (index 1..K of the class set): every
evaluated object has ``true_class >= 1``. Results go through
:func:`mvfcnn.evaluation.evaluate.write_evaluation`, so objects.csv / metrics.json / confusion.csv
have the
same format as MVFCNN's; ``confidence`` is the max softmax probability (networks) or the winning
one-vs-rest SVM decision value (SVMs). With ``--out-model`` the trained model is saved
(networks: :func:`mvfcnn.models.io.save_model`; SVMs: a joblib pickle of the sklearn pipeline).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.baselines import MATCH, METHODS
from mvfcnn.baselines.crops import CropSet
from mvfcnn.baselines.features import decaf_features
from mvfcnn.baselines.svm import fit_svm
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import atomic_path
from mvfcnn.core.progress import progress
from mvfcnn.core.runtime import announce, autocast, choose_precision
from mvfcnn.core.settings import with_defaults
from mvfcnn.fcn.train_loop import Step, fit
from mvfcnn.models.cifarnet import cifarnet
from mvfcnn.models.io import save_model
from mvfcnn.models.preprocess import normalize_batch
from mvfcnn.models.trunk_classifier import (
    uses_trunk_layout,
    vgg16_trunk_classifier,
    vgg16_trunk_features,
)
from mvfcnn.models.vgg_classifier import vgg16_finetune, vgg19_features


def merged_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` over the schema's ``baselines`` defaults (method sections merge key by key)."""

    return with_defaults("baselines", params)


# --------------------------------------------------------------------------- labels


def class_labels(true_class: np.ndarray, classes: ClassSet) -> np.ndarray:
    """true_class (1..K) -> 0-based foreground label (0..K-1) for classifiers."""
    lookup = {c: i for i, c in enumerate(classes.foreground)}
    bad = sorted({int(c) for c in true_class if int(c) not in lookup})
    if bad:
        raise InputError(f"true_class values {bad} are not foreground classes "
                         f"{list(classes.foreground)}")
    return np.asarray([lookup[int(c)] for c in true_class], dtype=np.int64)


def predictions_frame(test: CropSet, pred_label: np.ndarray, confidence: np.ndarray,
                      classes: ClassSet) -> pd.DataFrame:
    fg = np.asarray(classes.foreground, dtype=np.int64)
    return pd.DataFrame({
        "sample": test.sample, "object_id": test.object_id, "true_class": test.true_class,
        "true_class_name": [classes.names[int(c)] for c in test.true_class],
        "pred_class": fg[np.asarray(pred_label, dtype=np.int64)],
        "confidence": np.asarray(confidence, dtype=np.float64),
    })


# --------------------------------------------------------------------------- networks


def _augment(batch: Any, rng: np.random.Generator) -> Any:
    """Random horizontal/vertical flip and 90-degree rotation per crop (labels unchanged)."""
    import torch

    out = []
    for crop, (flip_h, flip_v, k) in zip(batch, rng.integers(0, [2, 2, 4], size=(len(batch), 3)),
                                         strict=True):
        if flip_h:
            crop = torch.flip(crop, dims=(-1,))
        if flip_v:
            crop = torch.flip(crop, dims=(-2,))
        out.append(torch.rot90(crop, int(k), dims=(-2, -1)))
    return torch.stack(out)


def _resolve_precision(device: str, precision: str) -> str:
    """fp32 or bf16 for this device ("auto": :func:`mvfcnn.core.runtime.choose_precision`)."""

    resolved = choose_precision(_check_precision(precision), device).precision
    return resolved if resolved in ("fp32", "bf16") else "fp32"


def _check_precision(precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"baselines.precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def _autocast(device: str, precision: str) -> Any:
    return autocast(device, precision)


def train_network(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    preprocess: Callable[[Any], Any],
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    augment: bool,
    seed: int,
    device: str = "cpu",
    precision: str = "fp32",
    desc: str = "train",
) -> list[dict[str, float]]:
    """Plain SGD on (N, S, S) uint8 crops; returns per-epoch mean loss and training accuracy."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    x_all = torch.from_numpy(np.ascontiguousarray(images))[:, None]  # (N, 1, S, S) uint8
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    history: list[dict[str, float]] = []
    n = len(x_all)
    steps = max(1, -(-n // batch_size))
    precision = _resolve_precision(device, precision)

    def batches() -> Iterator[tuple[Any, Any]]:
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = torch.from_numpy(order[start:start + batch_size])
                x, y = x_all[idx], y_all[idx]
                if augment:
                    x = _augment(x, rng)
                yield x.to(device), y.to(device)

    def step(batch: tuple[Any, Any]) -> Step:
        x, y = batch
        with _autocast(device, precision):
            logits = model(preprocess(x))
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        return Step(loss, {"loss_sum": float(loss.detach()) * len(y),
                           "correct": int((logits.argmax(1) == y).sum())})

    epoch_rows: list[dict[str, Any]] = []

    def after(iteration: int, row: dict[str, Any]) -> None:
        epoch_rows.append(row)
        if iteration % steps == 0:  # the epoch's last step: its means over the n crops
            loss, accuracy = (sum(r["loss_sum"] for r in epoch_rows) / n,
                              sum(r["correct"] for r in epoch_rows) / n)
            history.append({"epoch": iteration // steps, "loss": loss,
                            "train_accuracy": accuracy})
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}")
            epoch_rows.clear()

    bar = progress(epochs * steps, desc, unit="step")
    fit(batches(), step, optimizer, bar=bar, after=after, what=f"{desc} training",
        hint="lower the baseline's lr")
    return history


def predict_network(model: Any, images: np.ndarray, *, preprocess: Callable[[Any], Any],
                    batch_size: int, device: str = "cpu",
                    precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(labels, max softmax probability) of (N, S, S) uint8 crops."""
    import torch

    precision = _resolve_precision(device, precision)
    model.to(device).eval()
    labels, confidence = [], []
    x_all = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    with torch.inference_mode():
        for start in range(0, len(x_all), batch_size):
            with _autocast(device, precision):
                logits = model(preprocess(x_all[start:start + batch_size].to(device)))
            prob = torch.softmax(logits.float(), dim=1)
            top, arg = prob.max(dim=1)
            labels.append(arg.cpu().numpy())
            confidence.append(top.cpu().numpy())
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(labels).astype(np.int64), np.concatenate(confidence).astype(np.float64)


def _raw_grey(x: Any) -> Any:
    """CIFARNet normalises its input itself (buffers saved with the model)."""
    return x


def _imagenet_preprocess(x: Any) -> Any:
    return normalize_batch(x)


# --------------------------------------------------------------------------- methods


def _check_init(method: str, pretrained: str) -> str:
    if pretrained in (MATCH, "patches"):
        raise InputError(f"baselines.{method}.pretrained: {pretrained} is resolved by the workflow "
                         "(to the compared variant's init / the pretrained trunk file); here pass "
                         "none, imagenet or a weights file")
    return pretrained


def trunk_layout(trunk: dict[str, Any] | None) -> dict[str, Any]:
    """``width`` and ``fc_channels`` of the FCN trunk (``--trunk-json``, schema defaults)."""

    fcn = with_defaults("fcn", {k: v for k, v in (trunk or {}).items()
                                if k in ("width", "fc_channels")})
    return {"width": float(fcn["width"]), "fc_channels": int(fcn["fc_channels"])}


def _feature_extractor(pretrained: str, trunk: dict[str, Any] | None) -> tuple[Any, str]:
    """vgg19_svm's frozen extractor and its name: VGG19 fc7, or the FCN trunk's pool5 GAP."""

    if uses_trunk_layout(pretrained, "vgg19"):
        return (vgg16_trunk_features(pretrained=pretrained, **trunk_layout(trunk)),
                "vgg16_trunk_pool5_gap")

    return vgg19_features(pretrained=pretrained), "vgg19_fc7"


def _vgg16_network(pretrained: str, n_classes: int, trunk: dict[str, Any] | None
                   ) -> tuple[Any, str, dict[str, Any]]:
    """vgg16's network, its registered arch and builder kwargs (torchvision or FCN trunk)."""

    kwargs: dict[str, Any] = {"num_classes": n_classes, "pretrained": pretrained}
    if uses_trunk_layout(pretrained, "vgg16"):
        kwargs.update(trunk_layout(trunk))
        return vgg16_trunk_classifier(**kwargs), "vgg16_trunk_classifier", kwargs

    return vgg16_finetune(**kwargs), "vgg16_finetune", kwargs


def run_baseline(
    method: str,
    train: CropSet,
    test: CropSet,
    classes: ClassSet,
    *,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    trunk: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], Any]:
    """Train ``method`` on ``train``, classify ``test``.

    ``trunk`` is the FCN layout (``width``, ``fc_channels``) for a trunk initialisation.
    Returns (objects frame for write_evaluation, info, model): ``info`` holds timings
    (``train_seconds``: the training wall time), the initialisation, the training budget and
    summary; ``model`` is (model, save_model kwargs/arch) or the fitted SVM.
    """
    if method not in METHODS:
        raise InputError(f"unknown baseline {method!r}; expected one of {list(METHODS)}")
    import torch

    torch.manual_seed(seed)  # also fixes the random VGG19 of vgg19_svm with pretrained: none
    p = merged_params(params)
    y_train = class_labels(train.true_class, classes)
    n_classes = len(classes.foreground)
    info: dict[str, Any] = {"method": method, "n_train": len(train), "n_test": len(test),
                            "crop_size": int(train.images.shape[-1])}
    if method != "handcrafted_svm":
        choice = choose_precision(_check_precision(p["precision"]), device)
        p["precision"] = _resolve_precision(device, choice.precision)
        info["precision_choice"] = choice.as_dict()
        announce(f"train-baseline {method}", choice, device)
    t0 = time.perf_counter()
    if method in ("handcrafted_svm", "vgg19_svm"):
        if method == "handcrafted_svm":
            x_train, x_test = train.handcrafted, test.handcrafted
        else:
            cfg = p["vgg19_svm"]
            init = _check_init(method, str(cfg["pretrained"]))
            extractor, feature = _feature_extractor(init, trunk)
            info.update(init=init, features=feature)
            kw = {"batch_size": int(cfg["batch_size"]), "device": device,
                  "precision": p["precision"], "extractor": extractor}
            x_train = decaf_features(train.images, **kw)
            x_test = (decaf_features(test.images, **kw) if len(test)
                      else np.zeros((0, x_train.shape[1]), np.float32))
            info["feature_seconds"] = time.perf_counter() - t0
        fitted = fit_svm(x_train, y_train, seed=seed, params=p["svm"])
        info.update(best_params=fitted.best_params, cv_accuracy=fitted.cv_accuracy,
                    folds=fitted.folds, n_features=int(x_train.shape[1]))
        info["train_seconds"] = time.perf_counter() - t0
        pred, confidence = (fitted.predict(x_test) if len(test)
                            else (np.zeros(0, np.int64), np.zeros(0)))
        model: Any = fitted
    else:
        cfg = p[method]
        size = int(train.images.shape[-1])
        if method == "cifarnet":
            kwargs = {"num_classes": n_classes, "input_size": size, "in_channels": 1,
                      "pool_stride": int(cfg["pool_stride"]), "fc_width": int(cfg["fc_width"]),
                      "dropout": float(cfg["dropout"]), "init": str(cfg["init"])}
            net = cifarnet(**kwargs)
            # paper init <-> Caffe input (0..255 minus mean); torch init <-> standardised input
            mean, std = float(train.images.mean()), float(train.images.std()) or 1.0
            net.set_input_normalization(mean, 1.0 if kwargs["init"] == "paper" else 1.0 / std)
            preprocess = _raw_grey
            arch, extra = "cifarnet", {"input": "grey 0..255, normalised inside the model"}
        else:
            init = _check_init(method, str(cfg["pretrained"]))
            net, arch, kwargs = _vgg16_network(init, n_classes, trunk)
            preprocess = _imagenet_preprocess
            extra = {"input": "imagenet normalize_batch", "init": init}
            info.update(init=init, network=arch)
        info["parameters"] = int(sum(q.numel() for q in net.parameters()))
        info["epochs"] = int(cfg["epochs"])
        history = train_network(
            net, train.images, y_train, preprocess=preprocess, epochs=int(cfg["epochs"]),
            batch_size=int(cfg["batch_size"]), lr=float(cfg["lr"]),
            momentum=float(cfg["momentum"]), weight_decay=float(cfg["weight_decay"]),
            augment=bool(cfg["augment"]), seed=seed, device=device, precision=p["precision"],
            desc=f"{method} {train.modality}")
        info["history"] = history
        info["train_seconds"] = time.perf_counter() - t0
        pred, confidence = predict_network(net, test.images, preprocess=preprocess,
                                           batch_size=int(cfg["batch_size"]), device=device,
                                           precision=p["precision"])
        extra.update(classes=list(classes.foreground), crop_size=size, method=method)
        model = (net, arch, kwargs, extra)
    info["total_seconds"] = time.perf_counter() - t0
    return predictions_frame(test, pred, confidence, classes), info, model


def save_trained(model: Any, path: str | Path) -> None:
    """The model :func:`run_baseline` returns (a network tuple or a fitted scikit-learn model)
    as a file: a model file of :mod:`mvfcnn.models.io`, else a joblib dump."""
    if isinstance(model, tuple):
        net, arch, kwargs, extra = model
        save_model(path, net, arch=arch, kwargs=kwargs, extra=extra)
        return
    import joblib

    with atomic_path(path) as tmp:
        joblib.dump(model, tmp)
