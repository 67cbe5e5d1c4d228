"""Offline stand-in for ImageNet initialisation: pretrain the VGG16 trunk on labelled patches.

The paper's best MVFCNN is fine-tuned from ImageNet (Table 2). Without internet those weights
cannot be fetched, and a VGG16 FCN trained from scratch on a CPU budget only learns "bright blob
vs matrix": measured on the synthetic default, its votes follow object size, not texture
(object accuracy ~24 %), and even with the matrix pixels ignored its loss stays at chance over
300 iterations. ``pretrained: patches`` replaces ImageNet by this step: the same trunk (same
width) classifies native-scale patches centred on labelled pixels of the *training* images
(class-balanced, matrix included, random right-angle rotations), with BatchNorm during training
that is folded away afterwards (:mod:`mvfcnn.models.patch_classifier`). The default
``head: pool5`` classifies globally pooled pool5 features of 64-px patches (measured: ~97 %
patch accuracy on the test images after 200 steps); fc6/fc7 keep their random init.
``head: fc7`` pretrains fc6/fc7 too on ≥ 224-px patches, as ImageNet training does, but is ~12×
costlier per patch and reached only ~43 % batch accuracy in 200 steps on the synthetic default.
The FCN stages then fine-tune from it exactly as from ImageNet. Nothing from the test split is
used.

Self-supervised first phase (``pretrain.ssl_iterations`` > 0, issue 22): before the patch
classification the same BatchNorm trunk learns masked-image modelling on label-free crops of the
training images (SimMIM, Xie et al. 2022: random 32-px blocks of each crop set to the mean, a
1x1 convolution + pixel shuffle from pool5 predicts the pixels, L1 on the masked pixels only).
It needs no labels, so it sees every pixel of every training image, not only labelled centres,
and the label-free micrographs of the sheet's ``unlabelled`` rows (``--unlabelled``: of the same
material, what users have plenty of); ``pretrain.iterations: 0`` then keeps the SSL trunk
alone. The reconstruction head is discarded.

Patch centres are taken on a grid (step ``patch_size // 16``), at most :data:`MAX_CENTRES` per
class and image, so the candidate list stays small for 7000×8000 images; images are read
memory-mapped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mvfcnn.core import runtime
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import atomic_path, read_image, read_labels, to_uint8, write_table
from mvfcnn.core.progress import progress
from mvfcnn.core.settings import with_defaults
from mvfcnn.fcn.checkpoints import deterministic
from mvfcnn.fcn.losses import lr_factor
from mvfcnn.fcn.train_loop import Step, fit
from mvfcnn.models.io import save_model
from mvfcnn.models.patch_classifier import fold_batch_norm, patch_classifier
from mvfcnn.models.preprocess import normalize_batch

log = logging.getLogger(__name__)

CSV_COLUMNS = ["iteration", "loss", "accuracy", "seconds", "phase"]
#: candidate patch centres kept per class and image (a grid of step patch_size // 16)
MAX_CENTRES = 20_000
#: side of a masked block (px) in the SSL phase: one pool5 cell, as in SimMIM
SSL_BLOCK = 32


def random_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator, *,
                 augment: bool) -> torch.Tensor:
    """(n, C, size, size) uint8 crops at uniform positions of uniformly drawn images (no labels
    needed); images smaller than ``size`` are padded by reflection."""
    crops = []
    for pick in rng.integers(0, len(images), n):
        image = images[int(pick)]
        height, width = image.shape[:2]
        y = int(rng.integers(0, max(1, height - size + 1)))
        x = int(rng.integers(0, max(1, width - size + 1)))
        crop = to_uint8(np.asarray(image[y:y + size, x:x + size]))
        if crop.shape[0] < size or crop.shape[1] < size:
            pad = [(0, size - crop.shape[0]), (0, size - crop.shape[1])] + [(0, 0)] * (
                crop.ndim - 2)
            crop = np.pad(crop, pad, mode="reflect" if min(crop.shape[:2]) > 1 else "edge")
        if augment:
            crop = np.rot90(crop, int(rng.integers(0, 4)))
        crop = np.ascontiguousarray(crop)
        crops.append(crop[None] if crop.ndim == 2 else crop.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(crops))


def block_mask(n: int, size: int, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """(n, 1, size, size) float mask, 1 on exactly round(ratio x blocks) random
    :data:`SSL_BLOCK`-px blocks of each crop (at least one block, never all)."""
    cells = size // SSL_BLOCK
    total = cells * cells
    masked = min(max(1, round(ratio * total)), total - 1) if total > 1 else 1
    grid = np.zeros((n, total), np.float32)
    for row in grid:
        row[rng.choice(total, masked, replace=False)] = 1.0
    grid = grid.reshape(n, 1, cells, cells).repeat(SSL_BLOCK, 2).repeat(SSL_BLOCK, 3)
    return torch.from_numpy(grid)


class MaskedReconstruction(nn.Module):
    """SimMIM's head: pool5 -> 1x1 convolution -> pixel shuffle x32 = the input's pixels."""

    def __init__(self, in_channels: int, image_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, image_channels * SSL_BLOCK * SSL_BLOCK, 1)
        self.shuffle = nn.PixelShuffle(SSL_BLOCK)

    def forward(self, pool5: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.project(pool5))


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels (all channels)."""
    error = (prediction - target).abs() * mask
    return error.sum() / (mask.sum() * target.shape[1]).clamp_min(1.0)


class PatchSampler:
    """Class-balanced random patches (uint8, (C, P, P)) centred on labelled pixels.

    A class is drawn uniformly among the classes that have candidate centres, then a centre of
    that class uniformly; ``augment`` rotates each patch by a random multiple of 90°.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], *,
                 class_indices: list[int], patch_size: int, augment: bool,
                 rng: np.random.Generator, names: list[str] | None = None) -> None:
        if patch_size < 32:
            raise InputError(f"pretrain.patch_size must be >= 32 (one pool5 cell), got "
                             f"{patch_size}")
        self.images, self.patch, self.augment, self.rng = images, int(patch_size), augment, rng
        half, step = self.patch // 2, max(1, self.patch // 16)
        per_class: dict[int, list[np.ndarray]] = {c: [] for c in class_indices}
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = names[index] if names else f"image {index}"
            if image.shape[:2] != label.shape:
                raise InputError(f"{name}: image {image.shape[:2]} and labels {label.shape} "
                                 "differ in size")
            height, width = label.shape
            if height < self.patch or width < self.patch:
                continue
            ys = np.arange(half, height - self.patch + half + 1, step)
            xs = np.arange(half, width - self.patch + half + 1, step)
            grid = np.asarray(label[np.ix_(ys, xs)])
            for c in class_indices:
                iy, ix = np.nonzero(grid == c)
                if len(iy) > MAX_CENTRES:  # bounded memory for paper-size images
                    keep = np.sort(rng.choice(len(iy), MAX_CENTRES, replace=False))
                    iy, ix = iy[keep], ix[keep]
                if len(iy):
                    per_class[c].append(np.stack([np.full(len(iy), index), ys[iy] - half,
                                                  xs[ix] - half], axis=1).astype(np.int64))
        self.classes = [c for c in class_indices if per_class[c]]
        if len(self.classes) < 2:
            raise InputError("pretraining needs labelled pixels of at least two classes in the "
                             f"training images (found {self.classes})")
        self.corners = {c: np.concatenate(per_class[c]) for c in self.classes}

    def counts(self) -> dict[int, int]:
        """Candidate centres per class index."""
        return {c: int(len(v)) for c, v in self.corners.items()}

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C, P, P) uint8 patches and their (n,) int64 class indices."""
        picks = self.rng.integers(0, len(self.classes), n)
        patches, targets = [], []
        for pick in picks:
            c = self.classes[int(pick)]
            corners = self.corners[c]
            i, y, x = corners[self.rng.integers(0, len(corners))]
            patch = to_uint8(np.asarray(self.images[i][y:y + self.patch, x:x + self.patch]))
            if self.augment:
                patch = np.rot90(patch, int(self.rng.integers(0, 4)))
            patch = np.ascontiguousarray(patch)
            patches.append(patch[None] if patch.ndim == 2 else patch.transpose(2, 0, 1))
            targets.append(c)
        return torch.from_numpy(np.stack(patches)), torch.tensor(targets, dtype=torch.int64)


def pretrain_trunk(
    *,
    images: list[str | os.PathLike[str]],
    labels: list[str | os.PathLike[str]],
    classes: ClassSet,
    cfg: dict[str, Any],
    fcn_cfg: dict[str, Any],
    seed: int,
    out_model: str | os.PathLike[str],
    out_csv: str | os.PathLike[str] | None = None,
    out_png: str | os.PathLike[str] | None = None,
    unlabelled: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Any]:
    """Train the patch classifier, fold its BatchNorm unless the FCN keeps one
    (``fcn.batch_norm``), save it (a ``pretrained:`` file)."""

    cfg = with_defaults("pretrain", cfg)
    if cfg["head"] == "fc7" and int(cfg["patch_size"]) < 224:
        raise InputError(f"pretrain.head fc7 needs pretrain.patch_size >= 224 (fc6 is a 7x7 "
                         f"convolution on pool5), got {cfg['patch_size']}; or use head: pool5")
    if len(images) != len(labels) or not images:
        raise InputError(f"need one labels file per image, got {len(images)} images and "
                         f"{len(labels)} labels")
    dev = runtime.resolve_device(str(cfg["device"]))
    choice = runtime.choose_precision(str(cfg["precision"]), dev)
    precision = choice.precision
    runtime.autocast(dev, precision)  # validates before any work
    runtime.announce("pretrain-trunk", choice, dev)
    memory_format = choice.memory_format()
    arrays = [read_image(p, micrograph=True) for p in images]
    label_arrays = [read_labels(p) for p in labels]
    # label-free micrographs (sheet split `unlabelled`): more SSL crops, never patches
    extra_arrays = [read_image(p, micrograph=True) for p in unlabelled]
    if extra_arrays and not int(cfg["ssl_iterations"]):
        log.warning("%d unlabelled image(s) given but pretrain.ssl_iterations is 0: unused",
                    len(extra_arrays))
    wanted = list(range(classes.num_classes)) if cfg["include_matrix"] else list(
        classes.foreground)
    iterations, batch_size = int(cfg["iterations"]), int(cfg["batch_size"])
    ssl_iterations, ssl_size = int(cfg["ssl_iterations"]), int(cfg["ssl_patch_size"])
    if iterations + ssl_iterations == 0:
        raise InputError("pretrain.iterations and pretrain.ssl_iterations are both 0: nothing "
                         "would train the trunk")
    if ssl_size % SSL_BLOCK:
        raise InputError(f"pretrain.ssl_patch_size must be a multiple of {SSL_BLOCK} (one "
                         f"masked block per pool5 cell), got {ssl_size}")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with deterministic():
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        sampler = PatchSampler(arrays, label_arrays, class_indices=wanted,
                               patch_size=int(cfg["patch_size"]), augment=bool(cfg["augment"]),
                               rng=rng, names=[str(p) for p in images])
        log.info("pretraining patches: candidate centres per class %s", sampler.counts())
        model = patch_classifier(num_classes=classes.num_classes, width=float(fcn_cfg["width"]),
                                 fc_channels=int(fcn_cfg["fc_channels"]),
                                 batch_norm=bool(cfg["batch_norm"]), head=str(cfg["head"]))
        model.to(dev, memory_format=memory_format).train()
        if ssl_iterations:
            rows += _masked_image_modelling(model, arrays + extra_arrays, cfg=cfg, rng=rng,
                                            device=dev, precision=precision,
                                            memory_format=memory_format)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]),
                                     weight_decay=float(cfg["weight_decay"]))
        schedule, base_lr = str(cfg["lr_schedule"]), float(cfg["lr"])
        lr_factor(schedule, 0, iterations, key="pretrain.lr_schedule")  # before any work

        def set_rate(iteration: int) -> None:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_factor(schedule, iteration, iterations)

        def patches_step(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
            x = normalize_batch(batch[0].to(dev)).contiguous(memory_format=memory_format)
            y = batch[1].to(dev)
            with runtime.autocast(dev, precision):
                scores = model(x)
            loss = nn.functional.cross_entropy(scores.float(), y)
            accuracy = float((scores.argmax(1) == y).float().mean())
            return Step(loss, {"iteration": None, "loss": loss.item(), "accuracy": accuracy,
                               "seconds": None, "phase": "patches"},
                        {"loss": f"{loss.item():.3f}", "acc": f"{accuracy:.2f}"})

        def record(iteration: int, row: dict[str, Any]) -> None:
            rows.append({**row, "iteration": ssl_iterations + iteration})

        fit((sampler.draw(batch_size) for _ in range(iterations)), patches_step, optimizer,
            bar=progress(iterations, "pretrain", enabled=bool(cfg["progress"])),
            before=set_rate, after=record, what="trunk pretraining (patches)",
            hint="lower pretrain.lr")
        model.eval()
        if not fcn_cfg.get("batch_norm", False):
            fold_batch_norm(model)  # a plain trunk for the paper's BN-free FCN
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    patches = frame[frame["phase"] == "patches"]
    tail = (patches if len(patches) else frame).tail(max(1, min(50, len(frame) // 4)))
    extra = {"classes": classes.to_dict(), "purpose": "trunk pretraining (pretrained: patches)",
             "pretrain": {k: v for k, v in cfg.items() if k != "progress"},
             "precision_choice": choice.as_dict(),
             "seed": int(seed), "images": [str(p) for p in images],
             "unlabelled_images": [str(p) for p in unlabelled],
             "final_loss": float(tail["loss"].mean()) if len(tail) else float("nan"),
             "final_accuracy": float(tail["accuracy"].mean()) if len(tail) else float("nan")}
    save_model(out_model, model.to("cpu"), arch="patch_classifier", kwargs=model.kwargs,
               extra=extra)
    if out_csv is not None:
        write_table(out_csv, frame)
    if out_png is not None:
        plot_pretraining(frame, out_png)
    return {"iterations": iterations, "ssl_iterations": ssl_iterations,
            "ssl_images": len(arrays) + len(extra_arrays) if ssl_iterations else 0,
            "seconds": time.perf_counter() - t0,
            "final_loss": extra["final_loss"], "final_accuracy": extra["final_accuracy"]}


def _masked_image_modelling(model: nn.Module, images: list[np.ndarray], *, cfg: dict[str, Any],
                            rng: np.random.Generator, device: torch.device, precision: str,
                            memory_format: torch.memory_format) -> list[dict[str, Any]]:
    """The SSL phase (see the module docstring): trains ``model.trunk`` in place; CSV rows."""

    iterations, size = int(cfg["ssl_iterations"]), int(cfg["ssl_patch_size"])
    ratio, batch_size = float(cfg["ssl_mask_ratio"]), int(cfg["batch_size"])
    channels = model.trunk.features[0]
    channels = (channels[0] if isinstance(channels, nn.Sequential) else channels).in_channels
    head = MaskedReconstruction(model.trunk.out_channels, channels).to(device)
    params = [*model.trunk.features.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=float(cfg["lr"]),
                                 weight_decay=float(cfg["weight_decay"]))
    log.info("SSL: %d iterations of masked-image modelling, %d-px crops, %.0f %% of %d-px "
             "blocks masked", iterations, size, 100 * ratio, SSL_BLOCK)
    rows: list[dict[str, Any]] = []

    def crops() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(iterations):
            x = random_crops(images, batch_size, size, rng, augment=bool(cfg["augment"]))
            yield normalize_batch(x.to(device)), block_mask(batch_size, size, ratio, rng).to(device)

    def ssl_step(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        target, mask = batch
        masked = (target * (1.0 - mask)).contiguous(memory_format=memory_format)
        with runtime.autocast(device, precision):
            pool5 = model.trunk.features(masked)
        prediction = head(pool5.float())[..., :size, :size]
        loss = masked_l1(prediction, target, mask)
        return Step(loss, {"iteration": None, "loss": loss.item(), "accuracy": float("nan"),
                           "seconds": None, "phase": "ssl"}, {"l1": f"{loss.item():.3f}"})

    def record(iteration: int, row: dict[str, Any]) -> None:
        rows.append({**row, "iteration": iteration})

    fit(crops(), ssl_step, optimizer,
        bar=progress(iterations, "ssl", enabled=bool(cfg["progress"])),
        after=record, what="SSL pretraining", hint="lower pretrain.lr")
    return rows


def plot_pretraining(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Loss and training-batch accuracy vs iteration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    window = max(1, min(25, len(frame) // 10))
    phases = frame["phase"] if "phase" in frame else pd.Series("patches", index=frame.index)
    for ax, col, label in ((ax_loss, "loss", "cross-entropy (SSL: masked L1)"),
                           (ax_acc, "accuracy", "accuracy")):
        for colour, phase in (("C1", "ssl"), ("C0", "patches")):
            part = frame[phases == phase].dropna(subset=[col])
            if len(part):
                ax.plot(part["iteration"], part[col], lw=0.6, alpha=0.4, color=colour)
                ax.plot(part["iteration"], part[col].rolling(window, min_periods=1).mean(),
                        color=colour, label=f"{phase}: running mean ({window})")
                ax.legend(fontsize=8)
        ax.set(xlabel="iteration", ylabel=label)
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(0, 1)
    ax_loss.set_title("trunk pretraining on labelled training patches")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
