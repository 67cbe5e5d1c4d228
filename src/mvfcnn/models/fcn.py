"""FCN-32s / 16s / 8s (Long et al. 2015, Caffe "staged" form) and 4s / 2s on one VGG16 trunk.

One class, :class:`FCN`, with a ``stage`` parameter, and a builder per stage
(:func:`fcn32s` … :func:`fcn2s`), as torchvision's ``vgg.py`` has one ``VGG`` and ``vgg16()``.
Layer names follow the Caffe prototxts, so a child stage shares every name (``trunk.*``,
``score_fr``, ``upscore2``, ``score_pool4``) with its parent and :func:`init_from_parent`
copies by name::

    32s: score_fr -> upscore (k64 s32) -> crop 19
    16s: score_fr -> upscore2 (k4 s2) + crop5(score_pool4(pool4))
                  -> upscore16 (k32 s16) -> crop 27
    8s:  score_fr -> upscore2 (k4 s2) + crop5(score_pool4(pool4))
                  -> upscore_pool4 (k4 s2) + crop9(score_pool3(pool3))
                  -> upscore8 (k16 s8) -> crop 31
    4s:  ... 8s's sum -> upscore_pool3 (k4 s2) + crop17(score_pool2(pool2))
                  -> upscore4 (k8 s4) -> crop 33
    2s:  ... 4s's sum before upscore4 -> upscore_pool2 (k4 s2) + crop33(score_pool1(pool1))
                  -> upscore_pool1 (k4 s2) -> crop 34

FCN-4s and 2s continue the paper's refinement past 8s, the same way (issue 22): structures
narrower than the 8-px output stride (MetalDAM's matrix walls) need no enlarged input. Their
crops follow from each blob's map to input pixels, x_in = stride * i + a (conv1_1 pad 100:
pool1 2i - 98.5, pool2 4i - 97.5, pool3 8i - 95.5, score_fr 32i + 12.5; a k4 s2 upsampler
maps j to (j - 1.5) / 2), and are tested by where each skip's gradient centres.

Score layers start at zero (a fresh model outputs all zeros; a fresh child reproduces its
parent) and train in fp32 (:class:`ScoreConv`); upsamplers are fixed bilinear kernels, frozen
(``requires_grad=False``: optimisers must only get ``p.requires_grad`` parameters) and computed
per channel in fp32 (:class:`BilinearUpsample`). Under bf16 autocast the trunk runs in bf16 and
the head in fp32 (score layers in inference excepted): the head is a negligible share of the
FLOPs, and bf16 there was a slow path or a crash on Intel AMX (issue 23).
With conv1_1 padding 100 and ceil-mode pooling the output is (B, num_classes, H, W) for any H, W.

``padding="same"`` (``fcn.padding``) is the same network without the 100-px margin: conv1_1 pads
1 and fc6 pads 3, so every map keeps its size up to the pools (pool k cell i centred on input
pixel 2^k i + (2^k - 1) / 2), and each upsampler is exact bilinear interpolation
(``align_corners=False``, edges repeated; :func:`~mvfcnn.models.fcn_layers.upsample_same`),
so no crop offsets. A 256-px tile is then a 256-px map at conv1 instead of 454 px: about a
third of the FLOPs in every layer. The output is (B, num_classes, H, W) for any H, W as well.
"""


from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mvfcnn.core.config import FCN_STAGES
from mvfcnn.core.errors import InputError
from mvfcnn.models.fcn_layers import (
    ScoreConv,
    bilinear_kernel,
    bilinear_upsampler,
    caffe_crop,
    upsample_same,
)
from mvfcnn.models.vgg_trunk import (
    FCN_CONV1_PADDING,
    TrunkFeatures,
    VGGTrunk,
    adapt_trunk_state,
    is_torchvision_vgg_state,
    trunk_state_from_torchvision,
)
from mvfcnn.models.weights import imagenet_state_dict, read_weights_file

STAGES = FCN_STAGES
#: (kernel, stride) of each upsampler and the crop offset of each cropped blob (Caffe values
#: for 32s-8s; 4s/2s derived the same way, see the module docstring).
UPSAMPLERS: dict[str, tuple[int, int]] = {
    "upscore": (64, 32), "upscore2": (4, 2), "upscore16": (32, 16),
    "upscore_pool4": (4, 2), "upscore8": (16, 8),
    "upscore_pool3": (4, 2), "upscore4": (8, 4), "upscore_pool2": (4, 2), "upscore_pool1": (4, 2),
}
CROPS = {"upscore": 19, "score_pool4": 5, "upscore16": 27, "score_pool3": 9, "upscore8": 31,
         "score_pool2": 17, "upscore4": 33, "score_pool1": 33, "upscore_pool1": 34}
#: the skip chain: stage k (16s = 1 ... 2s = 4) doubles the scores of stage k-1 with the first
#: upsampler and adds the cropped scores of the next-shallower pool; the order is the
#: layers' registration order, so state dicts keep their key order
SKIP_CHAIN = (("upscore2", "score_pool4"), ("upscore_pool4", "score_pool3"),
              ("upscore_pool3", "score_pool2"), ("upscore_pool2", "score_pool1"))
#: the upsampler that brings each stage's scores to the input size
FINAL_UPSAMPLER = {"32s": "upscore", "16s": "upscore16", "8s": "upscore8", "4s": "upscore4",
                   "2s": "upscore_pool1"}
#: each stage's parent in the staged training (32s starts from the trunk)
PARENT_STAGE = {"16s": "32s", "8s": "16s", "4s": "8s", "2s": "4s"}
#: ``fcn.padding``: the Caffe FCN's 100-px conv1_1 margin and crops, or size-keeping convolutions
PADDINGS = ("caffe", "same")
#: the real VGG16 layout, the only one ImageNet weights fit
IMAGENET_LAYOUT = {"width": 1.0, "fc_channels": 4096}


class FCN(nn.Module):
    """Fully convolutional VGG16 for dense classification; see the module docstring."""

    def __init__(
        self,
        *,
        stage: str,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        batch_norm: bool = False,
        padding: str = "caffe",
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise InputError(f"unknown FCN padding {padding!r}; expected one of {PADDINGS}")
        if stage not in STAGES:
            raise InputError(f"unknown FCN stage {stage!r}; expected one of {STAGES}")
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.stage = stage
        self.num_classes = int(num_classes)
        self.padding = padding
        same = padding == "same"
        self.trunk = VGGTrunk(width=width, fc_channels=fc_channels, dropout=dropout,
                              batch_norm=batch_norm,
                              conv1_padding=1 if same else FCN_CONV1_PADDING,
                              fc6_padding=3 if same else 0)
        c1, c2, c3, c4, _ = self.trunk.pool_channels
        nc = self.num_classes
        depth = STAGES.index(stage)  # 0 = 32s ... 4 = 2s
        self.score_fr = ScoreConv(fc_channels, nc)
        skip_channels = {"score_pool4": c4, "score_pool3": c3, "score_pool2": c2, "score_pool1": c1}
        for upsampler, skip in SKIP_CHAIN[:depth]:
            setattr(self, upsampler, bilinear_upsampler(nc, *UPSAMPLERS[upsampler]))
            setattr(self, skip, ScoreConv(skip_channels[skip], nc))
        final = FINAL_UPSAMPLER[stage]
        setattr(self, final, bilinear_upsampler(nc, *UPSAMPLERS[final]))
        self._kwargs = {"num_classes": self.num_classes, "width": float(width),
                        "fc_channels": int(fc_channels), "dropout": float(dropout)}
        if batch_norm:  # absent = False: model files written before the option load unchanged
            self._kwargs["batch_norm"] = True
        if same:  # absent = "caffe", likewise
            self._kwargs["padding"] = padding
        self.reset_head()

    @property
    def kwargs(self) -> dict[str, Any]:
        """Builder keyword arguments that rebuild this architecture (for ``save_model``)."""
        return dict(self._kwargs)

    @property
    def arch(self) -> str:
        """Registry name of this model ("fcn32s", "fcn16s" or "fcn8s")."""
        return f"fcn{self.stage}"

    @torch.no_grad()
    def reset_head(self) -> None:
        """Zero score layers and bilinear upsamplers (the trunk keeps its own init)."""
        for name, module in self.named_children():
            if name.startswith("score_"):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
            elif name in UPSAMPLERS:
                module.weight.copy_(bilinear_kernel(self.num_classes, module.kernel_size[0]))

    def forward(self, x: Tensor) -> Tensor:
        features = self.trunk(x, early=self.stage in ("4s", "2s"))
        return self.head(features, x.shape[-2], x.shape[-1])

    def head(self, features: TrunkFeatures, height: int, width: int) -> Tensor:
        """(B, num_classes, height, width) scores from the trunk outputs of an H x W input."""
        pool3, pool4, _, fc7, pool1, pool2 = features
        pools = {"score_pool4": pool4, "score_pool3": pool3, "score_pool2": pool2,
                 "score_pool1": pool1}
        same = self.padding == "same"
        score = self.score_fr(fc7)
        for upsampler, skip in SKIP_CHAIN[:STAGES.index(self.stage)]:
            if pools[skip] is None:
                raise RuntimeError(f"FCN-{self.stage} needs the trunk's early pools "
                                   "(trunk(x, early=True))")
            skip_score = getattr(self, skip)(pools[skip])
            if same:
                score = upsample_same(getattr(self, upsampler), score,
                                      *skip_score.shape[-2:]) + skip_score
            else:
                score = getattr(self, upsampler)(score)
                score = score + caffe_crop(skip_score, CROPS[skip], *score.shape[-2:])
        final = getattr(self, FINAL_UPSAMPLER[self.stage])
        if same:
            return upsample_same(final, score, height, width)
        return caffe_crop(final(score), CROPS[FINAL_UPSAMPLER[self.stage]], height, width)


# --------------------------------------------------------------------------- pretrained trunks

Pretrained = str | os.PathLike[str] | None


def load_trunk_weights(trunk: VGGTrunk, pretrained: Pretrained, *, progress: bool = True) -> None:
    """Initialise ``trunk`` from "none" (keep random init), "imagenet" or a file.

    A file may be an mvfcnn model file, a plain FCN state dict (``trunk.*`` keys), a bare trunk
    state dict, a ``{"state_dict": ...}`` checkpoint or a torchvision VGG16 state dict. Every trunk
    tensor must be present with the right shape; the error names the file and the first bad key.
    """
    if pretrained is None or (isinstance(pretrained, str) and pretrained == "none"):
        return
    if isinstance(pretrained, str) and pretrained == "imagenet":
        layout = {"width": trunk.width, "fc_channels": trunk.fc_channels}
        if layout != IMAGENET_LAYOUT:
            raise InputError(
                f"pretrained: imagenet needs the real VGG16 layout (width 1.0, fc_channels "
                f"4096) because the ImageNet tensors have exactly those shapes; got width "
                f"{trunk.width}, fc_channels {trunk.fc_channels}. Use pretrained: none, or "
                "fcn.width: 1.0 and fcn.fc_channels: 4096")

        state = trunk_state_from_torchvision(imagenet_state_dict("vgg16", progress=progress))
        _load_checked(trunk, adapt_trunk_state(state, batch_norm=trunk.batch_norm),
                      source="ImageNet vgg16")
        return
    path = Path(pretrained)
    _load_checked(trunk, adapt_trunk_state(_trunk_state_from_file(path),
                                           batch_norm=trunk.batch_norm), source=path)


def _trunk_state_from_file(path: Path) -> dict[str, Tensor]:
    obj = read_weights_file(path, accepted="a path to a state dict / model file")
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError("not a state dict (expected a dict of tensors, an mvfcnn model file "
                         "or a {'state_dict': ...} checkpoint)", path=path)
    if is_torchvision_vgg_state(obj):
        try:
            return trunk_state_from_torchvision(obj)
        except KeyError as err:
            raise InputError(f"torchvision VGG state dict lacks key {err} (only VGG16 fits "
                             "the FCN trunk)", path=path) from err
    trunk_keys = {k[len("trunk."):]: v for k, v in obj.items() if k.startswith("trunk.")}
    if trunk_keys:
        return trunk_keys
    if "features.0.weight" in obj and "fc6.weight" in obj:
        return dict(obj)
    raise InputError("no VGG trunk weights in this file (expected 'trunk.*' keys, a bare trunk "
                     "state dict or a torchvision VGG16 state dict)", path=path)


def _load_checked(trunk: VGGTrunk, state: dict[str, Tensor], *, source: object) -> None:
    path = source if isinstance(source, Path) else None
    where = "" if path is not None else f"{source}: "
    for key, param in trunk.state_dict().items():
        if key not in state:
            raise InputError(f"{where}missing trunk key {key!r}", path=path)
        if tuple(state[key].shape) != tuple(param.shape):
            raise InputError(
                f"{where}shape mismatch at trunk key {key!r}: file {tuple(state[key].shape)} vs "
                f"model {tuple(param.shape)} (model width {trunk.width}, fc_channels "
                f"{trunk.fc_channels})", path=path)
    trunk.load_state_dict({k: state[k] for k in trunk.state_dict()}, strict=True)


# --------------------------------------------------------------------------- builders


def build_fcn(stage: str, *, pretrained: Pretrained = "none", progress: bool = True,
              **kwargs: Any) -> FCN:
    """FCN of ``stage`` (one of :data:`STAGES`; ``kwargs``: :class:`FCN`'s layout, e.g.
    ``num_classes``, ``width``); ``pretrained`` initialises the trunk only.

    ``pretrained``: "none" (He-normal trunk, see ``VGGTrunk.reset_parameters``), "imagenet"
    (torchvision ``VGG16_Weights.IMAGENET1K_V1``; width 1.0 and fc_channels 4096 only) or a
    path (see :func:`load_trunk_weights`). Score layers always start at zero.
    """
    if stage not in STAGES:
        raise InputError(f"unknown FCN stage {stage!r}; expected one of {STAGES}")
    kwargs = {"stage": stage, **kwargs}
    if pretrained is None or (isinstance(pretrained, str) and pretrained == "none"):
        return FCN(**kwargs)
    # every trunk tensor will be overwritten: skip its random init (~1 s for the real layout)
    model = uninitialized(FCN, **kwargs)
    model.reset_head()
    load_trunk_weights(model.trunk, pretrained, progress=progress)
    return model


def uninitialized(cls: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """``cls(**kwargs)`` with allocated but uninitialised CPU tensors (fill them all yourself).

    Built on the meta device (no init cost) and materialised with ``to_empty``, which keeps
    ``requires_grad`` (the frozen upsamplers stay frozen).
    """
    with torch.device("meta"):
        model = cls(**kwargs)
    return model.to_empty(device="cpu")


# One builder per stage, as torchvision's vgg16 etc.; keywords are build_fcn's (num_classes,
# width, fc_channels, dropout, batch_norm, pretrained, progress).


def fcn32s(**kwargs: Any) -> FCN:
    """FCN-32s (single-stream, stride 32)."""
    return build_fcn("32s", **kwargs)


def fcn16s(**kwargs: Any) -> FCN:
    """FCN-16s (pool4 skip); normally initialised from a trained 32s (:func:`fcn16s_from`)."""
    return build_fcn("16s", **kwargs)


def fcn8s(**kwargs: Any) -> FCN:
    """FCN-8s (pool4 + pool3 skips); normally initialised from a trained 16s."""
    return build_fcn("8s", **kwargs)


def fcn4s(**kwargs: Any) -> FCN:
    """FCN-4s (pool4 + pool3 + pool2 skips); normally initialised from a trained 8s."""
    return build_fcn("4s", **kwargs)


def fcn2s(**kwargs: Any) -> FCN:
    """FCN-2s (skips from pool4 down to pool1); normally initialised from a trained 4s."""
    return build_fcn("2s", **kwargs)


BUILDERS: dict[str, Callable[..., FCN]] = {"fcn32s": fcn32s, "fcn16s": fcn16s, "fcn8s": fcn8s,
                                           "fcn4s": fcn4s, "fcn2s": fcn2s}


# --------------------------------------------------------------------------- staged training


@torch.no_grad()
def init_from_parent(child: nn.Module, parent: nn.Module) -> list[str]:
    """Copy every parameter/buffer of ``parent`` whose name and shape match into ``child``.

    Returns the copied names. The child's new score layers stay zero, so a fresh child starts
    from its parent's prediction (the staged training of Long et al.).
    """
    parent_state = parent.state_dict()
    copied = []
    for name, tensor in child.state_dict().items():
        source = parent_state.get(name)
        if source is not None and source.shape == tensor.shape:
            tensor.copy_(source)
            copied.append(name)
    return copied


def _child_of(parent: FCN, stage: str) -> FCN:
    child = build_fcn(stage, **parent.kwargs)
    first = next(parent.parameters())
    child.to(device=first.device)
    init_from_parent(child, parent)
    return child


def fcn16s_from(parent: FCN) -> FCN:
    """A new FCN-16s with the same layout as ``parent`` (a 32s), initialised from it."""
    return _child_of(parent, "16s")


def fcn8s_from(parent: FCN) -> FCN:
    """A new FCN-8s with the same layout as ``parent`` (a 16s), initialised from it."""
    return _child_of(parent, "8s")


def fcn4s_from(parent: FCN) -> FCN:
    """A new FCN-4s with the same layout as ``parent`` (an 8s), initialised from it."""
    return _child_of(parent, "4s")


def fcn2s_from(parent: FCN) -> FCN:
    """A new FCN-2s with the same layout as ``parent`` (a 4s), initialised from it."""
    return _child_of(parent, "2s")
