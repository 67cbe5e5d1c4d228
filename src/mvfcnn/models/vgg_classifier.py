"""torchvision VGGs for the object-based baselines: VGG16 fine-tuning and VGG19 fc7 (DeCAF).

``pretrained`` (default "none", like torchvision's ``weights=None``) is "imagenet" (torchvision
``IMAGENET1K_V1`` through :func:`mvfcnn.models.weights.imagenet_state_dict`, which raises one
clear InputError offline), "none" (torchvision's random init) or a path to a torchvision-layout
state dict (a bare dict, ``{"state_dict": ...}`` or an mvfcnn model file). Inputs are 3-channel,
ImageNet-normalised (``mvfcnn.models.preprocess.normalize_batch``); any side >= 32 px works
because torchvision's VGG pools the last feature map adaptively to 7x7 (a 64x64 crop gives 2x2,
replicated to 7x7), so the fc layers keep their ImageNet shapes.

These are the networks of ``pretrained: none | imagenet | <torchvision file>``; the CPU
default (``match`` → ``patches``) uses the FCN's own trunk instead
(:mod:`mvfcnn.models.trunk_classifier`). With ``pretrained="none"`` the results mean
something else than the paper's: VGG16 is then trained from scratch for a few epochs at the
fine-tuning learning rate, and VGG19 fc7 features of a random network are a fixed random
non-linear projection of the pixels, so "DeCAF + SVM" degrades to "random features + SVM".
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mvfcnn.core.errors import InputError
from mvfcnn.models.io import register_arch, registered_archs
from mvfcnn.models.weights import imagenet_state_dict, read_weights_file

Pretrained = str | os.PathLike[str]
FC7_DIM = 4096
#: std of the Gaussian init of the replaced last layer (§4.3.1)
HEAD_INIT_STD = 0.01


def _state_from_file(path: Path) -> dict[str, Tensor]:
    obj = read_weights_file(path, accepted="a path to a torchvision VGG state dict")
    if not isinstance(obj, dict) or "features.0.weight" not in obj:
        raise InputError("not a torchvision VGG state dict (no 'features.0.weight')", path=path)
    return dict(obj)


def _pretrained_state(arch: str, pretrained: Pretrained,
                      progress: bool) -> dict[str, Tensor] | None:
    if isinstance(pretrained, str) and pretrained == "none":
        return None
    if isinstance(pretrained, str) and pretrained == "imagenet":
        return imagenet_state_dict(arch, progress=progress)
    return _state_from_file(Path(pretrained))


def _load(model: nn.Module, state: dict[str, Tensor], *, skip: tuple[str, ...] = (),
          source: object = None) -> None:
    own = model.state_dict()
    for key, value in own.items():
        if key.startswith(skip):
            continue
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            found = tuple(state[key].shape) if key in state else "missing"
            raise InputError(f"weights do not fit at {key!r}: file {found} vs model "
                             f"{tuple(value.shape)}", path=source if isinstance(source, Path)
                             else None)
    model.load_state_dict({k: v for k, v in state.items() if k in own and not k.startswith(skip)},
                          strict=False)


def _source(pretrained: Pretrained) -> object:
    return pretrained if pretrained in ("none", "imagenet") else Path(pretrained)


def vgg16_finetune(*, num_classes: int, pretrained: Pretrained = "none",
                   progress: bool = True) -> nn.Module:
    """torchvision VGG16 whose last layer (fc8) is replaced by a ``num_classes`` one.

    The new layer is Gaussian (std 0.01, bias 0) as §4.3.1; every other layer comes from
    ``pretrained``. A file whose fc8 already has ``num_classes`` outputs (a fine-tuned model)
    restores fc8 too.
    """
    from torchvision.models import vgg16

    model = vgg16(weights=None)
    head = nn.Linear(model.classifier[6].in_features, num_classes)
    nn.init.normal_(head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    state = _pretrained_state("vgg16", pretrained, progress)
    model.classifier[6] = head
    if state is not None:
        fits = tuple(state.get("classifier.6.weight", torch.empty(0)).shape) == tuple(
            head.weight.shape)
        _load(model, state, skip=() if fits else ("classifier.6.",), source=_source(pretrained))
    return model


class VGGFc7(nn.Module):
    """VGG conv layers + fc6 + fc7 (post-ReLU, no dropout): the 4096-d DeCAF feature."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        # classifier[0:5] = fc6, ReLU, Dropout, fc7, ReLU; the dropout is dropped, not disabled
        fc6, relu6, _, fc7, relu7 = list(vgg.classifier.children())[:5]
        self.fc = nn.Sequential(fc6, relu6, fc7, relu7)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg19_features(*, pretrained: Pretrained = "none", progress: bool = True) -> VGGFc7:
    """Frozen VGG19 fc7 extractor (eval mode, no gradients) for DeCAF features (§4.3.2)."""
    from torchvision.models import vgg19

    model = vgg19(weights=None)
    state = _pretrained_state("vgg19", pretrained, progress)
    if state is not None:
        _load(model, state, skip=("classifier.6.",), source=_source(pretrained))
    extractor = VGGFc7(model).eval()
    for param in extractor.parameters():
        param.requires_grad_(False)
    return extractor


def _register() -> None:
    if "vgg16_finetune" not in registered_archs():
        register_arch("vgg16_finetune", vgg16_finetune)


_register()
