"""Train one FCN stage (32s → 16s → 8s, Azimi et al. 2018 §4.3.3) on a tile index.

FCN-32s starts from the variant's ``pretrained`` trunk ("none", "imagenet" or a path); 16s and 8s
are built fresh and initialised from the trained parent stage (``init_from_parent``: every
matching layer is copied, the new score layer starts at zero, so a child's first prediction is
its parent's last). Plain SGD with momentum and weight decay at a fixed per-stage learning rate
(Caffe ``lr_policy: fixed``), biases at ``bias_lr_mult`` × lr and ``bias_decay_mult`` × decay
(Caffe FCN prototxts: 2 and 0).

Validation
----------
Every ``validate_every`` iterations (and after the last) pixel accuracy and mean IU (Long et al.,
:mod:`mvfcnn.evaluation.metrics`) are computed on ``val_tiles`` and added to that CSV row (empty
cells
elsewhere). ``mvfcnn train-fcn`` holds out every k-th tile *position* of the index
(``fcn.val_holdout_every``, default 10, :func:`split_validation`; all rotations of a held-out
position leave the training set; the validation set is their rot = 0 tiles, at most
``fcn.val_max_tiles``, evenly spaced) or takes a separate index (``--val-tiles``). Held-out
windows overlap neighbouring training windows, so these numbers track fitting within the
training images; they are never computed on test images.

Within a stage the learning rate is constant (the paper's) or decays (``fcn.lr_schedule``:
``poly``, ``cosine``; :func:`mvfcnn.fcn.losses.lr_factor`); the CSV's ``lr`` column is the rate of
each step.
``fcn.keep_best`` makes each stage's model the weights of its best validation mean IU rather
than the last iteration's (kept in the checkpoints, so a resumed stage keeps the same best).
``fcn.ema_decay`` > 0 validates and keeps an exponential moving average of the weights
(:mod:`mvfcnn.fcn.averaging`) instead of the last iterate; with ``keep_best`` the best validated
average. The average is in the checkpoints too.

Rare classes (issue 22): ``fcn.dice_weight`` adds a soft-Dice term to the cross-entropy
(:func:`mvfcnn.fcn.losses.soft_dice_loss`), ``fcn.lovasz_weight`` a Lovász-softmax term
(:func:`mvfcnn.fcn.losses.lovasz_softmax_loss`), and ``fcn.class_weight_cap`` clips median-frequency
class weights (``fcn.class_weighting``) to [1/cap, cap]; both leave the sum/mean conventions of
:mod:`mvfcnn.fcn.losses` intact.

SEM contrast augmentation (``fcn.augmentation``: flips, gamma, contrast, brightness, blur,
noise; :func:`mvfcnn.fcn.dataset.augment_tile`) applies to variants with ``augment: true``, beside
the tile index's rotations, so a variant's ``augment`` switches all augmentation on or off.

Optional ``fcn`` keys (defaults: the config schema, :mod:`mvfcnn.core.settings`): dropout,
bias_lr_mult, bias_decay_mult, num_workers, val_holdout_every, val_max_tiles, keep_checkpoints,
progress.

The loss conventions and learning rates are in :mod:`mvfcnn.fcn.losses`; resuming and
determinism in :mod:`mvfcnn.fcn.checkpoints`; the curves it writes in :mod:`mvfcnn.fcn.curves`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mvfcnn.core.config import FCN_STAGES as STAGES
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.progress import progress
from mvfcnn.core.runtime import (
    announce,
    autocast,
    choose_precision,
    resolve_device,
)
from mvfcnn.core.settings import with_defaults
from mvfcnn.evaluation.metrics import confusion_matrix, pixel_report
from mvfcnn.fcn.averaging import WeightAverage
from mvfcnn.fcn.checkpoints import (
    _remove_stale_temporaries,
    _rng_state,
    _set_rng_state,
    checkpoint_files,
    deterministic,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from mvfcnn.fcn.curves import plot_curves, write_rows
from mvfcnn.fcn.dataset import AugmentedTiles, TileDataset, augmentation_enabled, sample_order
from mvfcnn.fcn.losses import LOSSES, class_balance_weights, lr_factor, make_optimizer, pixel_loss
from mvfcnn.fcn.stage_model import build_stage_model
from mvfcnn.fcn.tiling import is_centred
from mvfcnn.fcn.train_loop import Step, fit
from mvfcnn.models.io import save_model
from mvfcnn.models.preprocess import normalize_batch

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- validation


def split_validation(tiles: pd.DataFrame, every: int,
                     max_tiles: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training tiles, validation tiles): every ``every``-th position held out (all rotations).

    Positions are (sample, y, x) in order of first appearance; the validation tiles are their
    rot = 0 rows, thinned to at most ``max_tiles`` evenly spaced ones. Windows centred on a rare
    class (:func:`mvfcnn.fcn.tiling.add_rare_tiles`) always train, so validation sees the same
    windows with or without them.
    """

    if every <= 1:
        return tiles, tiles.iloc[:0]
    centred = is_centred(tiles) if "class" in tiles.columns else np.zeros(len(tiles), bool)
    keys = list(zip(tiles["sample"].astype(str), tiles["y"], tiles["x"], strict=True))
    ordinal: dict[tuple[str, int, int], int] = {}
    for key, extra in zip(keys, centred, strict=True):
        if not extra:
            ordinal.setdefault(key, len(ordinal))
    held = np.array([not extra and ordinal[k] % every == every - 1
                     for k, extra in zip(keys, centred, strict=True)], dtype=bool)
    if not held.any() or held.all():
        return tiles, tiles.iloc[:0]
    train = tiles.loc[~held].reset_index(drop=True)
    val = tiles.loc[held & (tiles["rot"].to_numpy() == 0)].reset_index(drop=True)
    if max_tiles is not None and 0 < max_tiles < len(val):
        pick = np.unique(np.linspace(0, len(val) - 1, max_tiles).round().astype(int))
        val = val.iloc[pick].reset_index(drop=True)
    return train, val


@torch.no_grad()
def evaluate_tiles(model: nn.Module, loader: Any, *, device: torch.device, precision: str,
                   classes: ClassSet) -> dict[str, float]:
    """Pixel accuracy and mean IU over one confusion matrix of all validation tiles."""

    was_training = model.training
    model.eval()
    conf = np.zeros((classes.num_classes, classes.num_classes), dtype=np.int64)
    try:
        for images, labels in loader:
            x = normalize_batch(images.to(device)).contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                pred = model(x).argmax(1)
            conf += confusion_matrix(labels.numpy(), pred.cpu().numpy(), classes.num_classes,
                                     classes.ignore_index)
    finally:
        model.train(was_training)
    report = pixel_report(conf, classes)
    return {"pixel_accuracy": float(report["pixel_accuracy"]), "mean_iu": float(report["mean_iu"])}


# --------------------------------------------------------------------------- training


def _loader(dataset: torch.utils.data.Dataset, batches: list[list[Any]], *, seed: int,
            num_workers: int, pin: bool) -> torch.utils.data.DataLoader:
    # an own generator: creating the iterator must not draw from the global torch RNG, or a
    # resumed run (which restores that RNG) would diverge from an uninterrupted one
    generator = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       generator=generator, pin_memory=pin)


def train_stage(
    *,
    stage: str,
    tiles: pd.DataFrame,
    classes: ClassSet,
    cfg: dict[str, Any],
    variant: dict[str, Any],
    parent: str | os.PathLike[str] | None,
    out_model: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    seed: int,
    device: str = "auto",
    val_tiles: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Train FCN-``stage`` on ``tiles``; write the model, the per-iteration CSV and the curve.

    Resumes from the newest valid checkpoint in ``checkpoint_dir``. Returns a small summary
    (iterations, resumed_from, final_loss, seconds).
    """

    if stage not in STAGES:
        raise InputError(f"unknown FCN stage {stage!r}; expected one of {STAGES}")
    cfg = with_defaults("fcn", cfg)
    try:
        iterations = int(cfg["iterations"][stage])
        lr = float(cfg["lr"][stage])
    except (KeyError, TypeError) as err:
        raise InputError(f"fcn.iterations and fcn.lr need an entry for stage {stage}") from err
    batch_size = int(cfg["batch_size"])
    loss_kind, precision = str(cfg["loss"]), str(cfg["precision"])
    if loss_kind not in LOSSES:
        raise InputError(f"fcn.loss must be one of {LOSSES}, got {loss_kind!r}")
    dev = resolve_device(device)
    choice = choose_precision(precision, dev)
    precision = choice.precision
    autocast(dev, precision)  # validates precision/device before any work
    announce(f"train-fcn {stage}", choice, dev)
    # the fingerprint sees what the weights were computed in, not "auto"
    cfg = {**cfg, "precision": precision}
    memory_format = choice.memory_format()
    checkpoint_every, validate_every = int(cfg["checkpoint_every"]), int(cfg["validate_every"])
    checkpoint_dir = Path(checkpoint_dir)
    t0 = time.perf_counter()

    with deterministic():
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        model = build_stage_model(stage, classes=classes, cfg=cfg, variant=variant, parent=parent)
        model.to(dev, memory_format=memory_format).train()
        optimizer = make_optimizer(model, lr=lr, momentum=float(cfg["momentum"]),
                                   weight_decay=float(cfg["weight_decay"]),
                                   bias_lr_mult=float(cfg["bias_lr_mult"]),
                                   bias_decay_mult=float(cfg["bias_decay_mult"]),
                                   kind=str(cfg["optimizer"]))
        scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
        schedule, keep_best = str(cfg["lr_schedule"]), bool(cfg["keep_best"])
        ema_decay = float(cfg["ema_decay"])
        average = WeightAverage(model, ema_decay) if ema_decay > 0 else None
        # what is validated and kept: the average of the weights, or the weights themselves
        kept_model = average.model if average is not None else model
        lr_factor(schedule, 0, iterations)  # validates the name before any work
        base_lrs = [float(group["lr"]) for group in optimizer.param_groups]

        train_set = TileDataset(tiles, ignore_index=classes.ignore_index)
        order = sample_order(len(train_set), iterations, batch_size, seed)
        class_weights = None
        if cfg["class_weighting"] == "median_frequency":
            cap = cfg["class_weight_cap"]
            class_weights = class_balance_weights(train_set, classes.num_classes,
                                                  ignore_index=classes.ignore_index,
                                                  cap=None if cap is None else float(cap))
            log.info("class weights (median frequency): %s", class_weights.tolist())
        elif cfg["class_weighting"] != "none":
            raise InputError("fcn.class_weighting must be 'none' or 'median_frequency', got "
                             f"{cfg['class_weighting']!r}")
        val_loader = None
        if val_tiles is not None and len(val_tiles) and validate_every > 0:
            val_set = TileDataset(val_tiles, size=train_set.size, ignore_index=classes.ignore_index)
            val_batches = [list(range(i, min(i + batch_size, len(val_set))))
                           for i in range(0, len(val_set), batch_size)]
            val_loader = _loader(val_set, val_batches, seed=seed, num_workers=0, pin=False)

        fingerprint = run_fingerprint(stage=stage, tiles=tiles, val_tiles=val_tiles,
                                      classes=classes, cfg=cfg, variant=variant, parent=parent,
                                      seed=seed)
        _remove_stale_temporaries(checkpoint_dir)
        start, rows = 0, []
        # keep_best: (validation mean IU, iteration, weights) of the best validated iteration
        best: dict[str, Any] | None = None
        ckpt = load_checkpoint(checkpoint_dir, fingerprint=fingerprint, max_iteration=iterations)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            start, rows = int(ckpt["iteration"]), list(ckpt["rows"])
            best = ckpt.get("best")
            if average is not None:
                average.load_state_dict(ckpt["average"])
            log.info("resuming from iteration %d (%s)", start, checkpoint_dir)
        del ckpt
        if keep_best and val_loader is None:
            log.warning("fcn.keep_best is set but FCN-%s has no validation tiles: the last "
                        "iteration's weights are kept", stage)

        log.info("FCN-%s: %d iterations x %d tiles of %d px from %d tiles, %s, %s, loss %s, "
                 "lr %g, device %s", stage, iterations, batch_size, train_set.size,
                 len(train_set), f"parent {parent}" if parent else
                 f"pretrained {variant.get('pretrained', 'none')}", precision, loss_kind, lr, dev)
        batches: list[list[Any]] = order[start:].tolist()
        loader_set: torch.utils.data.Dataset = train_set
        augmentation = cfg["augmentation"]
        if variant.get("augment") and augmentation_enabled(augmentation):
            # (position in the visiting order, tile): each visit draws its own augmentation
            loader_set = AugmentedTiles(train_set, augmentation, seed)
            batches = [[((start + r) * batch_size + j, i) for j, i in enumerate(batch)]
                       for r, batch in enumerate(batches)]
            log.info("augmentation: %s", json.dumps(augmentation))
        loader = _loader(loader_set, batches, seed=seed,
                         num_workers=int(cfg["num_workers"]), pin=dev.type == "cuda")
        recent: deque[float] = deque(maxlen=20)
        recent.extend(float(r["loss"]) for r in rows[-20:])

        rate = {"lr": lr}  # this step's stage rate, for its row

        def set_rate(iteration: int) -> None:
            factor = lr_factor(schedule, iteration, iterations)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            rate["lr"] = lr * factor

        def step(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
            images, labels = batch
            x = normalize_batch(images.to(dev, non_blocking=True))
            x = x.contiguous(memory_format=memory_format)
            labels = labels.to(dev, non_blocking=True)
            with autocast(dev, precision):
                logits = model(x)
            objective, mean_loss, _ = pixel_loss(logits, labels, reduction=loss_kind,
                                                 ignore_index=classes.ignore_index,
                                                 class_weights=class_weights,
                                                 dice_weight=float(cfg["dice_weight"]),
                                                 lovasz_weight=float(cfg["lovasz_weight"]))
            recent.append(mean_loss)
            return Step(objective, {"iteration": None, "loss": mean_loss,
                                    "lr": rate["lr"],
                                    "seconds": None, "pixel_accuracy": None, "mean_iu": None},
                        {"loss": f"{sum(recent) / len(recent):.4f}"})

        def after(iteration: int, row: dict[str, Any]) -> None:
            nonlocal best
            row["iteration"] = iteration
            if average is not None:
                average.update(model)
            if val_loader is not None and (iteration % validate_every == 0
                                           or iteration == iterations):
                row.update(evaluate_tiles(kept_model, val_loader, device=dev, precision=precision,
                                          classes=classes))
                log.info("iteration %d: loss %.4f, validation pixel accuracy %.4f, mean IU "
                         "%.4f", iteration, row["loss"], row["pixel_accuracy"], row["mean_iu"])
                if keep_best and (best is None or row["mean_iu"] > best["mean_iu"]):
                    # a CPU copy: on a GPU the real VGG16's weights would double its memory
                    best = {"mean_iu": row["mean_iu"], "iteration": iteration,
                            "model": {k: v.detach().to("cpu", copy=True)
                                      for k, v in kept_model.state_dict().items()}}
            rows.append(row)
            if checkpoint_every > 0 and iteration % checkpoint_every == 0 \
                    and iteration < iterations:
                save_checkpoint(checkpoint_dir, iteration, {
                    "fingerprint": fingerprint, "iteration": iteration,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "rng": _rng_state(), "rows": rows,
                    "best": best, "precision_choice": choice.as_dict(),
                    "average": None if average is None else average.state_dict()})
                write_rows(checkpoint_dir / "progress.csv", rows)

        fit(loader, step, optimizer, bar=progress(iterations, f"fcn{stage}", initial=start,
                                                  enabled=bool(cfg["progress"])),
            after=after, start=start, scaler=scaler, before=set_rate,
            what=f"FCN-{stage} training", hint=f"lower fcn.lr.{stage} (loss {loss_kind})")
        kept = iterations
        if average is not None:
            model.load_state_dict(average.model.state_dict())
        if keep_best and best is not None:
            model.load_state_dict(best["model"])
            kept = int(best["iteration"])
            log.info("keep_best: FCN-%s keeps iteration %d (validation mean IU %.4f)", stage,
                     kept, best["mean_iu"])

    final_loss = float(np.mean([r["loss"] for r in rows[-20:]])) if rows else float("nan")
    extra = {
        "classes": classes.to_dict(), "stage": stage, "iterations": iterations,
        "variant": dict(variant), "normalisation": "imagenet", "tile_size": int(train_set.size),
        "batch_size": batch_size, "loss": loss_kind, "lr": lr, "lr_schedule": schedule,
        "kept_iteration": kept, "ema_decay": ema_decay, "precision": precision,
        "precision_choice": choice.as_dict(),
        "seed": int(seed), "parent": str(parent) if parent is not None else None,
        "n_tiles": int(len(train_set)), "final_loss": final_loss,
    }
    model.eval()
    save_model(out_model, model, arch=f"fcn{stage}", kwargs=dict(model.kwargs), extra=extra)
    write_rows(out_csv, rows)
    plot_curves(rows, out_png, title=f"FCN-{stage} ({variant.get('pretrained', 'none')}, "
                                     f"{'balanced' if variant.get('balanced') else 'unbalanced'}"
                                     f"{', rotations' if variant.get('augment') else ''})")
    if not cfg["keep_checkpoints"]:
        for _, path in checkpoint_files(checkpoint_dir):
            path.unlink(missing_ok=True)
        (checkpoint_dir / "progress.csv").unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    log.info("FCN-%s done: %d iterations, final loss %.4f, %.1f s", stage, iterations,
             final_loss, seconds)
    return {"iterations": iterations, "resumed_from": start, "final_loss": final_loss,
            "seconds": seconds}

