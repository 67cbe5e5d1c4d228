"""Network input normalisation: grey/RGB micrographs -> ImageNet-normalised 3-channel tensors.

torchvision's ImageNet weights expect RGB in [0, 1] normalised by the ImageNet mean/std; SEM
images are grey, so the grey value is repeated to 3 channels: the pretrained first convolution
then sees the same input in each of the channels it was trained on, and its RGB filters sum to a
grey filter. Models trained from scratch use the same normalisation, so one code path serves
every variant.

:func:`normalize_batch` is the fast path for loaders/inference: keep tiles as uint8 until the
last moment (4x less memory traffic) and convert + normalise in one fused multiply-add.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mvfcnn.core.io import to_unit_float

#: ImageNet RGB statistics of torchvision's pretrained models (inputs scaled to [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: full-scale value of the integer dtypes accepted by :func:`normalize_batch`
_INT_SCALE: dict[torch.dtype, float] = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _affine(value_scale: float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(1, 3, 1, 1) scale and shift with ``x * scale - shift == (x / value_scale - mean) / std``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return 1.0 / (value_scale * std), mean / std


def normalize_batch(x: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 1 or 3, H, W) uint8/uint16 (full range) or float ([0, 1]) -> normalised (B, 3, H, W).

    One channel is broadcast to three. The memory format (e.g. channels_last) is kept.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype in _INT_SCALE:
        value_scale = _INT_SCALE[x.dtype]
    elif x.dtype.is_floating_point:
        value_scale = 1.0
    else:
        raise ValueError(f"unsupported input dtype {x.dtype} (uint8, uint16 or float)")
    scale, shift = _affine(value_scale, x.device)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = torch.addcmul(-shift, x.to(torch.float32), scale)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(dtype)


def to_input_tensor(image: np.ndarray) -> Tensor:
    """(H, W) grey or (H, W, 3|4) colour image -> normalised (3, H, W) float32 tensor.

    uint8 / uint16 (and other integers) are scaled from their full range to [0, 1]; floats are
    taken as already in [0, 1]. Grey is repeated to 3 channels; RGB is kept; alpha is dropped.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3]
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim != 2:
        raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")
    unit = to_unit_float(image)  # integers: full range -> [0, 1]; floats unchanged
    tensor = torch.from_numpy(np.ascontiguousarray(unit))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    return normalize_batch(tensor)[0].contiguous()
