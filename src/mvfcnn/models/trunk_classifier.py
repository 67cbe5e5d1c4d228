"""The FCN's VGG16 trunk as an object classifier and as a feature extractor (baselines).

Why: Table 1 should compare methods, not initialisations. With ``pretrained: patches`` the
MVFCNN starts from the patch-pretrained trunk of ``results/pretrain/{modality}/trunk.pt``, a
plain VGG16 trunk in the FCN's layout (``fcn.width``, ``fcn.fc_channels``); torchvision's VGG16
and VGG19 cannot load it. This module builds the same trunk for the object-based baselines:

* :func:`vgg16_trunk_classifier` (baseline ``vgg16``): conv1_1..pool5 → global average pool →
  new linear layer (Gaussian std 0.01, bias 0, as the replaced fc8 of §4.3.1), fine-tuned on
  the object crops. The head is the patch classifier's own design
  (:mod:`mvfcnn.models.patch_classifier`, ``pretrain.head: pool5``) and not fc6/fc7 + fc8
  because (1) with that head only conv1_1..pool5 are pretrained, fc6/fc7 stay random, so a fc8 on
  fc7 would start from random features; (2) fc6 is a 7×7 convolution that needs ≥ 224-px input
  while the CPU crops are 64 px (pool5 2×2); (3) global pooling works for every crop ≥ 32 px
  and sees the object exactly as the pretraining saw patches. fc6/fc7 are loaded (the checkpoint
  must be a complete trunk) and then dropped.
* :func:`vgg16_trunk_features` (baseline ``vgg19_svm`` with a trunk init): the globally pooled
  pool5 activation (C5 values: 128 at width 0.25, 512 at 1.0), the DeCAF-style feature of the
  very trunk the MVFCNN fine-tunes, for the RBF SVM. See :mod:`mvfcnn.baselines.run` for why
  this replaces a separately pretrained VGG19.

``conv1_1`` has padding 1 (as in the patch classifier): whole crops are classified, no FCN crop
alignment is needed. Weights (``pretrained``) go through
:func:`mvfcnn.models.fcn.load_trunk_weights`: ``"none"`` (He-normal init, from scratch),
``"imagenet"`` (torchvision's ``VGG16_Weights.IMAGENET1K_V1``; real layout only; one clear
error offline) or a path (a ``pretrain-trunk`` file, an FCN model file, a bare trunk state dict
or a torchvision VGG16 state dict). :func:`uses_trunk_layout` tells the baselines which network
a ``pretrained:`` value belongs to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mvfcnn.models.fcn import load_trunk_weights, uninitialized
from mvfcnn.models.io import register_arch, registered_archs
from mvfcnn.models.vgg_trunk import VGGTrunk, is_torchvision_vgg_state
from mvfcnn.models.weights import read_weights_file

__all__ = ["TrunkClassifier", "TrunkPool5", "uses_trunk_layout", "vgg16_trunk_classifier",
           "vgg16_trunk_features"]

Pretrained = str | os.PathLike[str]
#: std of the Gaussian init of the new linear head (§4.3.1, the replaced last layer)
HEAD_INIT_STD = 0.01
#: the last convolution of torchvision's VGG19 (``features.34``); VGG16 ends at ``features.28``
_VGG19_LAST_CONV = "features.34.weight"


def _trunk(width: float, fc_channels: int, pretrained: Pretrained, progress: bool) -> VGGTrunk:
    kwargs = {"width": width, "fc_channels": fc_channels, "conv1_padding": 1}
    if isinstance(pretrained, str) and pretrained == "none":
        return VGGTrunk(**kwargs)
    trunk = uninitialized(VGGTrunk, **kwargs)  # every tensor is overwritten by the load
    load_trunk_weights(trunk, pretrained, progress=progress)
    return trunk


class TrunkClassifier(nn.Module):
    """VGG16 conv1_1..pool5 (FCN layout, conv1_1 padding 1) → global average pool → linear."""

    def __init__(self, *, num_classes: int, width: float = 1.0, fc_channels: int = 4096,
                 pretrained: Pretrained = "none", progress: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        trunk = _trunk(width, fc_channels, pretrained, progress)
        self.features = trunk.features  # fc6/fc7 are dropped: the head reads pool5
        self.classifier = nn.Linear(trunk.out_channels, num_classes)
        nn.init.normal_(self.classifier.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.classifier.bias)
        self._kwargs = {"num_classes": int(num_classes), "width": float(width),
                        "fc_channels": int(fc_channels)}

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self._kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class TrunkPool5(nn.Module):
    """Frozen VGG16 trunk → globally average-pooled pool5 (C5 values per image)."""

    def __init__(self, trunk: VGGTrunk) -> None:
        super().__init__()
        self.features = trunk.features
        self.out_channels = trunk.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


def vgg16_trunk_classifier(*, num_classes: int, width: float = 1.0, fc_channels: int = 4096,
                           pretrained: Pretrained = "none",
                           progress: bool = True) -> TrunkClassifier:
    """:class:`TrunkClassifier` with its trunk from ``pretrained`` and a new Gaussian head.

    ``width`` / ``fc_channels`` are the FCN's layout (``fcn.width``, ``fcn.fc_channels``): a
    trunk file of another layout raises :class:`mvfcnn.core.errors.InputError` naming the key.
    """
    return TrunkClassifier(num_classes=num_classes, width=width, fc_channels=fc_channels,
                           pretrained=pretrained, progress=progress)


def vgg16_trunk_features(*, width: float = 1.0, fc_channels: int = 4096,
                         pretrained: Pretrained = "none", progress: bool = True) -> TrunkPool5:
    """Frozen pool5-GAP extractor (eval mode, no gradients) of the trunk from ``pretrained``."""
    extractor = TrunkPool5(_trunk(width, fc_channels, pretrained, progress)).eval()
    for param in extractor.parameters():
        param.requires_grad_(False)
    return extractor


def uses_trunk_layout(pretrained: Pretrained, arch: str) -> bool:
    """Whether a baseline ``pretrained:`` value needs the FCN-layout trunk instead of
    torchvision's ``arch`` ("vgg16" or "vgg19").

    "none" and "imagenet" keep torchvision's network (the paper's); a path does unless the file
    is a torchvision state dict of ``arch`` itself (a pretrain-trunk file, an FCN model or a
    bare trunk, and for VGG19 also a torchvision VGG16 file, hold the FCN's VGG16 trunk).
    """
    if isinstance(pretrained, str) and pretrained in ("none", "imagenet"):
        return False

    obj = read_weights_file(Path(pretrained), accepted="a path to a weights file")
    if not isinstance(obj, dict) or not is_torchvision_vgg_state(obj):
        return True
    return arch == "vgg19" and _VGG19_LAST_CONV not in obj


def _register() -> None:
    if "vgg16_trunk_classifier" not in registered_archs():
        register_arch("vgg16_trunk_classifier", vgg16_trunk_classifier)


_register()
