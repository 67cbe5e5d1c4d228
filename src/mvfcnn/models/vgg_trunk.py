"""The one VGG16 trunk shared by FCN-32s … 2s (and reusable by the VGG baselines).

Differences from torchvision's ``vgg16().features``, all taken from Long et al.'s Caffe FCN:

* every max-pool uses ``ceil_mode=True`` and, in the Caffe layout (``fcn.padding: caffe``, the
  paper's), ``conv1_1`` has padding 100; together with the Caffe crop offsets in
  :mod:`mvfcnn.models.fcn` this makes the output exactly the input size for every input size
  (torchvision's floor pooling breaks many sizes). With ``fcn.padding: same`` conv1_1 pads 1 and
  fc6 pads 3 (``fc6_padding``), and the FCN interpolates instead of cropping.
* fc6/fc7 are convolutions (``Conv2d(C5, fc, 7)`` valid or padded 3, ``Conv2d(fc, fc, 1)``),
  each + ReLU + Dropout2d.
* ``width`` scales every channel count (1.0 = the real VGG16), for fast CPU experiments.
* ``batch_norm`` puts a BatchNorm after every convolution (``features.N`` becomes
  ``Sequential(conv, bn)``, so every index stays put), for training from scratch: a BN-free
  13-layer VGG barely moves in the few thousand steps a CPU affords (He et al. 2019 found
  normalisation is what lets detectors train from scratch). :func:`fold_trunk_batch_norm` turns
  it back into a plain trunk with the same eval-mode outputs.

Parameter names map 1:1 onto torchvision's ``vgg16`` state dict (see
:func:`trunk_state_from_torchvision`)::

    torchvision vgg16                               VGGTrunk
    features.N.{weight,bias}, N in CONV_INDICES  -> features.N.{weight,bias}   (same N)
    classifier.0.weight (4096, 25088)            -> fc6.weight  .view(4096, 512, 7, 7)
    classifier.0.bias                            -> fc6.bias
    classifier.3.weight (4096, 4096)             -> fc7.weight  .view(4096, 4096, 1, 1)
    classifier.3.bias                            -> fc7.bias
    classifier.6 (the 1000-class ImageNet layer) -> not used

Pool outputs: pool1 = ``features[4]``, pool2 = ``features[9]``, pool3 = ``features[16]``,
pool4 = ``features[23]``, pool5 = ``features[30]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

#: VGG16 configuration ("M" = max-pool); the layer indices equal torchvision's ``features.N``.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: ``features`` indices of the 13 convolutions and of the 5 pools.
CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL_INDICES: tuple[int, ...] = (4, 9, 16, 23, 30)
POOL3, POOL4, POOL5 = POOL_INDICES[2], POOL_INDICES[3], POOL_INDICES[4]
#: conv1_1 padding of the Caffe FCN: enough context for the 7x7 fc6 on any input size.
FCN_CONV1_PADDING = 100


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a VGG layer under the ``width`` multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


class TrunkFeatures(NamedTuple):
    """Outputs of :class:`VGGTrunk`: strides 8, 16, 32 and the fc7 activation (stride 32);
    pool1 and pool2 (strides 2, 4) only when asked for (FCN-4s/2s), as they are large."""

    pool3: Tensor
    pool4: Tensor
    pool5: Tensor
    fc7: Tensor
    pool1: Tensor | None = None
    pool2: Tensor | None = None


class VGGTrunk(nn.Module):
    """VGG16 conv1_1..pool5 + convolutional fc6/fc7 (see the module docstring)."""

    def __init__(
        self,
        *,
        width: float = 1.0,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        conv1_padding: int = FCN_CONV1_PADDING,
        fc6_padding: int = 0,
        in_channels: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if fc_channels < 1:
            raise ValueError(f"fc_channels must be >= 1, got {fc_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.width = float(width)
        self.fc_channels = int(fc_channels)
        self.batch_norm = bool(batch_norm)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                continue
            out = scaled_channels(int(item), width)
            padding = conv1_padding if not layers else 1
            conv = nn.Conv2d(channels, out, kernel_size=3, padding=padding)
            block = nn.Sequential(conv, nn.BatchNorm2d(out)) if batch_norm else conv
            layers += [block, nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_channels = channels  # C5: channels of pool5
        self.fc6 = nn.Conv2d(channels, fc_channels, kernel_size=7, padding=fc6_padding)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d(dropout)
        self.reset_parameters()

    @property
    def pool_channels(self) -> tuple[int, ...]:
        """Channels of pool1 .. pool5 (the skip-layer inputs)."""
        # features[P - 2] is the last convolution before the pool at index P (conv, ReLU, pool)
        return tuple(conv_of(self.features[p - 2]).out_channels for p in POOL_INDICES)

    def reset_parameters(self) -> None:
        """Random init for training from scratch.

        He/Kaiming normal with ``fan_in`` (not torchvision's ``fan_out``): it keeps the
        activation variance constant through the 15 ReLU convolutions of this BN-free stack,
        including the 7x7 fc6 whose fan-out is 8x its fan-in, so the zero-initialised score
        layers start from O(1) features. Biases start at zero.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_pools(self, x: Tensor, taps: tuple[int, ...] = (POOL3, POOL4)
                      ) -> tuple[Tensor, ...]:
        """The outputs of the pools at feature indices ``taps``, then pool5 (default: pool3,
        pool4, pool5; strides 8, 16, 32 relative to the padded input)."""
        out: list[Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                out.append(x)
        return (*out, x)

    def forward_fc(self, pool5: Tensor) -> Tensor:
        """fc6 -> fc7 on pool5 (a valid 7x7 convolution, 6 cells smaller than pool5, unless
        built with ``fc6_padding`` 3)."""
        x = self.drop6(self.relu6(self.fc6(pool5)))
        return self.drop7(self.relu7(self.fc7(x)))

    def forward(self, x: Tensor, *, early: bool = False) -> TrunkFeatures:
        """Trunk outputs; ``early`` also keeps pool1 and pool2."""
        if early:
            pool1, pool2, pool3, pool4, pool5 = self.forward_pools(x, POOL_INDICES[:4])
            return TrunkFeatures(pool3, pool4, pool5, self.forward_fc(pool5), pool1, pool2)
        pool3, pool4, pool5 = self.forward_pools(x)
        return TrunkFeatures(pool3, pool4, pool5, self.forward_fc(pool5))


def conv_of(layer: nn.Module) -> nn.Conv2d:
    """The convolution of a ``features`` entry: the layer itself or its ``(conv, bn)`` block."""
    if isinstance(layer, nn.Sequential):
        layer = layer[0]
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"not a convolution layer: {type(layer).__name__}")
    return layer


def is_conv_block(layer: nn.Module) -> bool:
    """True for a ``features`` convolution: a plain ``Conv2d`` or a ``(conv, bn)`` block."""
    return isinstance(layer, nn.Conv2d) or (
        isinstance(layer, nn.Sequential) and len(layer) == 2
        and isinstance(layer[0], nn.Conv2d) and isinstance(layer[1], nn.BatchNorm2d))


def folded_weights(weight: Tensor, bias: Tensor | None, bn_weight: Tensor, bn_bias: Tensor,
                   running_mean: Tensor, running_var: Tensor, eps: float = 1e-5
                   ) -> tuple[Tensor, Tensor]:
    """``conv -> bn`` (eval-mode statistics) as one convolution: ``w' = w * g / s`` and
    ``b' = (b - mean) * g / s + beta`` with ``s = sqrt(var + eps)``."""
    scale = bn_weight / (running_var + eps).sqrt()
    if bias is None:
        bias = torch.zeros_like(running_mean)
    return (weight * scale.view(-1, 1, 1, 1).to(weight.dtype),
            (bias - running_mean) * scale + bn_bias)


def folded_conv(block: nn.Sequential) -> nn.Conv2d:
    """A new convolution that computes ``block`` = ``(conv, bn)`` in eval mode."""
    conv, bn = block[0], block[1]
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=True, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        weight, bias = folded_weights(conv.weight, conv.bias, bn.weight, bn.bias,
                                      bn.running_mean, bn.running_var, bn.eps)
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


def fold_trunk_batch_norm(trunk: VGGTrunk) -> VGGTrunk:
    """Fold every BatchNorm of ``trunk`` into its convolution, in place: a plain trunk with the
    same eval-mode outputs (and the state-dict names of one built without ``batch_norm``)."""
    for index, layer in enumerate(list(trunk.features)):
        if isinstance(layer, nn.Sequential):
            trunk.features[index] = folded_conv(layer)
    trunk.batch_norm = False
    return trunk


def adapt_trunk_state(state: dict[str, Tensor], *, batch_norm: bool) -> dict[str, Tensor]:
    """A trunk state dict in the layout of a trunk with or without ``batch_norm``.

    A plain state (``features.N.weight``) for a BN trunk keeps its convolutions
    (``features.N.0.*``) and starts every BatchNorm fresh (identity statistics), as one would
    fine-tune ImageNet VGG16 with added BN; a BN state for a plain trunk is folded (exact in
    eval mode, default eps). A state already in the wanted layout is returned as is.
    """
    has_bn = f"features.{CONV_INDICES[0]}.0.weight" in state
    if has_bn == batch_norm:
        return state
    out = {k: v for k, v in state.items() if not k.startswith("features.")}
    for index in CONV_INDICES:
        if batch_norm:
            weight = state.get(f"features.{index}.weight")
            if weight is None:
                return state  # let the shape/key check name what is missing
            channels = weight.shape[0]
            out[f"features.{index}.0.weight"] = weight
            out[f"features.{index}.0.bias"] = state[f"features.{index}.bias"]
            out[f"features.{index}.1.weight"] = torch.ones(channels, dtype=weight.dtype)
            out[f"features.{index}.1.bias"] = torch.zeros(channels, dtype=weight.dtype)
            out[f"features.{index}.1.running_mean"] = torch.zeros(channels, dtype=weight.dtype)
            out[f"features.{index}.1.running_var"] = torch.ones(channels, dtype=weight.dtype)
            out[f"features.{index}.1.num_batches_tracked"] = torch.tensor(0)
        else:
            key = f"features.{index}"
            try:
                weight, bias = folded_weights(
                    state[f"{key}.0.weight"], state.get(f"{key}.0.bias"), state[f"{key}.1.weight"],
                    state[f"{key}.1.bias"], state[f"{key}.1.running_mean"],
                    state[f"{key}.1.running_var"])
            except KeyError:
                return state
            out[f"{key}.weight"], out[f"{key}.bias"] = weight, bias
    return out


def trunk_state_from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename/reshape a torchvision ``vgg16`` state dict into :class:`VGGTrunk` names.

    Only the features and classifier.0/3 (fc6/fc7) are kept; the ImageNet classifier.6 is dropped.
    A missing key raises ``KeyError`` naming it.
    """
    out: dict[str, Tensor] = {}
    for index in CONV_INDICES:
        for kind in ("weight", "bias"):
            out[f"features.{index}.{kind}"] = state_dict[f"features.{index}.{kind}"]
    for fc, key in (("fc6", "classifier.0"), ("fc7", "classifier.3")):
        weight = state_dict[f"{key}.weight"]
        if fc == "fc6":
            c5 = state_dict[f"features.{CONV_INDICES[-1]}.weight"].shape[0]
            side = int(round((weight.shape[1] / c5) ** 0.5))
            weight = weight.reshape(weight.shape[0], c5, side, side)
        else:
            weight = weight.reshape(weight.shape[0], weight.shape[1], 1, 1)
        out[f"{fc}.weight"] = weight
        out[f"{fc}.bias"] = state_dict[f"{key}.bias"]
    return out


def is_torchvision_vgg_state(state_dict: dict[str, object]) -> bool:
    """True for a torchvision VGG state dict (``features.0.weight`` + ``classifier.0.weight``)."""
    return "features.0.weight" in state_dict and "classifier.0.weight" in state_dict


def _expanded_cfg() -> list[str]:
    out: list[str] = []
    for item in VGG16_CFG:
        out += ["M"] if item == "M" else ["C", "R"]
    return out


# the hand-written index tables must agree with the configuration
assert tuple(i for i, k in enumerate(_expanded_cfg()) if k == "C") == CONV_INDICES
assert tuple(i for i, k in enumerate(_expanded_cfg()) if k == "M") == POOL_INDICES


# --------------------------------------------------------------------------- CPU inference


def _pointwise_conv_available() -> bool:
    import torch

    return bool(torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


#: dtypes the fused op refused in this process (asked once, then the plain path)
_UNFUSABLE: set[object] = set()


class ConvReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN convolution with a ReLU post-op, for CPU inference.

    A separate ReLU reads and writes every activation once more: on 2 Intel Xeon AMX cores
    it took 7.3 % of an inference window (bf16, 1480x1417, ``benchmarks/layers.py``; conv1_2 at
    1680x1617: conv 198 ms + ReLU 34 ms vs 198 ms fused). With gradients, on another device,
    or where the fused op is missing, it is the plain ``relu(conv(x))``. The fused op is outside
    autocast, so it casts itself: to the autocast dtype if one is active, with the weight
    casts cached until the weights change.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self._cast: tuple[object, ...] | None = None

    def _weights(self, dtype: object) -> tuple[Tensor, Tensor | None]:
        weight, bias = self.conv.weight, self.conv.bias
        key = (dtype, weight._version, None if bias is None else bias._version)
        if self._cast is None or self._cast[0] != key:
            cast_bias = None if bias is None else bias.detach().to(dtype)
            self._cast = (key, weight.detach().to(dtype), cast_bias)
        return self._cast[1], self._cast[2]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        import torch

        conv = self.conv
        if (torch.is_grad_enabled() or x.device.type != "cpu" or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str) or not _pointwise_conv_available()):
            return nn.functional.relu(conv(x))
        dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                 else x.dtype)
        if dtype in _UNFUSABLE:
            return nn.functional.relu(conv(x))
        weight, bias = self._weights(dtype)
        try:
            return torch.ops.mkldnn._convolution_pointwise(
                x.to(dtype), weight, bias, list(conv.padding), list(conv.stride),
                list(conv.dilation), conv.groups, "relu", [None], "")
        except RuntimeError:
            # oneDNN has no kernel for this dtype here (bf16 under an AVX2 cap: "bf16 path
            # needs the cpu support avx_ne_convert or avx512bw..."); autocast's conv emulates it
            _UNFUSABLE.add(dtype)
            self._cast = None
            return nn.functional.relu(conv(x))


def fuse_conv_relu(model: nn.Module) -> nn.Module:
    """``model`` with every convolution + ReLU of its VGG trunk as one :class:`ConvReLU`.

    A shallow copy that shares every parameter with ``model`` (which is left as it is; a
    BatchNorm trunk's convolutions are folded copies, taken now); for inference only. Layer
    indices stay as they are (each fused ReLU becomes an Identity), so
    the pool taps and layer names do not move. A model without a ``trunk`` VGGTrunk is returned
    unchanged.
    """
    import copy

    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, VGGTrunk):
        return model
    layers = list(trunk.features)
    # a (conv, bn) block fuses as its folded convolution, in eval mode only
    fusable = [isinstance(layer, nn.Conv2d) or (is_conv_block(layer) and not layer.training)
               for layer in layers]
    fused_layers: list[nn.Module] = []
    for index, layer in enumerate(layers):
        after_conv = index > 0 and fusable[index - 1]
        before_relu = index + 1 < len(layers) and isinstance(layers[index + 1], nn.ReLU)
        if isinstance(layer, nn.ReLU) and after_conv:
            fused_layers.append(nn.Identity())
        elif fusable[index] and before_relu:
            fused_layers.append(ConvReLU(layer if isinstance(layer, nn.Conv2d)
                                         else folded_conv(layer)))
        else:
            fused_layers.append(layer)
    new_trunk = copy.copy(trunk)
    new_trunk._modules = dict(trunk._modules)
    new_trunk._modules.update({"features": nn.Sequential(*fused_layers),
                               "fc6": ConvReLU(trunk.fc6), "relu6": nn.Identity(),
                               "fc7": ConvReLU(trunk.fc7), "relu7": nn.Identity()})
    fused = copy.copy(model)
    fused._modules = dict(model._modules)
    fused._modules["trunk"] = new_trunk
    return fused
