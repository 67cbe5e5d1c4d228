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

Patch centres are taken on a grid (step ``patch_size // 16``), at most :data:`MAX_CENTRES` per
class and image, so the candidate list stays small for 7000×8000 images; images are read
memory-mapped.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mvfcnn.config import ClassSet, classes_from_json, json_arg
from mvfcnn.data import to_uint8
from mvfcnn.errors import InputError
from mvfcnn.io import atomic_path, read_image, read_labels, write_table
from mvfcnn.settings import with_defaults

log = logging.getLogger(__name__)

CSV_COLUMNS = ["iteration", "loss", "accuracy", "seconds"]
#: candidate patch centres kept per class and image (a grid of step patch_size // 16)
MAX_CENTRES = 20_000


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
) -> dict[str, Any]:
    """Train the patch classifier, fold its BatchNorm, save it (a ``pretrained:`` file)."""
    from mvfcnn.models.io import save_model
    from mvfcnn.models.patch_classifier import fold_batch_norm, patch_classifier
    from mvfcnn.models.preprocess import normalize_batch
    from mvfcnn.progress import progress
    from mvfcnn.runtime import announce, autocast, choose_precision, resolve_device
    from mvfcnn.training import deterministic

    cfg = with_defaults("pretrain", cfg)
    if cfg["head"] == "fc7" and int(cfg["patch_size"]) < 224:
        raise InputError(f"pretrain.head fc7 needs pretrain.patch_size >= 224 (fc6 is a 7x7 "
                         f"convolution on pool5), got {cfg['patch_size']}; or use head: pool5")
    if len(images) != len(labels) or not images:
        raise InputError(f"need one labels file per image, got {len(images)} images and "
                         f"{len(labels)} labels")
    dev = resolve_device(str(cfg["device"]))
    choice = choose_precision(str(cfg["precision"]), dev)
    precision = choice.precision
    autocast(dev, precision)  # validates before any work
    announce("pretrain-trunk", choice, dev)
    memory_format = choice.memory_format()
    arrays = [read_image(p) for p in images]
    label_arrays = [read_labels(p) for p in labels]
    wanted = list(range(classes.num_classes)) if cfg["include_matrix"] else list(
        classes.foreground)
    iterations, batch_size = int(cfg["iterations"]), int(cfg["batch_size"])
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
        optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]),
                                     weight_decay=float(cfg["weight_decay"]))
        bar = progress(iterations, "pretrain", enabled=bool(cfg["progress"]))
        for iteration in range(1, iterations + 1):
            tick = time.perf_counter()
            x, y = sampler.draw(batch_size)
            x = normalize_batch(x.to(dev)).contiguous(memory_format=memory_format)
            y = y.to(dev)
            with autocast(dev, precision):
                scores = model(x)
            loss = nn.functional.cross_entropy(scores.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            accuracy = float((scores.argmax(1) == y).float().mean())
            rows.append({"iteration": iteration, "loss": loss.item(), "accuracy": accuracy,
                         "seconds": time.perf_counter() - tick})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", acc=f"{accuracy:.2f}")
            bar.update(1)
        bar.close()
        model.eval()
        fold_batch_norm(model)
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    tail = frame.tail(max(1, min(50, len(frame) // 4)))
    extra = {"classes": classes.to_dict(), "purpose": "trunk pretraining (pretrained: patches)",
             "pretrain": {k: v for k, v in cfg.items() if k != "progress"},
             "precision_choice": choice.as_dict(),
             "seed": int(seed), "images": [str(p) for p in images],
             "final_loss": float(tail["loss"].mean()) if len(tail) else float("nan"),
             "final_accuracy": float(tail["accuracy"].mean()) if len(tail) else float("nan")}
    save_model(out_model, model.to("cpu"), arch="patch_classifier", kwargs=model.kwargs,
               extra=extra)
    if out_csv is not None:
        write_table(out_csv, frame)
    if out_png is not None:
        plot_pretraining(frame, out_png)
    return {"iterations": iterations, "seconds": time.perf_counter() - t0,
            "final_loss": extra["final_loss"], "final_accuracy": extra["final_accuracy"]}


def plot_pretraining(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Loss and training-batch accuracy vs iteration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    window = max(1, min(25, len(frame) // 10))
    for ax, col, label in ((ax_loss, "loss", "cross-entropy"), (ax_acc, "accuracy", "accuracy")):
        if len(frame):
            ax.plot(frame["iteration"], frame[col], lw=0.6, alpha=0.4, color="C0")
            ax.plot(frame["iteration"], frame[col].rolling(window, min_periods=1).mean(),
                    color="C0", label=f"running mean ({window})")
            ax.legend(fontsize=8)
        ax.set(xlabel="iteration", ylabel=label)
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(0, 1)
    ax_loss.set_title("trunk pretraining on labelled training patches")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def cli(argv: list[str]) -> int:
    """`mvfcnn pretrain-trunk`: the ``pretrained: patches`` trunk of one modality."""
    from mvfcnn.runtime import job_parser, start_job

    parser = job_parser("mvfcnn pretrain-trunk", __doc__.split("\n")[0],
                        params_help="the `pretrain` config section", reports_required=False)
    parser.add_argument("--images", nargs="+", required=True, help="training images")
    parser.add_argument("--labels", nargs="+", required=True, help="their label maps")
    parser.add_argument("--fcn-json", required=True, help="the `fcn` section (width, fc_channels)")
    args = start_job(parser, argv)
    cfg = json_arg(args.params_json, "--params-json")
    fcn_cfg = json_arg(args.fcn_json, "--fcn-json")
    summary = pretrain_trunk(images=args.images, labels=args.labels,
                             classes=classes_from_json(args.classes_json), cfg=cfg,
                             fcn_cfg=fcn_cfg, seed=args.seed, out_model=args.out,
                             out_csv=args.out_csv, out_png=args.out_png)
    log.info("pretrained trunk -> %s (%s)", Path(args.out), summary)
    return 0
