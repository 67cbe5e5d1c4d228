"""The FCN head's fixed pieces: bilinear upsamplers computed per channel in fp32, score layers
that train in fp32, and the Caffe crop. Kept apart from the network so their precision rules
(issue 23: bf16 was a slow path or a crash on Intel AMX) are read in one place.
"""


from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn


def bilinear_filter(kernel_size: int) -> Tensor:
    """(k, k) 2-D bilinear interpolation kernel.

    Same formula as Caffe's ``bilinear`` filler / pytorch-fcn ``get_upsampling_weight``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(ramp, ramp).to(torch.float32)


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """(C, 1, k, k) weight of :class:`BilinearUpsample`: channel c is upsampled from c alone.

    The Caffe FCN's C x C deconvolution weight is this kernel on its diagonal and zero
    elsewhere, so the two compute the same scores.
    """
    return bilinear_filter(kernel_size).expand(channels, 1, kernel_size, kernel_size).clone()


def fp32_region(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off for the layers on ``x`` (none to switch off on the meta device)."""
    kind = x.device.type
    if kind != "meta" and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def widened(x: Tensor) -> Tensor:
    """``x`` in fp32 unless it already is fp32 or fp64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class ScoreConv(nn.Conv2d):
    """A 1x1 class-score layer (``score_fr``, ``score_pool4``, ``score_pool3``), trained in fp32.

    Its few output channels make it nearly free in any precision, and a bf16 backward breaks
    it: on 2 Intel Xeon AMX cores (torch 2.14.1, oneDNN) the weight gradient of a bf16 1x1
    convolution from >= 3072 channels to < 16 corrupts the heap ("corrupted size vs.
    prev_size"), which killed every bf16 training step of the real VGG16 FCN (score_fr:
    4096 -> 5). Without gradients (inference) it keeps the autocast precision: there bf16 is
    the fastest (score_fr on a 47x45 map: 0.38 ms bf16, 0.89 ms fp32, 1.67 ms fp32 from the
    bf16 trunk output). ``benchmarks/precision_traps.py`` probes the crash in a child process.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        with fp32_region(x):
            return super().forward(widened(x))


class BilinearUpsample(nn.Module):
    """The FCN's fixed bilinear upsampler as a depthwise transposed convolution, in fp32.

    Caffe writes it as a C x C ``Deconvolution`` whose weight is zero off the diagonal. As a
    dense layer it costs C times the work, and under bf16 autocast oneDNN runs the large
    kernels on a slow path: forward + backward of the k64 s32 FCN-32s upsampler on a 19x19
    map took 1055 ms in bf16 against 21 ms in fp32 on 2 Intel Xeon AMX cores (issue 23). Per
    channel and in fp32 it took 3 ms there, and its output (the logits) is then fp32 whatever
    the autocast around it; ``benchmarks/precision_traps.py`` times it in every precision.
    Old model files with the C x C weight load through :meth:`_load_from_state_dict`.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.channels = int(channels)
        self.kernel_size = (int(kernel_size), int(kernel_size))
        self.stride = (int(stride), int(stride))
        self.weight = nn.Parameter(torch.empty(self.channels, 1, *self.kernel_size),
                                   requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        with fp32_region(x):
            x = widened(x)
            return nn.functional.conv_transpose2d(x, self.weight.to(x.dtype),
                                                  stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                "depthwise, fp32")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        key = prefix + "weight"
        weight = state_dict.get(key)
        dense = (self.channels, self.channels, *self.kernel_size)
        if isinstance(weight, Tensor) and tuple(weight.shape) == dense and self.channels > 1:
            # a model file from before the depthwise form: keep the diagonal
            state_dict = dict(state_dict)
            index = torch.arange(self.channels)
            state_dict[key] = weight[index, index].unsqueeze(1).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def bilinear_upsampler(channels: int, kernel_size: int, stride: int) -> BilinearUpsample:
    return BilinearUpsample(channels, kernel_size, stride)


def upsample_same(upsampler: BilinearUpsample, x: Tensor, height: int, width: int) -> Tensor:
    """``x`` (cell i centred on output pixel ``stride * i + (stride - 1) / 2``) upsampled by
    ``upsampler``'s stride to ``height`` x ``width``: bilinear interpolation with
    ``align_corners=False`` at every pixel, the edge cells repeated (a transposed convolution
    alone would fade the border pixels towards zero)."""
    stride = upsampler.stride[0]
    if upsampler.kernel_size[0] != 2 * stride:
        raise ValueError(f"a same-padded upsampler needs kernel 2 x stride, got "
                         f"{upsampler.kernel_size[0]} for stride {stride}")
    padded = upsampler(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"))
    return caffe_crop(padded, stride + stride // 2, height, width)


def caffe_crop(x: Tensor, offset: int, height: int, width: int) -> Tensor:
    """Caffe Crop layer: ``x[..., offset:offset + height, offset:offset + width]``."""
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise RuntimeError(f"cannot crop {height}x{width} at offset {offset} from a "
                           f"{x.shape[-2]}x{x.shape[-1]} blob")
    return x[..., offset:offset + height, offset:offset + width]
