"""The network of one FCN stage: built from the config, FCN-32s from the variant's trunk and
every later stage from its trained parent (``init_from_parent``), its trunk frozen up to
``fcn.freeze`` for a pretrained variant."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.settings import with_defaults
from mvfcnn.models.fcn import PARENT_STAGE, build_fcn, init_from_parent
from mvfcnn.models.io import load_model
from mvfcnn.models.vgg_trunk import POOL_INDICES


def build_stage_model(stage: str, *, classes: ClassSet, cfg: dict[str, Any],
                      variant: dict[str, Any], parent: str | os.PathLike[str] | None) -> nn.Module:
    """32s from the variant's pretrained trunk; every later stage from its trained parent."""

    cfg = with_defaults("fcn", cfg)
    kwargs = {"num_classes": classes.num_classes, "width": float(cfg["width"]),
              "fc_channels": int(cfg["fc_channels"]), "dropout": float(cfg["dropout"]),
              "batch_norm": bool(cfg["batch_norm"]), "padding": str(cfg["padding"])}
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
    parent_kwargs = {"batch_norm": False, "padding": "caffe", **meta["kwargs"]}
    for key in ("num_classes", "width", "fc_channels", "batch_norm", "padding"):
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
