"""ImageNet weights through torchvision's weights enums, with one clear error when offline.

``torchvision.models.VGG16_Weights.IMAGENET1K_V1.get_state_dict()`` downloads on first use and
caches the file in ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``). Machines without
internet need the file placed there by hand; :func:`imagenet_state_dict` says exactly which file
and where. Shared by the FCN trunk and the object-based VGG baselines.
"""

from __future__ import annotations

import http.client
import os
import pickle
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from mvfcnn.core.errors import InputError

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

ARCHS = ("vgg16", "vgg19")


def imagenet_weights(arch: str) -> WeightsEnum:
    """The torchvision weights enum member used for ``arch`` ("vgg16" or "vgg19")."""
    from torchvision.models import VGG16_Weights, VGG19_Weights

    table = {"vgg16": VGG16_Weights.IMAGENET1K_V1, "vgg19": VGG19_Weights.IMAGENET1K_V1}
    if arch not in table:
        raise InputError(f"unknown ImageNet architecture {arch!r}; expected one of {ARCHS}")
    return table[arch]


def imagenet_cache_path(arch: str) -> Path:
    """Where torch hub looks for (and caches) the ImageNet file of ``arch``."""
    url = imagenet_weights(arch).url
    filename = os.path.basename(urlparse(url).path)  # same rule as torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def imagenet_state_dict(arch: str, progress: bool = True) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``arch`` (cached file, else a download).

    Offline without the cached file this raises one :class:`InputError` naming the file, its URL
    and the folder to put it in, instead of a urllib traceback.
    """
    weights = imagenet_weights(arch)
    cached = imagenet_cache_path(arch)
    try:
        return weights.get_state_dict(progress=progress, check_hash=True, map_location="cpu",
                                      weights_only=True)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
        if cached.exists():  # the file is there but could not be read
            raise InputError(f"cannot read cached ImageNet weights for {arch} ({err}); delete "
                             "the file to download it again", path=cached) from err
        raise InputError(
            f"ImageNet weights for {arch} not found and cannot be downloaded "
            f"({type(err).__name__}: {err}): place {cached.name} (from {weights.url}) in "
            f"{cached.parent}, or set pretrained: none / a path"
        ) from err
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        # a corrupt or partial cached file
        raise InputError(f"cannot read cached ImageNet weights for {arch} ({err}); delete the "
                         "file to download it again", path=cached) from err


def read_weights_file(path: Path, *, accepted: str) -> Any:
    """The object in a weights file given as ``pretrained: <path>``, unwrapped from an mvfcnn
    model file or a ``{'state_dict': ...}`` checkpoint; the caller checks what it holds.

    ``accepted`` names the files the caller can use (for the not-found message). A missing or
    unreadable file raises :class:`InputError` naming the file.
    """
    if not path.is_file():
        raise InputError(f"pretrained weights file not found (use pretrained: none, imagenet or "
                         f"{accepted})", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise InputError(f"cannot read weights ({type(err).__name__}: {err})", path=path) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # mvfcnn model file or a generic checkpoint
    return obj
