"""The VGG16 trunk as a patch classifier: the network of the offline pretraining stand-in.

ImageNet weights are what make the paper's fine-tuned FCNs train in few iterations; offline
they cannot be downloaded. :mod:`mvfcnn.fcn.pretrain` instead teaches the *same* trunk to tell
the constituents apart on small native-scale patches (global average pooling over pool5 + one
linear layer), which costs ~40× less per sample than a padded FCN tile and sees one label per
patch instead of a matrix-dominated label map.

The trunk may carry BatchNorm after every convolution while it is trained (a BN-free 13-layer
VGG barely moves in a few hundred steps from scratch); :func:`fold_batch_norm` then folds each
BatchNorm into its convolution, so the result is a plain VGG16 trunk, loadable by every FCN
through ``pretrained: <path>``, that computes exactly what the BN network computed in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mvfcnn.models.io import register_arch, registered_archs
from mvfcnn.models.vgg_trunk import VGGTrunk, fold_trunk_batch_norm

__all__ = ["HEADS", "PatchClassifier", "fold_batch_norm", "patch_classifier"]

#: what the linear classifier reads: fc7 (fc6/fc7 pretrained too) or pool5 (cheap)
HEADS = ("fc7", "pool5")


class PatchClassifier(nn.Module):
    """VGG16 trunk → global average pool → linear.

    ``head="fc7"`` classifies fc7 (patches of at least 224 px, so that the 7×7 fc6 sees a
    whole pool5 window, as in ImageNet training): fc6/fc7 are pretrained too. ``head="pool5"``
    pools pool5 directly (any patch of ≥ 32 px, much cheaper; fc6/fc7 keep their random init).
    """

    def __init__(self, *, num_classes: int, width: float = 1.0, fc_channels: int = 4096,
                 batch_norm: bool = True, head: str = "pool5") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head = head
        # conv1_1 padding 1: patches are classified as a whole, no FCN crop alignment needed
        self.trunk = VGGTrunk(width=width, fc_channels=fc_channels, conv1_padding=1,
                              batch_norm=batch_norm)
        self.batch_norm = bool(batch_norm)
        features_out = self.trunk.fc_channels if head == "fc7" else self.trunk.out_channels
        self.classifier = nn.Linear(features_out, num_classes)
        self._kwargs = {"num_classes": int(num_classes), "width": float(width),
                        "fc_channels": int(fc_channels), "batch_norm": self.batch_norm,
                        "head": head}

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self._kwargs)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.trunk.features(x)
        if self.head == "fc7":
            if min(pooled.shape[-2:]) < 7:
                raise ValueError(f"head fc7 needs patches of >= 224 px (pool5 >= 7x7), got "
                                 f"{tuple(x.shape[-2:])}")
            pooled = self.trunk.forward_fc(pooled)
        return self.classifier(pooled.mean(dim=(2, 3)))


@torch.no_grad()
def fold_batch_norm(model: PatchClassifier) -> PatchClassifier:
    """Fold every BatchNorm into its convolution in place (eval-mode statistics).

    ``conv → bn`` becomes one convolution with ``w' = w·γ/σ`` and ``b' = (b − μ)·γ/σ + β``
    (σ = sqrt(running_var + eps)), so the trunk becomes a plain VGG16 trunk with identical
    eval-mode outputs. (An FCN with ``fcn.batch_norm`` takes the trunk unfolded instead.)
    """
    if not model.batch_norm:
        return model
    fold_trunk_batch_norm(model.trunk)
    model.batch_norm = False
    model._kwargs["batch_norm"] = False
    return model


def patch_classifier(*, num_classes: int, width: float = 1.0, fc_channels: int = 4096,
                     batch_norm: bool = True, head: str = "pool5") -> PatchClassifier:
    """Randomly initialised :class:`PatchClassifier` (He-normal trunk, see ``VGGTrunk``)."""
    return PatchClassifier(num_classes=num_classes, width=width, fc_channels=fc_channels,
                           batch_norm=batch_norm, head=head)


def _register() -> None:
    if "patch_classifier" not in registered_archs():
        register_arch("patch_classifier", patch_classifier)


_register()
