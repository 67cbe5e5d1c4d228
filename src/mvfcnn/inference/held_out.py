"""The pixels a run's decision offsets are fitted on (:mod:`mvfcnn.inference.calibration`): the
tile positions its training held out, predicted as the run predicts. Imports torch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.runtime import set_threads
from mvfcnn.fcn.dataset import TileDataset
from mvfcnn.fcn.tiling import read_tiles
from mvfcnn.fcn.train import split_validation
from mvfcnn.inference.calibration import fit_class_bias, model_class_set
from mvfcnn.inference.predict import predict_image
from mvfcnn.models.io import load_model

#: the held-out pixels are thinned evenly to this many (the fit's cost grows with them)
MAX_FIT_PIXELS = 2_000_000


def held_out_pixels(model, tiles: pd.DataFrame, *, holdout_every: int, inference: dict[str, Any],
                    num_classes: int, ignore_index: int = 255,
                    max_pixels: int = MAX_FIT_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities (N, K), labels (N,)) of the labelled pixels of every held-out
    position's rot-0 tile (:func:`mvfcnn.fcn.train.split_validation` without a cap), predicted
    with ``inference`` (:func:`mvfcnn.inference.predict.inference_kwargs`), thinned evenly to at
    most ``max_pixels``. None held out (too few positions): two empty arrays."""
    _, val = split_validation(tiles, int(holdout_every), None)
    if len(val) == 0:
        return np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64)
    dataset = TileDataset(val, ignore_index=ignore_index)
    settings = dict(inference)
    logs, labels = [], []
    for i in range(len(dataset)):
        image, lab = dataset.read(i)
        settings.update(tile_size=max(image.shape[:2]), fit_tiles=True)
        _, probs = predict_image(model, image, **settings, return_probs=True, progress=False)
        keep = lab.reshape(-1) != ignore_index
        flat = probs.reshape(num_classes, -1)[:, keep].T.astype(np.float32)
        logs.append(np.log(np.maximum(flat, np.float32(1e-12))))
        labels.append(lab.reshape(-1)[keep])
    log_probs, flat_labels = np.concatenate(logs), np.concatenate(labels)
    if len(flat_labels) > max_pixels:
        pick = np.linspace(0, len(flat_labels) - 1, max_pixels).round().astype(np.int64)
        log_probs, flat_labels = log_probs[pick], flat_labels[pick]
    return log_probs, flat_labels


def fit_offsets(model_path: str | os.PathLike[str], tiles_path: str | os.PathLike[str], *,
                inference: dict[str, Any], holdout_every: int, objective: str,
                threads: int | None = None) -> tuple[list[str], np.ndarray, int]:
    """(class names, offsets, pixels fitted on) of a trained FCN on its run's held-out tiles."""
    set_threads(threads)
    model, meta = load_model(model_path)
    classes = model_class_set(meta, model_path)
    log_probs, labels = held_out_pixels(model, read_tiles(tiles_path),
                                        holdout_every=holdout_every, inference=inference,
                                        num_classes=classes.num_classes,
                                        ignore_index=classes.ignore_index)
    offsets = fit_class_bias(log_probs, labels, ignore_index=classes.ignore_index,
                             objective=objective)
    return list(classes.names), offsets, int(len(labels))
