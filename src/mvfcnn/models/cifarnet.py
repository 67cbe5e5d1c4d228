"""CIFARNet (paper §3, §4.3.1): the object-based CNN trained from scratch.

The paper describes it as "three convolutional and max-pooling layers with two fully-connected
layers ... a modified version of LeNet ... containing 431K parameters", with ReLU and dropout
added, trained on objects warped to 224x224. No published network has exactly that layout and
count: 431,080 is the parameter count of Caffe's two-conv MNIST LeNet (20/50 channels, fc 500),
while Caffe's cifar10_quick (three 5x5 convs 32/32/64, fc 64, 32x32 input) has 145,578. At 224x224
cifar10_quick's stride-2 pooling leaves a 28x28x64 map, i.e. 3.3 M parameters in fc1.

Chosen variant (the closest faithful one): cifar10_quick's convolutions (5x5, pad 2, widths
32/32/64, each followed by ReLU and 3x3 max pooling in Caffe's ceil mode) and two fully-connected
layers (fc 64 + ReLU + dropout, then the classifier), with the pooling *stride* raised from 2 to
3 so that a 224x224 object ends as a 9x9x64 map (224 -> 75 -> 25 -> 9). Parameter count at
``input_size=224`` for 4 classes: 409,828 with grey input (``in_channels=1``, what the crops
are) and 411,428 with RGB input -- within 5 % of the paper's 431 K. fc1 is sized from
``input_size`` (the paper: "we are free to choose the size of the input image"), so smaller CPU
crops give a smaller net: 64x64 -> 3x3x64 map, 114,916 parameters (grey, 4 classes).
``pool_stride=2`` gives the literal cifar10_quick (145,578 at 32x32 RGB, 10 classes).

Initialisation (``init``): "paper" (default) is §4.3.1 -- Gaussian weights with std 1e-4 in the
first convolution and 1e-2 in every other layer, zero biases (Caffe's cifar10 fillers), meant for
Caffe-style input (0..255 grey values minus the training mean) and tens of thousands of SGD
iterations. "torch" is PyTorch's default init, meant for standardised input; it is the one that
learns within the few hundred steps of a CPU demo (with the paper init the loss stays at ln K for
hundreds of steps at any learning rate we tried on the synthetic data).

The input normalisation is part of the model (buffers ``input_mean``, ``input_scale``, set with
:meth:`CIFARNet.set_input_normalization` from the training crops), so a saved model takes raw
0..255 grey crops (any dtype) and needs no side information.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mvfcnn.models.io import register_arch, registered_archs

#: the paper's Gaussian init (§4.3.1): first convolution, every later layer
INIT_STD_FIRST = 1e-4
INIT_STD_REST = 1e-2
INITS = ("paper", "torch")


def pooled_size(size: int, *, pool_stride: int, blocks: int = 3, kernel: int = 3) -> int:
    """Side of the feature map after ``blocks`` ceil-mode max-pools (convs keep the size)."""
    for _ in range(blocks):
        if size < 1:
            break
        out = math.ceil((size - kernel) / pool_stride) + 1 if size >= kernel else 1
        if (out - 1) * pool_stride >= size:  # PyTorch/Caffe: last window must start inside
            out -= 1
        size = out
    return size


class CIFARNet(nn.Module):
    """Three conv(5x5)+ReLU+max-pool blocks, then fc+ReLU+dropout and a linear classifier."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_size: int = 224,
        in_channels: int = 1,
        widths: tuple[int, int, int] = (32, 32, 64),
        fc_width: int = 64,
        pool_stride: int = 3,
        dropout: float = 0.5,
        init: str = "paper",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        side = pooled_size(input_size, pool_stride=pool_stride)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for three pooling layers")
        self.input_size = input_size
        self.num_classes = num_classes
        self.init = init
        self.register_buffer("input_mean", torch.zeros(()))
        self.register_buffer("input_scale", torch.ones(()))
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=5, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=pool_stride, ceil_mode=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """"paper": std 1e-4 for the first conv, 1e-2 elsewhere, zero bias; "torch": defaults."""
        weighted = [m for m in self.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        for index, module in enumerate(weighted):
            if self.init == "torch":
                module.reset_parameters()
                continue
            nn.init.normal_(module.weight, std=INIT_STD_FIRST if index == 0 else INIT_STD_REST)
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def set_input_normalization(self, mean: float, scale: float = 1.0) -> None:
        """Inputs become ``(x - mean) * scale`` (x in 0..255 grey values)."""
        self.input_mean.fill_(float(mean))
        self.input_scale.fill_(float(scale))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"CIFARNet was built for {self.input_size}x{self.input_size} input, "
                             f"got {tuple(x.shape[-2:])}")
        x = (x.to(self.input_mean.dtype) - self.input_mean) * self.input_scale
        return self.classifier(self.features(x))


def cifarnet(**kwargs: Any) -> CIFARNet:
    """CIFARNet for ``input_size`` x ``input_size`` crops (see the module docstring); the
    registered builder of model files, taking :class:`CIFARNet`'s keyword arguments."""
    return CIFARNet(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register() -> None:
    if "cifarnet" not in registered_archs():
        register_arch("cifarnet", cifarnet)


_register()


@torch.no_grad()
def _demo() -> None:  # pragma: no cover - `python -m mvfcnn.models.cifarnet` prints the counts
    for size, channels in ((224, 1), (224, 3), (64, 1), (32, 1)):
        model = cifarnet(num_classes=4, input_size=size, in_channels=channels)
        print(f"input {size}x{size}x{channels}: {count_parameters(model):,} parameters")


if __name__ == "__main__":  # pragma: no cover
    _demo()
