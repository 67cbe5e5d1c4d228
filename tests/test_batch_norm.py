"""fcn.batch_norm: a VGG16-BN trunk for the FCN, its hand-over from pretraining, its folding for
inference and its behaviour when frozen."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mvfcnn.core.errors import InputError
from mvfcnn.models.fcn import build_fcn, init_from_parent
from mvfcnn.models.io import load_model, save_model
from mvfcnn.models.vgg_trunk import (
    CONV_INDICES,
    ConvReLU,
    VGGTrunk,
    adapt_trunk_state,
    fold_trunk_batch_norm,
    fuse_conv_relu,
)

SMALL = {"width": 0.0625, "fc_channels": 16}


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, and non-zero score layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.rand(shape, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(shape, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(shape, generator=gen) * 0.4 - 0.2)
            elif name.startswith("score_"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen))
    return model


def test_batch_norm_trunk_keeps_every_index_and_channel_count():
    plain, normed = VGGTrunk(**SMALL), VGGTrunk(**SMALL, batch_norm=True)
    assert normed.batch_norm and not plain.batch_norm
    assert normed.pool_channels == plain.pool_channels
    assert sum(isinstance(m, nn.BatchNorm2d) for m in normed.modules()) == len(CONV_INDICES)
    for index in CONV_INDICES:
        block = normed.features[index]
        assert isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d)
        assert block[0].weight.shape == plain.features[index].weight.shape
    x = torch.randn(1, 3, 48, 48)
    shapes = [tuple(t.shape) for t in plain.eval()(x)[:4]]
    assert [tuple(t.shape) for t in normed.eval()(x)[:4]] == shapes


@pytest.mark.parametrize("stage", ["32s", "8s", "4s"])
def test_fold_and_fuse_give_the_eval_scores_of_the_batch_norm_fcn(stage):
    torch.manual_seed(0)
    model = _randomize_bn(build_fcn(stage, num_classes=4, batch_norm=True, **SMALL)).eval()
    x = torch.randn(2, 3, 61, 70)
    with torch.no_grad():
        expected = model(x)
        fused = fuse_conv_relu(model)
        assert sum(isinstance(m, ConvReLU) for m in fused.modules()) == 15
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.trunk.modules())
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)
        folded = copy.deepcopy(model)
        fold_trunk_batch_norm(folded.trunk)
        assert not folded.trunk.batch_norm
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)
        # the folded state is the plain layout: a plain FCN loads it strictly
        plain = build_fcn(stage, num_classes=4, **SMALL)
        plain.load_state_dict(folded.state_dict(), strict=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # model left as it was
    # in training mode a BatchNorm uses batch statistics: nothing is folded
    train_fused = fuse_conv_relu(copy.deepcopy(model).train())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in train_fused.modules()) == len(CONV_INDICES)


def test_model_files_rebuild_the_batch_norm_fcn_and_old_files_stay_plain(tmp_path):
    model = _randomize_bn(build_fcn("16s", num_classes=3, batch_norm=True, **SMALL)).eval()
    save_model(tmp_path / "bn.pt", model, arch=model.arch, kwargs=model.kwargs)
    loaded, meta = load_model(tmp_path / "bn.pt")
    assert meta["kwargs"]["batch_norm"] is True and loaded.trunk.batch_norm
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    plain = build_fcn("16s", num_classes=3, **SMALL)
    assert "batch_norm" not in plain.kwargs  # files of the paper's FCN keep their kwargs
    child = build_fcn("8s", num_classes=3, batch_norm=True, **SMALL)
    copied = init_from_parent(child, model)
    assert "trunk.features.0.1.running_var" in copied


def test_plain_trunks_load_into_batch_norm_fcns_and_back(tmp_path):
    """An ImageNet-like plain trunk keeps its convolutions under fresh BatchNorms; a BN trunk
    file loads into the paper's plain FCN folded."""
    torch.manual_seed(1)
    plain = build_fcn("32s", num_classes=3, **SMALL)
    torch.save({f"trunk.{k}": v for k, v in plain.trunk.state_dict().items()}, tmp_path / "p.pt")
    normed = build_fcn("32s", num_classes=3, batch_norm=True, pretrained=str(tmp_path / "p.pt"),
                       **SMALL)
    for index in CONV_INDICES:
        assert torch.equal(normed.trunk.features[index][0].weight,
                           plain.trunk.features[index].weight)
        bn = normed.trunk.features[index][1]
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    _randomize_bn(normed).eval()
    torch.save(normed.state_dict(), tmp_path / "bn.pt")
    back = build_fcn("32s", num_classes=3, pretrained=str(tmp_path / "bn.pt"), **SMALL).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        trunk_out = normed.trunk(x)
        torch.testing.assert_close(back.trunk(x).fc7, trunk_out.fc7, rtol=1e-4, atol=1e-4)
    state = adapt_trunk_state(plain.trunk.state_dict(), batch_norm=False)
    assert state is not None and "features.0.weight" in state


def test_a_trunk_file_of_the_wrong_width_is_named_with_batch_norm_too(tmp_path):
    other = build_fcn("32s", num_classes=3, width=0.125, fc_channels=16)
    torch.save(other.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(InputError, match="shape mismatch") as err:
        build_fcn("32s", num_classes=3, batch_norm=True, pretrained=str(tmp_path / "wide.pt"),
                  **SMALL)
    assert "wide.pt" in str(err.value)


def test_frozen_batch_norm_keeps_its_statistics_and_later_ones_learn():
    from mvfcnn.fcn.losses import make_optimizer, pixel_loss
    from mvfcnn.fcn.stage_model import freeze_trunk
    from mvfcnn.models.vgg_trunk import POOL_INDICES

    torch.manual_seed(0)
    model = freeze_trunk(build_fcn("32s", num_classes=3, batch_norm=True, **SMALL), "pool2")
    model.train()
    nn.init.normal_(model.score_fr.weight, std=0.1)
    before = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    x = torch.rand(2, 3, 40, 40)
    loss, _, _ = pixel_loss(model(x), torch.randint(0, 3, (2, 40, 40)), ignore_index=255,
                            reduction="mean")
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for index in CONV_INDICES:
        frozen = index <= POOL_INDICES[1]
        for key in (f"trunk.features.{index}.0.weight", f"trunk.features.{index}.1.running_mean"):
            assert torch.equal(before[key], after[key]) == frozen, key
    assert not model.trunk.features[0][1].training and model.trunk.features[10][1].training
    # the state dict is a BatchNorm2d's: it saves and loads into an unfrozen model
    fresh = build_fcn("32s", num_classes=3, batch_norm=True, **SMALL)
    fresh.load_state_dict(after, strict=True)


def test_pretraining_hands_its_batch_norm_to_a_batch_norm_fcn(tmp_path):
    from test_pretraining import CLASSES, _toy_images

    from mvfcnn.fcn.pretrain import pretrain_trunk

    images, labels = _toy_images(tmp_path)
    cfg = {"patch_size": 32, "head": "pool5", "iterations": 5, "batch_size": 8, "lr": 3e-3,
           "precision": "fp32", "progress": False}
    fcn_cfg = {"width": 0.125, "fc_channels": 32, "batch_norm": True}
    pretrain_trunk(images=images, labels=labels, classes=CLASSES, cfg=cfg, fcn_cfg=fcn_cfg,
                   seed=0, out_model=tmp_path / "trunk.pt")
    trunk, meta = load_model(tmp_path / "trunk.pt")
    assert meta["kwargs"]["batch_norm"] is True  # not folded
    fcn = build_fcn("32s", num_classes=3, batch_norm=True, pretrained=str(tmp_path / "trunk.pt"),
                    width=0.125, fc_channels=32)
    for key, value in fcn.trunk.state_dict().items():
        assert torch.equal(value, trunk.trunk.state_dict()[key]), key
    stats = fcn.trunk.features[0][1].running_var
    assert not np.allclose(stats.numpy(), 1.0)  # the pretraining's statistics, not fresh ones
