"""Tests for mvfcnn.models: trunk layout, FCN crops/sizes, stage init, weights, files, inputs.

Kept fast for a shared 2-core CPU: shape sweeps run on the ``meta`` device (no compute), real
forwards use a width-1/16 trunk except one small forward of the real VGG16 layout.
"""

from __future__ import annotations

import copy
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from mvfcnn.core.errors import InputError
from mvfcnn.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STAGES,
    VGGTrunk,
    bilinear_kernel,
    build_fcn,
    fcn8s,
    fcn8s_from,
    fcn16s_from,
    fcn32s,
    imagenet_cache_path,
    imagenet_state_dict,
    init_from_parent,
    load_model,
    normalize_batch,
    register_arch,
    save_model,
    to_input_tensor,
    trunk_state_from_torchvision,
)
from mvfcnn.models.fcn import CROPS, UPSAMPLERS, fcn2s_from, fcn4s_from
from mvfcnn.models.fcn_layers import (
    BilinearUpsample,
    ScoreConv,
    bilinear_filter,
    bilinear_upsampler,
    caffe_crop,
    upsample_same,
)
from mvfcnn.models.vgg_trunk import CONV_INDICES

SMALL = {"width": 1 / 16, "fc_channels": 16}  # channels 4, 8, 16, 32, 32


def small(stage: str, num_classes: int = 3, **kwargs) -> nn.Module:
    return build_fcn(stage, num_classes=num_classes, **SMALL, **kwargs).eval()


def randomize_scores(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make the zero-initialised score layers non-zero (a 'trained-ish' model)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_children():
            if name.startswith("score_"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen))
    return model


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails at once, as offline (never touch the network in tests)."""
    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    return calls


# --------------------------------------------------------------------------- trunk layout


@pytest.mark.parametrize(
    ("width", "expected"),
    [(1.0, [64, 128, 256, 512, 512]), (0.25, [16, 32, 64, 128, 128]),
     (1 / 16, [4, 8, 16, 32, 32]), (0.001, [1, 1, 1, 1, 1])],
)
def test_trunk_channel_widths(width, expected):
    with torch.device("meta"):
        trunk = VGGTrunk(width=width, fc_channels=8)
    convs = [trunk.features[i] for i in CONV_INDICES]
    block_out = [convs[i].out_channels for i in (1, 3, 6, 9, 12)]
    assert block_out == expected
    assert trunk.features[0].padding == (100, 100)
    assert all(trunk.features[i].padding == (1, 1) for i in CONV_INDICES[1:])
    pools = [m for m in trunk.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.ceil_mode for p in pools)
    assert trunk.pool_channels == tuple(expected)
    assert trunk.fc6.kernel_size == (7, 7) and trunk.fc7.kernel_size == (1, 1)
    assert isinstance(trunk.drop6, nn.Dropout2d) and trunk.drop6.p == 0.5


def test_real_layout_matches_torchvision_vgg16_names_shapes_and_count():
    with torch.device("meta"):
        tv = torchvision.models.vgg16()
        model = fcn32s(num_classes=5)
    mapped = trunk_state_from_torchvision(tv.state_dict())
    trunk_state = model.trunk.state_dict()
    assert set(mapped) == set(trunk_state)
    for key, tensor in trunk_state.items():
        assert mapped[key].shape == tensor.shape, key
    tv_comparable = sum(p.numel() for n, p in tv.named_parameters()
                        if not n.startswith("classifier.6"))
    assert sum(p.numel() for p in model.trunk.parameters()) == tv_comparable == 134_260_544


# --------------------------------------------------------------------------- sizes and crops


@pytest.mark.parametrize("padding", ["caffe", "same"])
def test_output_size_equals_input_for_every_size_meta(padding):
    """H takes every size 32..2048 and W = 2080 - H every other; trunk once, then each head."""
    with torch.device("meta"):
        models = {s: build_fcn(s, num_classes=5, width=1 / 16, fc_channels=8,
                               padding=padding).eval()
                  for s in STAGES}
    trunk = models["8s"].trunk
    wrong = []
    with torch.no_grad():
        # "same" has no crop offsets to get wrong at some size: a sample of sizes suffices
        for size in range(32, 2049) if padding == "caffe" else range(1, 2049, 11):
            features = trunk(torch.empty(1, 3, size, 2080 - size, device="meta"), early=True)
            for stage, model in models.items():
                out = model.head(features, size, 2080 - size)
                if tuple(out.shape) != (1, 5, size, 2080 - size):
                    wrong.append((stage, size, tuple(out.shape)))
    assert not wrong
    with torch.no_grad():  # and forward() is trunk + head
        assert models["16s"](torch.empty(2, 3, 31, 2048, device="meta")).shape == (2, 5, 31, 2048)


@pytest.mark.parametrize("padding", ["caffe", "same"])
@pytest.mark.parametrize("size", [1, 32, 33, 63, 100, 224, 257])
def test_cpu_forward_sizes_and_fresh_model_outputs_zeros(size, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size + 7)
    with torch.no_grad():
        for stage in STAGES:
            out = small(stage, num_classes=4, padding=padding)(x)
            assert out.shape == (2, 4, size, size + 7)
            assert out.dtype == torch.float32
            assert torch.count_nonzero(out) == 0  # zero score layers -> all-zero scores


# --------------------------------------------------------------------------- upsamplers


def test_bilinear_kernel_k4_exact_per_channel():
    weight = bilinear_kernel(3, 4)
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert weight.shape == (3, 1, 4, 4)
    for i in range(3):
        assert torch.equal(weight[i, 0], torch.outer(ramp, ramp))


def dense_caffe_upsampler(channels, kernel_size, stride):
    """The Caffe FCN's C x C deconvolution with the bilinear kernel on its diagonal."""
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=stride, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        for c in range(channels):
            layer.weight[c, c] = bilinear_filter(kernel_size)
    return layer.requires_grad_(False)


@pytest.mark.parametrize("name", list(UPSAMPLERS))
def test_depthwise_upsampler_equals_the_dense_caffe_deconvolution(name):
    kernel_size, stride = UPSAMPLERS[name]
    layer = bilinear_upsampler(5, kernel_size, stride)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(5, kernel_size))
    x = torch.randn(2, 5, 11, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dense_caffe_upsampler(5, kernel_size, stride)(x)
        got = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = layer(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    scale = float(expected.max() - expected.min())
    assert float((got - expected).abs().max()) <= 1e-5 * scale
    assert under_autocast.dtype == torch.float32  # computed in fp32 whatever the autocast
    torch.testing.assert_close(under_autocast, got, rtol=0, atol=0)


@pytest.mark.parametrize("stage", STAGES)
def test_logits_equal_the_dense_caffe_upsamplers(stage):
    """Every stage's logits, before and after the depthwise upsamplers, within fp32 rounding."""
    model = randomize_scores(small(stage, num_classes=4)).eval()
    dense = copy.deepcopy(model)
    for name in [n for n, _ in dense.named_children() if n in UPSAMPLERS]:
        setattr(dense, name, dense_caffe_upsampler(4, *UPSAMPLERS[name]))
    for size in [(37, 41), (64, 64), (97, 130)]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
        with torch.no_grad():
            new, old = model(x), dense(x)
        assert new.shape == old.shape == (1, 4, *size)
        scale = float(old.max() - old.min())
        assert float((new - old).abs().max()) <= 1e-5 * scale, (stage, size)


def test_model_file_with_dense_upsampler_weights_loads(tmp_path):
    """A model saved before the depthwise form (C x C upsampler weights) still loads."""
    model = randomize_scores(small("8s", num_classes=3)).eval()
    state = model.state_dict()
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        state[f"{name}.weight"] = dense_caffe_upsampler(3, *UPSAMPLERS[name]).weight.detach()
    fresh = small("8s", num_classes=3)
    fresh.load_state_dict(state, strict=True)
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert torch.equal(getattr(fresh, name).weight, getattr(model, name).weight)
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)


def test_upsamplers_frozen_bias_free_bilinear_and_score_layers_zero():
    for stage in STAGES:
        model = small(stage, num_classes=3)
        ups = {n: m for n, m in model.named_children() if n.startswith("upscore")}
        assert ups
        for name, layer in ups.items():
            assert isinstance(layer, BilinearUpsample)
            assert layer.weight.shape[1] == 1  # depthwise
            assert (layer.kernel_size[0], layer.stride[0]) == UPSAMPLERS[name]
            assert not layer.weight.requires_grad
            assert torch.equal(layer.weight, bilinear_kernel(3, layer.kernel_size[0]))
            assert not any(n.startswith(name) for n in trainable(model))
        scores = [m for n, m in model.named_children() if n.startswith("score_")]
        assert len(scores) == {"32s": 1, "16s": 2, "8s": 3, "4s": 4, "2s": 5}[stage]
        assert all(torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0
                   for m in scores)


def test_frozen_upsamplers_get_no_gradient():
    model = randomize_scores(small("8s")).train()
    model(torch.randn(1, 3, 40, 40)).sum().backward()
    assert model.upscore8.weight.grad is None and model.upscore2.weight.grad is None
    assert model.score_pool3.weight.grad is not None
    assert model.trunk.features[0].weight.grad is not None


def test_stage_upsampling_chains_align_on_affine_score_maps():
    """The Caffe crop offsets put all three stages' upsampled maps on the same pixel grid."""

    def up(name):
        layer = bilinear_upsampler(1, *UPSAMPLERS[name])
        with torch.no_grad():
            layer.weight.copy_(bilinear_kernel(1, layer.kernel_size[0]))
        return layer

    n = 12
    yy, xx = torch.meshgrid(torch.arange(float(n)), torch.arange(float(n)), indexing="ij")
    coarse = (0.7 * yy - 0.3 * xx + 2.0)[None, None]
    size = 32 * n - 40
    with torch.no_grad():
        p32 = caffe_crop(up("upscore")(coarse), CROPS["upscore"], size, size)
        p16 = caffe_crop(up("upscore16")(up("upscore2")(coarse)), CROPS["upscore16"], size, size)
        p8 = caffe_crop(up("upscore8")(up("upscore_pool4")(up("upscore2")(coarse))),
                   CROPS["upscore8"], size, size)
    inner = (slice(None), slice(None), slice(48, -48), slice(48, -48))
    torch.testing.assert_close(p16[inner], p32[inner], rtol=0, atol=1e-5)
    torch.testing.assert_close(p8[inner], p32[inner], rtol=0, atol=1e-5)


@pytest.mark.parametrize("stride", [2, 4, 8, 16, 32])
def test_same_upsampling_is_exact_bilinear_interpolation(stride):
    """fcn.padding same: each upsampler equals F.interpolate(bilinear, align_corners=False) at
    every pixel, the edges included, whatever the output size it is cropped to."""
    layer = bilinear_upsampler(3, 2 * stride, stride)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(3, 2 * stride))
    coarse = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(stride))
    expected = nn.functional.interpolate(coarse, scale_factor=stride, mode="bilinear",
                                         align_corners=False)
    torch.testing.assert_close(upsample_same(layer, coarse, 5 * stride, 7 * stride), expected,
                               rtol=0, atol=1e-5)
    cropped = upsample_same(layer, coarse, 5 * stride - stride // 2, 6 * stride + 1)
    torch.testing.assert_close(cropped, expected[..., :5 * stride - stride // 2, :6 * stride + 1],
                               rtol=0, atol=1e-5)


def test_same_padding_is_a_layout_kept_by_model_files_and_children(tmp_path):
    """A same-padded model: conv1_1 pads 1, fc6 pads 3, the padding survives save/load and
    staging, and the trunk weights are those of the Caffe layout (same shapes)."""
    model = randomize_scores(small("8s", padding="same"))
    assert model.trunk.features[0].padding == (1, 1) and model.trunk.fc6.padding == (3, 3)
    assert model.kwargs["padding"] == "same" and "padding" not in small("8s").kwargs
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in small("8s").state_dict().items()}
    save_model(tmp_path / "m.pt", model, arch=model.arch, kwargs=model.kwargs)
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.padding == "same"
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        assert fcn4s_from(model).padding == "same"
    with pytest.raises(InputError, match="unknown FCN padding 'valid'"):
        small("8s", padding="valid")


@pytest.mark.parametrize(("stage", "skip"), [("8s", "score_pool3"), ("4s", "score_pool3"),
                                             ("4s", "score_pool2"), ("2s", "score_pool2"),
                                             ("2s", "score_pool1")])
@pytest.mark.parametrize("size", [(150, 161), (176, 176)])
@pytest.mark.parametrize("padding", ["caffe", "same"])
def test_skip_outputs_centre_on_their_own_input_pixel(stage, skip, size, padding):
    """Each output pixel of a skip path is centred on the input pixel it labels.

    With average pools (max pooling's geometry), positive weights and a positive input the
    network is linear and every receptive field symmetric, so the centroid of d out[y, x] /
    d input is where the crops put it: exactly (y, x) when they are right, a whole pixel or more
    off when one crop is wrong."""
    torch.manual_seed(0)
    model = small(stage, num_classes=1, padding=padding).eval()
    trunk = model.trunk
    with torch.no_grad():
        for index, layer in enumerate(trunk.features):
            if isinstance(layer, nn.MaxPool2d):
                trunk.features[index] = nn.AvgPool2d(2, 2, ceil_mode=True)
            elif isinstance(layer, nn.Conv2d):
                layer.weight.fill_(1.0 / layer.weight[0].numel())
                layer.bias.zero_()
        getattr(model, skip).weight.fill_(1.0)
    x = torch.ones(1, 3, *size, requires_grad=True)
    out = model(x)
    height, width = size
    for y, xx in [(height // 2, width // 2), (height // 2 - 3, width // 2 + 2),
                  (height // 2 + 5, width // 2 - 6)]:
        (grad,) = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
        weight = grad[0].sum(0)
        assert float(weight.min()) >= 0 and float(weight.sum()) > 0
        assert float(weight[0].sum() + weight[-1].sum() + weight[:, 0].sum()
                     + weight[:, -1].sum()) == 0, "receptive field reaches the image border"
        rows = torch.arange(height, dtype=torch.float64)[:, None]
        cols = torch.arange(width, dtype=torch.float64)[None, :]
        w = weight.double() / weight.double().sum()
        assert float((w * rows).sum()) == pytest.approx(y, abs=1e-3), (stage, skip, y, xx)
        assert float((w * cols).sum()) == pytest.approx(xx, abs=1e-3), (stage, skip, y, xx)


# --------------------------------------------------------------------------- stage init


def test_init_from_parent_copies_matching_and_keeps_new_layers_zero():
    parent = randomize_scores(small("32s"), seed=1)
    child = small("16s")
    copied = init_from_parent(child, parent)
    assert set(copied) == {k for k in parent.state_dict() if k.startswith("trunk.")} | {
        "score_fr.weight", "score_fr.bias"}
    for key in copied:
        assert torch.equal(child.state_dict()[key], parent.state_dict()[key])
    assert torch.count_nonzero(child.score_pool4.weight) == 0

    randomize_scores(child, seed=2)  # trained-ish 16s: its score_pool4 must pass on to the 8s
    grandchild = fcn8s_from(child)
    assert grandchild.stage == "8s" and grandchild.kwargs == child.kwargs
    assert torch.equal(grandchild.score_pool4.weight, child.score_pool4.weight)
    assert torch.count_nonzero(grandchild.score_pool3.weight) == 0


@pytest.mark.parametrize("padding", ["caffe", "same"])
def test_fresh_child_reproduces_parent(padding):
    """A new stage starts from its parent's prediction (zero skip scores), in both paddings.

    Exact wherever the coarse score map is locally affine (tested with a constant map: identical
    away from the top/left border, where the transposed convolutions taper), and the same up to
    the smoothing of bilinear-upsampling twice vs. once for a rough random map (measured: 2-5 %
    relative L2 difference, 98-99 % identical argmax).
    """
    torch.manual_seed(0)
    x = torch.randn(2, 3, 100, 129)
    # constant coarse score map: score_fr weight 0, bias != 0
    parent = small("32s", padding=padding)
    with torch.no_grad():
        parent.score_fr.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    child = fcn16s_from(parent).eval()
    grandchild = fcn8s_from(child).eval()
    fcn4s = fcn4s_from(grandchild).eval()
    fcn2s = fcn2s_from(fcn4s).eval()
    assert (fcn4s.stage, fcn2s.stage) == ("4s", "2s")
    with torch.no_grad():
        outs = [m(x) for m in (parent, child, grandchild, fcn4s, fcn2s)]
    inner = (slice(None), slice(None), slice(32, -16), slice(32, -16))
    for out in outs[1:]:
        torch.testing.assert_close(out[inner], outs[0][inner], rtol=0, atol=1e-5)
        assert torch.equal(out.argmax(1), outs[0].argmax(1))

    # random ("trained-ish") coarse score map
    parent = randomize_scores(small("32s", padding=padding), seed=3)
    child = fcn16s_from(parent).eval()
    randomize_scores(child, seed=4)  # trained 16s: non-zero score_pool4
    grandchild = fcn8s_from(child).eval()
    with torch.no_grad():
        p, c, g = parent(x), fcn16s_from(parent).eval()(x), grandchild(x)
        c_trained = child(x)
    for new, old in ((c, p), (g, c_trained)):
        assert ((new - old).norm() / old.norm()) < 0.1
        assert (new.argmax(1) == old.argmax(1)).float().mean() > 0.95  # measured 0.98-0.99


# --------------------------------------------------------------------------- pretrained trunks


def _torchvision_style(trunk_state: dict[str, torch.Tensor], num_classes: int = 10) -> dict:
    """A torchvision-VGG16-format state dict (features.N, classifier.0/3/6) from trunk tensors."""
    out = {k: v.clone() for k, v in trunk_state.items() if k.startswith("features.")}
    fc6, fc7 = trunk_state["fc6.weight"], trunk_state["fc7.weight"]
    out["classifier.0.weight"] = fc6.reshape(fc6.shape[0], -1).clone()
    out["classifier.0.bias"] = trunk_state["fc6.bias"].clone()
    out["classifier.3.weight"] = fc7.reshape(fc7.shape[0], -1).clone()
    out["classifier.3.bias"] = trunk_state["fc7.bias"].clone()
    out["classifier.6.weight"] = torch.randn(num_classes, fc7.shape[0])
    out["classifier.6.bias"] = torch.zeros(num_classes)
    return out


def test_pretrained_path_loads_trunk_from_state_dicts_and_model_files(tmp_path):
    torch.manual_seed(0)
    source = randomize_scores(small("32s"))
    files = {"fcn_state.pt": source.state_dict(),
             "trunk_state.pt": source.trunk.state_dict(),
             "torchvision.pt": _torchvision_style(source.trunk.state_dict()),
             "checkpoint.pt": {"state_dict": source.state_dict(), "iteration": 3}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_model(tmp_path / "model.pt", source, arch="fcn32s", kwargs=source.kwargs)
    for name in [*files, "model.pt"]:
        model = fcn8s(num_classes=3, **SMALL, pretrained=tmp_path / name)
        for key, value in source.trunk.state_dict().items():
            assert torch.equal(model.trunk.state_dict()[key], value), (name, key)
        assert torch.count_nonzero(model.score_fr.weight) == 0  # only the trunk is loaded
        assert torch.count_nonzero(model.score_pool3.bias) == 0
        assert torch.equal(model.upscore8.weight, bilinear_kernel(3, 16))
        assert not model.upscore8.weight.requires_grad and model.score_fr.weight.requires_grad


def test_pretrained_path_errors_name_file_and_first_bad_key(tmp_path):
    path = tmp_path / "narrow.pt"
    torch.save(small("32s").state_dict(), path)
    with pytest.raises(InputError) as err:
        fcn32s(num_classes=3, width=1 / 8, fc_channels=16, pretrained=str(path))
    message = str(err.value)
    assert "narrow.pt" in message and "'features.0.weight'" in message
    assert "(4, 3, 3, 3)" in message and "(8, 3, 3, 3)" in message

    partial = {k: v for k, v in small("32s").state_dict().items() if "fc7" not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=r"partial\.pt.*missing trunk key 'fc7.weight'"):
        fcn32s(num_classes=3, **SMALL, pretrained=tmp_path / "partial.pt")

    with pytest.raises(InputError, match="missing.pt.*not found"):
        fcn32s(num_classes=3, **SMALL, pretrained=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="junk.pt.*cannot read"):
        fcn32s(num_classes=3, **SMALL, pretrained=tmp_path / "junk.pt")
    torch.save({"head.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt.*no VGG trunk"):
        fcn32s(num_classes=3, **SMALL, pretrained=tmp_path / "other.pt")


# --------------------------------------------------------------------------- ImageNet weights


def test_imagenet_needs_real_layout(no_download):
    with pytest.raises(InputError, match=r"width 1\.0, fc_channels 4096"):
        fcn32s(num_classes=3, width=0.25, fc_channels=512, pretrained="imagenet")
    assert not no_download


@pytest.mark.parametrize(("arch", "filename"),
                         [("vgg16", "vgg16-397923af.pth"), ("vgg19", "vgg19-dcbb9e9d.pth")])
def test_imagenet_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch, no_download,
                                                           arch, filename):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    assert imagenet_cache_path(arch) == checkpoints / filename
    with pytest.raises(InputError) as err:
        imagenet_state_dict(arch, progress=False)
    message = str(err.value)
    assert message.startswith(f"ImageNet weights for {arch} not found and cannot be downloaded")
    assert f"place {filename} (from https://download.pytorch.org/models/{filename})" in message
    assert f"in {checkpoints}, or set pretrained: none / a path" in message
    assert len(no_download) == 1


def test_imagenet_from_cache_into_real_layout(tmp_path, monkeypatch, no_download):
    """Cached file (a random torchvision vgg16 under the official name) -> fc6/fc7 reshaped,
    then one forward of the real VGG16 layout."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items()}
    state = {k: torch.empty(s).uniform_(-0.01, 0.01) for k, s in shapes.items()}
    cached = imagenet_cache_path("vgg16")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    # the real VGG16 layout (width 1.0, fc 4096, ~134 M parameters)
    model = fcn8s(num_classes=2, pretrained="imagenet", progress=False).eval()
    assert not no_download
    trunk = model.trunk
    assert torch.equal(trunk.fc6.weight, state["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(trunk.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(trunk.fc7.weight, state["classifier.3.weight"].view(4096, 4096, 1, 1))
    for index in CONV_INDICES:
        assert torch.equal(trunk.features[index].weight, state[f"features.{index}.weight"])
    randomize_scores(model)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all() and out.abs().sum() > 0


# --------------------------------------------------------------------------- model files


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomize_scores(small("8s", num_classes=4, dropout=0.3))
    path = tmp_path / "sub" / "fcn8s.pt"
    extra = {"iteration": 150, "loss": [0.5, 0.25], "classes": ["a", "b"], "lr": 1e-4}
    save_model(path, model, arch="fcn8s", kwargs={**model.kwargs, "pretrained": "imagenet"},
               extra=extra)
    assert [p.name for p in path.parent.iterdir()] == ["fcn8s.pt"]  # no temp files left
    loaded, meta = load_model(path)
    assert not loaded.training and type(loaded) is type(model)
    assert meta["arch"] == "fcn8s" and meta["extra"] == extra
    assert meta["kwargs"] == {"num_classes": 4, "width": 1 / 16, "fc_channels": 16,
                              "dropout": 0.3}  # build-time "pretrained" is not stored
    assert loaded.trunk.drop6.p == 0.3
    x = torch.randn(1, 3, 45, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.upscore8.weight.requires_grad


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="gone.pt.*not found"):
        load_model(tmp_path / "gone.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="junk.pt.*cannot read"):
        load_model(tmp_path / "junk.pt")
    torch.save(small("32s").state_dict(), tmp_path / "bare.pt")
    with pytest.raises(InputError, match="bare.pt.*not an mvfcnn model file"):
        load_model(tmp_path / "bare.pt")
    model = small("32s")
    save_model(tmp_path / "m.pt", model, arch="fcn32s", kwargs=model.kwargs)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**payload, "arch": "nope"}, tmp_path / "arch.pt")
    with pytest.raises(InputError, match="arch.pt.*unknown architecture 'nope'"):
        load_model(tmp_path / "arch.pt")
    torch.save({**payload, "kwargs": {**payload["kwargs"], "num_classes": 5}},
               tmp_path / "shape.pt")
    with pytest.raises(InputError, match=r"shape.pt.*'score_fr.weight' has shape \(3, 16, 1, 1\)"):
        load_model(tmp_path / "shape.pt")
    with pytest.raises(TypeError, match="numpy|float64|ndarray"):
        save_model(tmp_path / "x.pt", model, arch="fcn32s", kwargs=model.kwargs,
                   extra={"loss": np.zeros(3)})
    assert not (tmp_path / "x.pt").exists()


def test_register_arch_extends_load_model(tmp_path):
    def tiny(*, num_classes: int) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1)

    register_arch("tiny_test_net", tiny, replace=True)
    model = tiny(num_classes=2)
    save_model(tmp_path / "t.pt", model, arch="tiny_test_net", kwargs={"num_classes": 2})
    loaded, meta = load_model(tmp_path / "t.pt")
    assert torch.equal(loaded.weight, model.weight) and meta["arch"] == "tiny_test_net"
    with pytest.raises(ValueError, match="already registered"):
        register_arch("fcn8s", tiny)


# --------------------------------------------------------------------------- input normalisation


def test_to_input_tensor_values():
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    out = to_input_tensor(gray)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    expected = (gray.astype(np.float64)[None] / 255 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(to_input_tensor(gray.astype(np.uint16) * 257).numpy(), expected,
                               atol=1e-6)
    np.testing.assert_allclose(to_input_tensor(gray / 255.0).numpy(), expected, atol=1e-6)

    rgba = np.zeros((1, 1, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 51, 7)
    out = to_input_tensor(rgba)[:, 0, 0].numpy()
    np.testing.assert_allclose(out, (np.array([1.0, 0.0, 0.2]) - mean) / std, atol=1e-6)


def test_normalize_batch_matches_and_keeps_layout():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 9, 11), dtype=np.uint8)
    expected = torch.stack([to_input_tensor(im) for im in images])
    batch = torch.from_numpy(images)[:, None]
    torch.testing.assert_close(normalize_batch(batch), expected, rtol=0, atol=1e-6)
    rgb = torch.from_numpy(rng.integers(0, 256, (2, 3, 9, 11), dtype=np.uint8))
    channels_last = rgb.contiguous(memory_format=torch.channels_last)
    out = normalize_batch(channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, normalize_batch(rgb), rtol=0, atol=0)
    torch.testing.assert_close(normalize_batch(rgb.float() / 255), normalize_batch(rgb))
    assert normalize_batch(rgb, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="expected"):
        normalize_batch(rgb[:, :2])


# --------------------------------------------------------------------------- performance modes


@pytest.mark.parametrize("stage", STAGES)
def test_channels_last_and_bf16_autocast(stage):
    torch.manual_seed(0)
    model = randomize_scores(small(stage, num_classes=3))
    x = normalize_batch(torch.randint(0, 256, (2, 1, 67, 75), dtype=torch.uint8))
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x_cl), reference, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model_cl(x_cl)
    assert fast.shape == reference.shape and torch.isfinite(fast).all()
    assert ((fast.float() - reference).norm() / reference.norm()) < 0.05
    model_cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model_cl(x_cl).float(),
                                           torch.randint(0, 3, (2, 67, 75)))
    loss.backward()
    assert all(p.grad is not None for p in trainable(model_cl).values())
    assert all(m.weight.grad is None for n, m in model_cl.named_children()
               if n.startswith("upscore"))


@pytest.mark.parametrize("stage", STAGES)
def test_head_computes_in_fp32_under_bf16_autocast(stage):
    """Score layers and upsamplers leave autocast: bf16 there was a slow path (the k64
    upsampler) or a heap corruption (a 4096 -> 5 score layer's weight gradient) on Intel AMX."""
    model = randomize_scores(small(stage, num_classes=4)).train()
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = out.dtype
        return hook

    for name, module in model.named_children():
        if name.startswith(("score_", "upscore")):
            module.register_forward_hook(record(name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(1, 3, 48, 52))
    assert logits.dtype == torch.float32
    assert seen and set(seen.values()) == {torch.float32}, seen
    assert all(isinstance(getattr(model, n), ScoreConv) for n in seen if n.startswith("score_"))
    logits.sum().backward()
    assert model.score_fr.weight.grad.dtype == torch.float32
    # inference: score layers keep bf16 (fastest there, no weight gradient to break)
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.eval()(torch.randn(1, 3, 48, 52)).dtype == torch.float32
    assert {seen[n] for n in seen if n.startswith("score_")} == {torch.bfloat16}
    assert {seen[n] for n in seen if n.startswith("upscore")} == {torch.float32}


@pytest.mark.parametrize("stage", ["8s", "4s"])
def test_fused_conv_relu_scores_equal_the_plain_model_and_share_its_weights(stage):
    """predict_image's CPU network: every VGG conv + ReLU as one oneDNN op, same scores."""
    from mvfcnn.models.vgg_trunk import ConvReLU, fuse_conv_relu

    model = randomize_scores(small(stage, num_classes=4)).eval()
    model = model.to(memory_format=torch.channels_last)
    fused = fuse_conv_relu(model)
    assert fused is not model and fused.trunk is not model.trunk
    assert sum(isinstance(m, ConvReLU) for m in fused.modules()) == 15  # 13 convs + fc6 + fc7
    assert not any(isinstance(m, ConvReLU) for m in model.modules())  # the model is untouched
    assert fused.trunk.fc6.conv.weight is model.trunk.fc6.weight  # shared, not copied
    x = torch.randn(2, 3, 61, 70).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, fast = model(x), fused(x)
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
        with torch.no_grad():  # a weight update reaches the fused copy (cast cache refreshed)
            model.trunk.features[0].weight.mul_(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-6)
    fused.train()
    loss = fused(x).sum()  # with gradients: the plain path, which autograd can differentiate
    loss.backward()
    assert model.trunk.features[0].weight.grad is not None
    assert fuse_conv_relu(nn.Conv2d(3, 3, 1)).__class__ is nn.Conv2d  # no VGG trunk: unchanged
