"""Train one FCN stage (32s → 16s → 8s, Azimi et al. 2018 §4.3.3) on a tile index.

FCN-32s starts from the variant's ``pretrained`` trunk ("none", "imagenet" or a path); 16s and 8s
are built fresh and initialised from the trained parent stage (``init_from_parent``: every
matching layer is copied, the new score layer starts at zero, so a child's first prediction is
its parent's last). Plain SGD with momentum and weight decay at a fixed per-stage learning rate
(Caffe ``lr_policy: fixed``), biases at ``bias_lr_mult`` × lr and ``bias_decay_mult`` × decay
(Caffe FCN prototxts: 2 and 0).

Loss normalisation and learning rates
-------------------------------------
Pixel-wise cross-entropy, pixels labelled ``ignore_index`` (255) left out. ``fcn.loss`` picks
the normalisation of the optimised objective over the N labelled pixels of a batch:

* ``sum``  — Caffe's ``SoftmaxWithLoss`` with ``normalize: false`` as in the FCN reference
  prototxts: the loss is summed over pixels, so the paper's learning rates (1e-10, 1e-11,
  3e-12) and weight decay (5e-4) apply unchanged (``config/paper.yaml``).
* ``mean`` — averaged over the N labelled pixels (the PyTorch habit). The gradient is 1/N of the
  summed one, so the same SGD trajectory needs::

      lr_mean           = lr_sum × N             (1000×1000 tile, batch 1: 1e-10 → 1e-4)
      weight_decay_mean = weight_decay_sum / N   (so lr × weight_decay is unchanged)

  which holds exactly for SGD with momentum, because the momentum buffer is linear in
  (gradient + decay × weight): :func:`lr_sum_to_mean` converts, and the tests check that one
  step under either convention gives the same weights. N counts labelled pixels of the whole
  batch, so it varies with ignore pixels; ``mean`` keeps the step size independent of tile size
  and batch size, which is why the default (CPU) config uses it with lr 1e-3.

The ``loss`` column of the training CSV is always the mean cross-entropy per labelled pixel,
whichever objective is optimised, so curves of both conventions compare.

Determinism and resuming
------------------------
The batch order is a function of the seed alone (:func:`mvfcnn.data.sample_order`), the data
loader has its own generator (it never draws from the global RNG), and checkpoints hold the
model, optimiser, grad-scaler and Python/NumPy/torch RNG states with the CSV rows so far. A run
killed at any point and restarted resumes from the latest valid checkpoint and ends with the
same weights, bit for bit on CPU, as an uninterrupted run. Checkpoints carry a fingerprint of
everything that shapes the weights (tiles, config, variant, seed, parent); a checkpoint with
another fingerprint is ignored and removed. They are deleted after the final model is written
(``fcn.keep_checkpoints: true`` keeps them).

Validation
----------
Every ``validate_every`` iterations (and after the last) pixel accuracy and mean IU (Long et al.,
:mod:`mvfcnn.metrics`) are computed on ``val_tiles`` and added to that CSV row (empty cells
elsewhere). The CLI holds out every k-th tile *position* of the index (``fcn.val_holdout_every``,
default 10; all rotations of a held-out position leave the training set; the validation set is
their rot = 0 tiles, at most ``fcn.val_max_tiles``, evenly spaced) or takes a separate index
(``--val-tiles``). Held-out windows overlap neighbouring training windows, so these numbers track
fitting within the training images; they are never computed on test images.

Within a stage the learning rate is constant (the paper's) or decays (``fcn.lr_schedule``:
``poly``, ``cosine``; :func:`lr_factor`); the CSV's ``lr`` column is the rate of each step.
``fcn.keep_best`` makes each stage's model the weights of its best validation mean IU rather
than the last iteration's (kept in the checkpoints, so a resumed stage keeps the same best).

Rare classes (issue 22): ``fcn.dice_weight`` adds a soft-Dice term to the cross-entropy
(:func:`soft_dice_loss`) and ``fcn.class_weight_cap`` clips median-frequency class weights
(``fcn.class_weighting``) to [1/cap, cap]; both leave the sum/mean conventions above intact.

SEM contrast augmentation (``fcn.augmentation``: flips, gamma, contrast, brightness, blur,
noise; :func:`mvfcnn.data.augment_tile`) applies to variants with ``augment: true``, beside the
tile index's rotations, so a variant's ``augment`` switches all augmentation on or off.

Optional ``fcn`` keys (defaults: the config schema, :mod:`mvfcnn.settings`): dropout,
bias_lr_mult, bias_decay_mult, num_workers, val_holdout_every, val_max_tiles, keep_checkpoints,
progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvfcnn.config import FCN_STAGES as STAGES
from mvfcnn.config import ClassSet, classes_from_json, json_arg
from mvfcnn.data import AugmentedTiles, TileDataset, augmentation_enabled, sample_order
from mvfcnn.errors import InputError
from mvfcnn.io import atomic_path, read_tables, write_table
from mvfcnn.progress import progress
from mvfcnn.runtime import (
    announce,
    autocast,
    choose_precision,
    job_parser,
    resolve_device,
    start_job,
)
from mvfcnn.settings import with_defaults

log = logging.getLogger(__name__)

LOSSES = ("mean", "sum")
CSV_COLUMNS = ["iteration", "loss", "lr", "seconds", "pixel_accuracy", "mean_iu"]
#: config keys that do not change the trained weights (left out of the checkpoint fingerprint)
_RUN_ONLY_KEYS = {"iterations", "checkpoint_every", "validate_every", "device", "num_workers",
                  "keep_checkpoints", "progress", "val_max_tiles", "stages"}
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


# --------------------------------------------------------------------------- loss & optimiser


def lr_sum_to_mean(lr_sum: float, weight_decay_sum: float, n_pixels: int) -> tuple[float, float]:
    """(lr, weight decay) for a mean-normalised loss that reproduce SGD on a summed loss."""
    return lr_sum * n_pixels, weight_decay_sum / n_pixels


def pixel_loss(logits: Tensor, labels: Tensor, *, ignore_index: int, reduction: str,
               class_weights: Tensor | None = None,
               dice_weight: float = 0.0) -> tuple[Tensor, float, int]:
    """(objective to minimise, mean loss per labelled pixel, N labelled pixels).

    ``reduction`` "sum" or "mean" (see the module docstring); a batch without any labelled
    pixel gives a zero objective (no NaN), so weight decay and momentum still step as usual.
    ``class_weights`` scales each pixel's loss by its true class's weight; the normalisation
    stays "per labelled pixel" so the sum/mean learning-rate mapping is unchanged.
    ``dice_weight`` adds that multiple of :func:`soft_dice_loss` (per batch, every class
    counted alike, so a rare class weighs as much as the matrix) to the mean objective, and N
    times it to the summed one: "sum" stays N x "mean", so :func:`lr_sum_to_mean` still holds.
    """
    if reduction not in LOSSES:
        raise InputError(f"fcn.loss must be one of {LOSSES}, got {reduction!r}")
    logits = logits.float()
    n = int((labels != ignore_index).sum().item())
    plain = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    if class_weights is None:
        total = plain
    else:
        per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none",
                                    weight=class_weights.to(logits.device))
        total = per_pixel.sum()
    objective = total if reduction == "sum" else total / max(n, 1)
    if dice_weight and n:
        dice = soft_dice_loss(logits, labels, ignore_index=ignore_index)
        objective = objective + dice_weight * (n if reduction == "sum" else 1) * dice
    return objective, float(plain.detach().item()) / max(n, 1), n


def soft_dice_loss(logits: Tensor, labels: Tensor, *, ignore_index: int,
                   smooth: float = 1.0) -> Tensor:
    """1 - mean over classes of the soft Dice (2 sum p g + s) / (sum p + sum g + s) on the
    batch's labelled pixels (Milletari et al. 2016). Cross-entropy weighs classes by their pixel
    count; Dice weighs each class's overlap alike, so M/A islands and defects count as much as
    the matrix. ``smooth`` keeps a class absent from the batch and not predicted at Dice 1."""
    probs = torch.softmax(logits.float(), dim=1)
    valid = (labels != ignore_index).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(torch.where(labels == ignore_index, 0, labels),
                       probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) * valid
    probs = probs * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def class_balance_weights(dataset: TileDataset, num_classes: int, *, ignore_index: int,
                          max_tiles: int = 256, cap: float | None = None) -> Tensor:
    """Median-frequency balancing (Eigen & Fergus 2015): weight_c = median(freq) / freq_c.

    Frequencies are counted on up to ``max_tiles`` evenly spaced tiles. The matrix covers most
    pixels of a micrograph, so without weights a short training run learns "matrix" and little
    about the constituents it has to tell apart; absent classes get weight 0. ``cap`` clips the
    weights of present classes to [1/cap, cap]: uncapped, MetalDAM's precipitate (0.24 % of the
    pixels) got weight 30 and FCN-32s predicted it everywhere.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    step = max(1, len(dataset) // max_tiles)
    for index in range(0, len(dataset), step):
        labels = dataset[index][1].numpy().ravel()
        labels = labels[labels != ignore_index]
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    weights = np.zeros(num_classes, dtype=np.float32)
    weights[present] = np.median(freq[present]) / freq[present]
    if cap is not None:
        if cap < 1:
            raise InputError(f"fcn.class_weight_cap must be >= 1, got {cap}")
        weights[present] = np.clip(weights[present], 1.0 / cap, cap)
    return torch.from_numpy(weights)


#: learning-rate schedules within one stage (``fcn.lr_schedule``)
LR_SCHEDULES = ("constant", "poly", "cosine")


def lr_factor(schedule: str, step: int, iterations: int) -> float:
    """Multiplier of a stage's learning rate at 0-based ``step`` of ``iterations``.

    ``poly`` is DeepLab's (1 - step/iterations)^0.9 and ``cosine`` half a cosine to 0: both end
    a stage with small steps, so its last weights are not one noisy step of a constant rate.
    A function of the step alone, so a resumed stage continues the same schedule.
    """
    if schedule == "constant" or iterations <= 0:
        return 1.0
    progress = min(max(step / iterations, 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - progress) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise InputError(f"fcn.lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                   bias_lr_mult: float = 1.0, bias_decay_mult: float = 1.0,
                   kind: str = "sgd") -> torch.optim.Optimizer:
    """SGD (the paper's) or Adam over trainable parameters (frozen upsamplers excluded),
    Caffe-style bias groups. Adam is a CPU-budget option: from scratch it gets further in the
    few hundred iterations a laptop affords; ``momentum`` is then Adam's beta1."""
    weights, biases = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if name.endswith("bias") else weights).append(param)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if biases:
        groups.append({"params": biases, "lr": lr * bias_lr_mult,
                       "weight_decay": weight_decay * bias_decay_mult})
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise InputError(f"fcn.optimizer must be 'sgd' or 'adam', got {kind!r}")


# --------------------------------------------------------------------------- determinism


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms (warn-only) for the duration of a training run."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        torch.backends.cudnn.benchmark = bench


# --------------------------------------------------------------------------- model


def build_stage_model(stage: str, *, classes: ClassSet, cfg: dict[str, Any],
                      variant: dict[str, Any], parent: str | os.PathLike[str] | None) -> nn.Module:
    """32s from the variant's pretrained trunk; every later stage from its trained parent."""
    from mvfcnn.models.fcn import PARENT_STAGE, build_fcn, init_from_parent
    from mvfcnn.models.io import load_model

    cfg = with_defaults("fcn", cfg)
    kwargs = {"num_classes": classes.num_classes, "width": float(cfg["width"]),
              "fc_channels": int(cfg["fc_channels"]), "dropout": float(cfg["dropout"]),
              "batch_norm": bool(cfg["batch_norm"])}
    if stage == "32s":
        if parent is not None:
            raise InputError("FCN-32s is the first stage and takes no --parent")
        return freeze_trunk(build_fcn("32s", pretrained=variant.get("pretrained", "none"),
                                      **kwargs), frozen_until(cfg, variant))
    if parent is None:
        raise InputError(f"FCN-{stage} is initialised from the previous stage: give --parent")
    parent_model, meta = load_model(parent)
    expected = f"fcn{PARENT_STAGE[stage]}"
    if meta["arch"] != expected:
        raise InputError(f"FCN-{stage} needs a {expected} parent, got {meta['arch']}",
                         path=parent)
    parent_classes = meta.get("extra", {}).get("classes")
    if parent_classes is not None and parent_classes != classes.to_dict():
        raise InputError("parent model was trained with other classes", path=parent)
    parent_kwargs = {"batch_norm": False, **meta["kwargs"]}
    for key in ("num_classes", "width", "fc_channels", "batch_norm"):
        if key in parent_kwargs and parent_kwargs[key] != kwargs[key]:
            raise InputError(f"parent model has {key}={parent_kwargs[key]}, the config says "
                             f"{kwargs[key]}", path=parent)
    model = build_fcn(stage, pretrained="none", **kwargs)
    init_from_parent(model, parent_model)
    return freeze_trunk(model, frozen_until(cfg, variant))


def frozen_until(cfg: dict[str, Any], variant: dict[str, Any]) -> str:
    """``fcn.freeze`` for a variant that starts from a pretrained trunk; "none" for one trained
    from scratch (``pretrained: none``), whose random trunk must learn in every stage."""
    return "none" if str(variant.get("pretrained", "none")) == "none" else str(cfg["freeze"])


def freeze_trunk(model: nn.Module, until: str) -> nn.Module:
    """Fix the trunk's layers up to and including pool ``until`` ("pool1".."pool4"; "none").

    With nothing before them trainable, autograd computes no backward pass for them at all,
    so each frozen early layer (the largest feature maps) saves its whole backward cost.
    A frozen BatchNorm stays in eval mode (its running statistics, not the batch's), so the
    frozen layers are one fixed function.
    """
    from mvfcnn.models.vgg_trunk import POOL_INDICES

    if until == "none":
        return model
    last = POOL_INDICES[int(until.removeprefix("pool")) - 1]
    for layer in list(model.trunk.features)[:last + 1]:
        for param in layer.parameters():
            param.requires_grad_(False)
        for module in layer.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = FrozenBatchNorm2d
                module.eval()
    return model


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that ``train()`` leaves in eval mode (the state dict is a BatchNorm2d's)."""

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


# --------------------------------------------------------------------------- validation


def split_validation(tiles: pd.DataFrame, every: int,
                     max_tiles: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training tiles, validation tiles): every ``every``-th position held out (all rotations).

    Positions are (sample, y, x) in order of first appearance; the validation tiles are their
    rot = 0 rows, thinned to at most ``max_tiles`` evenly spaced ones. Windows centred on a rare
    class (:func:`mvfcnn.tiling.add_rare_tiles`) always train, so validation sees the same
    windows with or without them.
    """
    from mvfcnn.tiling import is_centred

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
    from mvfcnn.metrics import confusion_matrix, pixel_report
    from mvfcnn.models.preprocess import normalize_batch

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


# --------------------------------------------------------------------------- checkpoints


def _sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _frame_hash(frame: pd.DataFrame | None) -> str:
    if frame is None or len(frame) == 0:
        return "none"
    values = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    return hashlib.sha256(values.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()


def run_fingerprint(*, stage: str, tiles: pd.DataFrame, val_tiles: pd.DataFrame | None,
                    classes: ClassSet, cfg: dict[str, Any], variant: dict[str, Any],
                    parent: str | os.PathLike[str] | None, seed: int) -> str:
    """Hash of everything that shapes the trained weights (checkpoints of other runs are void)."""
    payload = {
        "stage": stage, "seed": int(seed), "classes": classes.to_dict(), "variant": variant,
        "cfg": {k: v for k, v in cfg.items() if k not in _RUN_ONLY_KEYS},
        "tiles": _frame_hash(tiles), "val": _frame_hash(val_tiles),
        "parent": _sha256_file(parent) if parent is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_files(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(iteration, path) of the checkpoints in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _CKPT_RE.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def _rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike[str], iteration: int, payload: dict[str, Any],
                    *, keep: int = 2) -> Path:
    """Write ``ckpt_<iteration>.pt`` atomically; keep only the newest ``keep`` checkpoints."""
    path = Path(directory) / f"ckpt_{iteration:09d}.pt"
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for _, old in checkpoint_files(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(directory: str | os.PathLike[str], *, fingerprint: str,
                    max_iteration: int) -> dict[str, Any] | None:
    """The newest readable checkpoint of this run, or None; foreign ones are removed."""
    for iteration, path in checkpoint_files(directory):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unreadable: try the next older one
            log.warning("skipping unreadable checkpoint %s (%s)", path, err)
            continue
        if payload.get("fingerprint") != fingerprint or iteration > max_iteration:
            log.warning("ignoring checkpoint %s: made by a run with other settings", path)
            path.unlink(missing_ok=True)
            continue
        return payload
    return None


def _remove_stale_temporaries(directory: Path) -> None:
    """Half-written checkpoints of a killed run (atomic_path temporaries)."""
    if directory.is_dir():
        for path in directory.glob(".ckpt_*.tmp*"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- outputs


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str) -> None:
    """Training loss (raw + running mean) and validation metrics vs iteration, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    if len(frame):
        loss = frame["loss"].astype(float)
        ax_loss.plot(frame["iteration"], loss, lw=0.6, alpha=0.4, color="C0", label="loss")
        window = max(1, min(50, len(frame) // 10))
        ax_loss.plot(frame["iteration"], loss.rolling(window, min_periods=1).mean(),
                     color="C0", label=f"running mean ({window})")
        val = frame.dropna(subset=["pixel_accuracy"])
        for col, label, color in (("pixel_accuracy", "pixel accuracy", "C1"),
                                  ("mean_iu", "mean IU", "C2")):
            if len(val):
                ax_val.plot(val["iteration"], val[col].astype(float), "o-", color=color,
                            label=label)
    ax_loss.set(xlabel="iteration", ylabel="cross-entropy per labelled pixel", title=title)
    ax_val.set(xlabel="iteration", ylabel="validation", ylim=(0, 1), title="held-out tiles")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


#: columns of a run's learning curve (validation rows of every stage, in training order)
CURVE_COLUMNS = ["stage", "iteration", "step", "train_loss", "pixel_accuracy", "mean_iu",
                 "mean_iu_gain"]


def learning_curve(stage_rows: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The validation rows of every stage's ``train_<stage>.csv`` on one axis of training steps.

    ``step`` counts iterations over the stages in order (32s, then 16s on top, ...);
    ``train_loss`` is the running mean of the last 20 training losses up to that row;
    ``mean_iu_gain`` is the change of validation mean IU since the stage's previous
    validation, so a stage still rising when it stopped (gain clearly > 0 on its last row) is
    visible rather than assumed saturated.
    """
    frames, offset = [], 0
    for stage, rows in stage_rows.items():
        rows = rows.reset_index(drop=True)
        loss = rows["loss"].astype(float).rolling(20, min_periods=1).mean()
        val = rows[rows["mean_iu"].notna()]
        frames.append(pd.DataFrame({
            "stage": stage, "iteration": val["iteration"].astype(int),
            "step": val["iteration"].astype(int) + offset, "train_loss": loss[val.index],
            "pixel_accuracy": val["pixel_accuracy"].astype(float),
            "mean_iu": val["mean_iu"].astype(float),
            "mean_iu_gain": val["mean_iu"].astype(float).diff()}))
        offset += int(rows["iteration"].max()) if len(rows) else 0
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS]


def plot_learning_curve(curve: pd.DataFrame, path: str | os.PathLike[str], *,
                        title: str) -> None:
    """Validation mean IU and pixel accuracy over all stages' steps, one colour per stage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (stage, part) in enumerate(curve.groupby("stage", sort=False)):
        ax.plot(part["step"], part["mean_iu"], "o-", color=f"C{i}", label=f"FCN-{stage} mean IU")
        ax.plot(part["step"], part["pixel_accuracy"], "s--", color=f"C{i}", alpha=0.5, ms=3,
                label=f"FCN-{stage} pixel acc.")
        last = part.iloc[-1]
        ax.annotate(f"{last['mean_iu']:.3f}", (last["step"], last["mean_iu"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.axvline(part["step"].iloc[-1], color="0.8", lw=0.8, zorder=0)
    ax.set(xlabel="training step (stages in order)", ylabel="validation (held-out tiles)",
           ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def learning_curve_cli(argv: list[str]) -> int:
    """`mvfcnn learning-curve`: a run's validation mean IU per stage (CSV + PNG)."""
    import argparse

    parser = argparse.ArgumentParser(prog="mvfcnn learning-curve",
                                     description=learning_curve_cli.__doc__)
    parser.add_argument("--stages", nargs="+", required=True, choices=STAGES)
    parser.add_argument("--csvs", nargs="+", required=True, help="train_<stage>.csv, same order")
    parser.add_argument("--title", default="learning curve")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-png", required=True)
    args = parser.parse_args(argv)
    curve = learning_curve(read_tables(args.stages, args.csvs, what="training CSV"))
    write_table(args.out_csv, curve)
    plot_learning_curve(curve, args.out_png, title=args.title)
    return 0


def _write_rows(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    write_table(path, pd.DataFrame(rows, columns=CSV_COLUMNS))


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
    from mvfcnn.models.io import save_model
    from mvfcnn.models.preprocess import normalize_batch

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
        bar = progress(iterations, f"fcn{stage}", initial=start,
                       enabled=bool(cfg["progress"]))
        iteration, tick = start, time.perf_counter()
        for images, labels in loader:
            factor = lr_factor(schedule, iteration, iterations)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            step_lr = lr * factor
            x = normalize_batch(images.to(dev, non_blocking=True))
            x = x.contiguous(memory_format=memory_format)
            labels = labels.to(dev, non_blocking=True)
            with autocast(dev, precision):
                logits = model(x)
            objective, mean_loss, _ = pixel_loss(logits, labels, reduction=loss_kind,
                                                 ignore_index=classes.ignore_index,
                                                 class_weights=class_weights,
                                                 dice_weight=float(cfg["dice_weight"]))
            if not math.isfinite(mean_loss):
                raise InputError(f"FCN-{stage} training loss is {mean_loss} at iteration "
                                 f"{iteration + 1}: lower fcn.lr.{stage} (loss {loss_kind})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            row: dict[str, Any] = {"iteration": iteration, "loss": mean_loss, "lr": step_lr,
                                   "seconds": time.perf_counter() - tick,
                                   "pixel_accuracy": None, "mean_iu": None}
            recent.append(mean_loss)
            if val_loader is not None and (iteration % validate_every == 0
                                           or iteration == iterations):
                row.update(evaluate_tiles(model, val_loader, device=dev, precision=precision,
                                          classes=classes))
                log.info("iteration %d: loss %.4f, validation pixel accuracy %.4f, mean IU "
                         "%.4f", iteration, mean_loss, row["pixel_accuracy"], row["mean_iu"])
                if keep_best and (best is None or row["mean_iu"] > best["mean_iu"]):
                    # a CPU copy: on a GPU the real VGG16's weights would double its memory
                    best = {"mean_iu": row["mean_iu"], "iteration": iteration,
                            "model": {k: v.detach().to("cpu", copy=True)
                                      for k, v in model.state_dict().items()}}
            rows.append(row)
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            bar.update(1)
            if checkpoint_every > 0 and iteration % checkpoint_every == 0 \
                    and iteration < iterations:
                save_checkpoint(checkpoint_dir, iteration, {
                    "fingerprint": fingerprint, "iteration": iteration,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "rng": _rng_state(), "rows": rows,
                    "best": best, "precision_choice": choice.as_dict()})
                _write_rows(checkpoint_dir / "progress.csv", rows)
            tick = time.perf_counter()
        bar.close()
        kept = iterations
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
        "kept_iteration": kept, "precision": precision,
        "precision_choice": choice.as_dict(),
        "seed": int(seed), "parent": str(parent) if parent is not None else None,
        "n_tiles": int(len(train_set)), "final_loss": final_loss,
    }
    model.eval()
    save_model(out_model, model, arch=f"fcn{stage}", kwargs=dict(model.kwargs), extra=extra)
    _write_rows(out_csv, rows)
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


# --------------------------------------------------------------------------- CLI


def read_tiles(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A tile index CSV written by ``mvfcnn tile-index``."""
    if not Path(path).is_file():
        raise InputError("tile index not found", path=path)
    try:
        frame = pd.read_csv(path, dtype={"sample": str, "class": str, "image": str,
                                         "labels": str}, keep_default_na=False)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot parse tile index ({err})", path=path) from err
    if len(frame) == 0:
        raise InputError("tile index is empty (no training tiles)", path=path)
    return frame


def cli(argv: list[str]) -> int:
    """`mvfcnn train-fcn`: one FCN stage from a tile index (see the module docstring)."""
    parser = job_parser("mvfcnn train-fcn", __doc__.split("\n")[0],
                        params_help="the `fcn` config section", reports_required=True)
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--parent", default=None, help="trained previous stage (16s, 8s)")
    parser.add_argument("--tiles", required=True)
    parser.add_argument("--variant-json", required=True, help="{pretrained, balanced, augment}")
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 (default: fcn."
                        "device or auto)")
    parser.add_argument("--val-tiles", default=None,
                        help="separate validation tile index (default: held-out positions)")
    parser.add_argument("--val-holdout-every", type=int, default=None,
                        help="hold out every k-th tile position (default fcn.val_holdout_every)")
    parser.add_argument("--num-workers", type=int, default=None)
    args = start_job(parser, argv)

    cfg = json_arg(args.params_json, "--params-json")
    variant = json_arg(args.variant_json, "--variant-json")
    if args.num_workers is not None:
        cfg["num_workers"] = args.num_workers
    full = with_defaults("fcn", cfg)
    tiles = read_tiles(args.tiles)
    if args.val_tiles:
        val_tiles = read_tiles(args.val_tiles)
    else:
        every = (args.val_holdout_every if args.val_holdout_every is not None
                 else int(full["val_holdout_every"]))
        if int(full["validate_every"]) <= 0:
            every = 0
        tiles, val_tiles = split_validation(tiles, every, int(full["val_max_tiles"]))
        if every > 1:
            log.info("validation: %d held-out tiles (every %d-th position); training on %d",
                     len(val_tiles), every, len(tiles))
    train_stage(stage=args.stage, tiles=tiles, classes=classes_from_json(args.classes_json),
                cfg=cfg, variant=variant, parent=args.parent, out_model=args.out,
                out_csv=args.out_csv, out_png=args.out_png, checkpoint_dir=args.checkpoint_dir,
                seed=args.seed, device=args.device or str(full["device"]),
                val_tiles=val_tiles)
    return 0
