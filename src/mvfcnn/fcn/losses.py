"""The objective and the optimiser of FCN training: pixel cross-entropy (sum or mean over
labelled pixels), the soft-Dice and Lovász-softmax terms, capped class weights, learning-rate
schedules, SGD/Adam with Caffe's bias multipliers.

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
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvfcnn.core.errors import InputError
from mvfcnn.fcn.dataset import TileDataset

LOSSES = ("mean", "sum")


def lr_sum_to_mean(lr_sum: float, weight_decay_sum: float, n_pixels: int) -> tuple[float, float]:
    """(lr, weight decay) for a mean-normalised loss that reproduce SGD on a summed loss."""
    return lr_sum * n_pixels, weight_decay_sum / n_pixels


def pixel_loss(logits: Tensor, labels: Tensor, *, ignore_index: int, reduction: str,
               class_weights: Tensor | None = None, dice_weight: float = 0.0,
               lovasz_weight: float = 0.0) -> tuple[Tensor, float, int]:
    """(objective to minimise, mean loss per labelled pixel, N labelled pixels).

    ``reduction`` "sum" or "mean" (see the module docstring); a batch without any labelled
    pixel gives a zero objective (no NaN), so weight decay and momentum still step as usual.
    ``class_weights`` scales each pixel's loss by its true class's weight; the normalisation
    stays "per labelled pixel" so the sum/mean learning-rate mapping is unchanged.
    ``dice_weight`` adds that multiple of :func:`soft_dice_loss` (per batch, every class
    counted alike, so a rare class weighs as much as the matrix) to the mean objective, and N
    times it to the summed one: "sum" stays N x "mean", so :func:`lr_sum_to_mean` still holds.
    ``lovasz_weight`` adds :func:`lovasz_softmax_loss` the same way.
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
    scale = n if reduction == "sum" else 1
    if dice_weight and n:
        dice = soft_dice_loss(logits, labels, ignore_index=ignore_index)
        objective = objective + dice_weight * scale * dice
    if lovasz_weight and n:
        lovasz = lovasz_softmax_loss(logits, labels, ignore_index=ignore_index)
        objective = objective + lovasz_weight * scale * lovasz
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


def lovasz_softmax_loss(logits: Tensor, labels: Tensor, *, ignore_index: int) -> Tensor:
    """Mean over the classes present in the batch's labelled pixels of the Lovász extension of
    the Jaccard loss 1 - IoU (Berman et al. 2018, "Lovász-softmax"), on the softmax errors
    |[y = c] - p_c|. On one-hot probabilities it IS 1 - IoU of each class; on soft ones a convex
    surrogate whose gradient targets the pixels that cost the class's IoU most, so the mean IoU
    (what the benchmark reports) is optimised directly, every present class alike."""
    probs = torch.softmax(logits.float(), dim=1)
    k = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, k)
    truth = labels.reshape(-1)
    keep = truth != ignore_index
    flat, truth = flat[keep], truth[keep]
    terms = []
    for c in range(k):
        member = (truth == c).to(flat.dtype)
        if not bool(member.any()):
            continue
        errors, order = torch.sort((member - flat[:, c]).abs(), descending=True)
        terms.append(torch.dot(errors, _jaccard_steps(member[order])))
    return torch.stack(terms).mean() if terms else flat.sum() * 0.0


def _jaccard_steps(member_sorted: Tensor) -> Tensor:
    """Increments of the Jaccard loss as the pixels in this order are counted wrong one by one:
    the weights that make the dot product with the sorted errors the Lovász extension."""
    total = member_sorted.sum()
    intersection = total - member_sorted.cumsum(0)
    union = total + (1.0 - member_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


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


#: learning-rate schedules within one stage (``fcn.lr_schedule``, ``pretrain.lr_schedule``)
LR_SCHEDULES = ("constant", "poly", "cosine")


def lr_factor(schedule: str, step: int, iterations: int, *, key: str = "fcn.lr_schedule") -> float:
    """Multiplier of a stage's learning rate at 0-based ``step`` of ``iterations``.

    ``poly`` is DeepLab's (1 - step/iterations)^0.9 and ``cosine`` half a cosine to 0: both end
    a stage with small steps, so its last weights are not one noisy step of a constant rate.
    A function of the step alone, so a resumed stage continues the same schedule. ``key`` names
    the setting in the error.
    """
    if schedule == "constant" or iterations <= 0:
        return 1.0
    progress = min(max(step / iterations, 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - progress) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise InputError(f"{key} must be one of {LR_SCHEDULES}, got {schedule!r}")


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
