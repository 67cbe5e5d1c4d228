"""Trunk pretraining on labelled patches (`pretrained: patches`) and BatchNorm folding."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_image
from mvfcnn.fcn import pretrain as P
from mvfcnn.fcn.pretrain import SSL_BLOCK, PatchSampler, block_mask, pretrain_trunk
from mvfcnn.models.fcn import build_fcn
from mvfcnn.models.io import load_model
from mvfcnn.models.patch_classifier import fold_batch_norm, patch_classifier

CLASSES = ClassSet.from_config({"classes": [
    {"index": 0, "name": "matrix", "color": "#000000"},
    {"index": 1, "name": "stripes", "color": "#ff0000"},
    {"index": 2, "name": "dots", "color": "#00ff00"},
]})
FCN_CFG = {"width": 0.125, "fc_channels": 32}


def _toy_images(tmp_path, count=2, size=96):
    """Matrix at grey 60; a left block of vertical stripes (class 1), a right block of dots."""
    images, labels = [], []
    rng = np.random.default_rng(0)
    for k in range(count):
        image = np.full((size, size), 60, np.uint8) + rng.integers(0, 10, (size, size),
                                                                   dtype=np.uint8)
        label = np.zeros((size, size), np.uint8)
        image[8:88, 4:44] = np.where(np.arange(40) % 4 < 2, 220, 120)[None, :]
        label[8:88, 4:44] = 1
        block = np.full((80, 40), 120, np.uint8)
        block[::5, ::5] = 250
        image[8:88, 52:92] = block
        label[8:88, 52:92] = 2
        label[0, 0] = 255  # ignore pixels are never patch centres
        images.append(write_path(tmp_path / f"im{k}.tif", image))
        labels.append(write_path(tmp_path / f"lb{k}.tif", label))
    return images, labels


def write_path(path, array):
    write_image(path, array)
    return path


def test_fold_batch_norm_keeps_eval_outputs():
    torch.manual_seed(0)
    model = patch_classifier(num_classes=3, width=0.125, fc_channels=32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    fold_batch_norm(model)
    after = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.kwargs["batch_norm"] is False
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_patch_sampler_centres_have_the_drawn_class(tmp_path):
    from mvfcnn.core.io import read_image

    paths, label_paths = _toy_images(tmp_path)
    images = [read_image(p) for p in paths]
    labels = [read_image(p) for p in label_paths]
    sampler = PatchSampler(images, labels, class_indices=[0, 1, 2], patch_size=32,
                           augment=False, rng=np.random.default_rng(1))
    assert set(sampler.counts()) == {0, 1, 2}
    x, y = sampler.draw(300)
    assert x.shape == (300, 1, 32, 32) and x.dtype == torch.uint8
    counts = np.bincount(y.numpy(), minlength=3)
    assert counts.min() > 70  # class-balanced: ~100 each
    for c in range(3):
        for i, yy, xx in sampler.corners[c][:50]:
            assert labels[i][yy + 16, xx + 16] == c
    # every patch lies inside its image
    for c in range(3):
        corners = sampler.corners[c]
        assert corners[:, 1].min() >= 0 and (corners[:, 1] + 32).max() <= 96
        assert corners[:, 2].min() >= 0 and (corners[:, 2] + 32).max() <= 96


def test_patch_sampler_errors_name_the_file(tmp_path):
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(InputError, match="bad.tif"):
        PatchSampler([image], [np.zeros((60, 64), np.uint8)], class_indices=[0, 1],
                     patch_size=32, augment=False, rng=np.random.default_rng(0),
                     names=["bad.tif"])
    with pytest.raises(InputError, match="at least two classes"):
        PatchSampler([image], [np.zeros((64, 64), np.uint8)], class_indices=[0, 1],
                     patch_size=32, augment=False, rng=np.random.default_rng(0))


def test_pretrain_trunk_learns_loads_into_fcn_and_is_deterministic(tmp_path):
    images, labels = _toy_images(tmp_path)
    cfg = {"patch_size": 32, "head": "pool5", "iterations": 40, "batch_size": 16, "lr": 3e-3,
           "precision": "fp32", "progress": False}
    outs = []
    for run in range(2):
        out = tmp_path / f"trunk{run}.pt"
        summary = pretrain_trunk(images=images, labels=labels, classes=CLASSES, cfg=cfg,
                                 fcn_cfg=FCN_CFG, seed=3, out_model=out,
                                 out_csv=tmp_path / f"p{run}.csv", out_png=tmp_path / f"p{run}.png")
        outs.append(out)
    assert summary["final_accuracy"] > 0.8, summary  # three trivially separable textures
    first, meta = load_model(outs[0])
    second, _ = load_model(outs[1])
    assert meta["arch"] == "patch_classifier" and meta["kwargs"]["batch_norm"] is False
    assert meta["extra"]["classes"] == CLASSES.to_dict()
    assert meta["extra"]["precision_choice"]["precision"] == "fp32"
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    fcn = build_fcn("32s", num_classes=3, pretrained=str(outs[0]), **FCN_CFG)
    for key, value in fcn.trunk.state_dict().items():
        assert torch.equal(value, first.trunk.state_dict()[key]), key
    assert (tmp_path / "p0.csv").read_text().startswith("iteration,loss,accuracy,seconds")
    assert (tmp_path / "p0.png").stat().st_size > 0


def test_pretrain_trunk_rejects_mismatched_inputs(tmp_path):
    images, labels = _toy_images(tmp_path, count=1)
    with pytest.raises(InputError, match="one labels file per image"):
        pretrain_trunk(images=images, labels=labels * 2, classes=CLASSES, cfg={},
                       fcn_cfg=FCN_CFG, seed=0, out_model=tmp_path / "t.pt")
    with pytest.raises(InputError, match="patch_size >= 224"):
        pretrain_trunk(images=images, labels=labels, classes=CLASSES,
                       cfg={"head": "fc7", "patch_size": 64}, fcn_cfg=FCN_CFG, seed=0,
                       out_model=tmp_path / "t.pt")
    assert not (tmp_path / "t.pt").exists()


def test_fc7_head_pretrains_fc6_and_fc7():
    torch.manual_seed(0)
    model = patch_classifier(num_classes=3, width=0.125, fc_channels=32, head="fc7")
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    assert model.trunk.fc6.weight.grad.abs().sum() > 0
    assert model.trunk.fc7.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="224"):
        model(torch.randn(1, 3, 128, 128))
    pooled = patch_classifier(num_classes=3, width=0.125, fc_channels=32, head="pool5")
    pooled(torch.randn(2, 3, 64, 64)).sum().backward()
    assert pooled.trunk.fc6.weight.grad is None


def test_block_mask_masks_whole_blocks_at_the_ratio():
    mask = block_mask(3, 128, 0.6, np.random.default_rng(0))
    assert mask.shape == (3, 1, 128, 128)
    blocks = mask[:, 0, ::SSL_BLOCK, ::SSL_BLOCK]
    assert blocks.sum(dim=(1, 2)).tolist() == [10.0, 10.0, 10.0]  # round(0.6 * 16)
    # constant on every 32-px block
    assert torch.equal(mask, blocks.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, None])


def test_ssl_phase_loss_decreases_and_its_trunk_loads_into_an_fcn(tmp_path):
    """Masked-image modelling on a handful of label-free crops (issue 22 item 1)."""
    images, labels = _toy_images(tmp_path, size=128)
    cfg = {"patch_size": 32, "iterations": 0, "ssl_iterations": 60, "ssl_patch_size": 64,
           "batch_size": 8, "lr": 3e-3, "precision": "fp32", "progress": False}
    out = tmp_path / "ssl.pt"
    summary = pretrain_trunk(images=images, labels=labels, classes=CLASSES, cfg=cfg,
                             fcn_cfg=FCN_CFG, seed=5, out_model=out, out_csv=tmp_path / "p.csv",
                             out_png=tmp_path / "p.png")
    assert summary["ssl_iterations"] == 60 and summary["iterations"] == 0
    frame = pd.read_csv(tmp_path / "p.csv")
    assert frame["phase"].tolist() == ["ssl"] * 60
    # measured: 0.71 over the first 10 steps, 0.60-0.62 from step 30 on (what 2 visible
    # blocks of a 64-px crop leave unpredictable)
    first, last = frame["loss"].head(10).mean(), frame["loss"].tail(20).mean()
    assert last < 0.92 * first, (first, last)
    trunk = load_model(out)[0].trunk.state_dict()
    fcn = build_fcn("32s", num_classes=3, pretrained=str(out), **FCN_CFG)
    assert torch.equal(fcn.trunk.state_dict()["features.28.weight"], trunk["features.28.weight"])

    # the trunk itself learns (without BatchNorm, whose folding would change it anyway)
    plain = {**cfg, "batch_norm": False}
    conv1 = []
    for steps in (1, 4):
        pretrain_trunk(images=images, labels=labels, classes=CLASSES,
                       cfg={**plain, "ssl_iterations": steps}, fcn_cfg=FCN_CFG, seed=5,
                       out_model=tmp_path / f"s{steps}.pt")
        conv1.append(load_model(tmp_path / f"s{steps}.pt")[0].trunk.features[0].weight)
    assert not torch.equal(*conv1)

    # then the patch classification continues from it, numbered after the SSL rows
    both = pretrain_trunk(images=images, labels=labels, classes=CLASSES,
                          cfg={**cfg, "iterations": 5, "ssl_iterations": 3}, fcn_cfg=FCN_CFG,
                          seed=5, out_model=tmp_path / "both.pt", out_csv=tmp_path / "b.csv")
    rows = pd.read_csv(tmp_path / "b.csv")
    assert rows["phase"].tolist() == ["ssl"] * 3 + ["patches"] * 5
    assert rows["iteration"].tolist() == list(range(1, 9)) and both["final_accuracy"] >= 0


@pytest.mark.parametrize(("change", "message"), [
    ({"iterations": 0, "ssl_iterations": 0}, "both 0"),
    ({"ssl_iterations": 2, "ssl_patch_size": 48}, "multiple of 32"),
])
def test_ssl_settings_that_cannot_work(tmp_path, change, message):
    images, labels = _toy_images(tmp_path, count=1)
    cfg = {"patch_size": 32, "iterations": 2, "batch_size": 4, "precision": "fp32",
           "progress": False, **change}
    with pytest.raises(InputError, match=message):
        pretrain_trunk(images=images, labels=labels, classes=CLASSES, cfg=cfg, fcn_cfg=FCN_CFG,
                       seed=0, out_model=tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_unlabelled_micrographs_feed_the_ssl_crops_only(tmp_path, monkeypatch, caplog):
    """Sheet rows of split `unlabelled` (issue 22 item 1): SSL crops come from the training
    images and them; the labelled patch phase never sees them."""
    images, labels = _toy_images(tmp_path, count=1, size=128)
    extra = write_path(tmp_path / "unlabelled.tif", np.full((160, 144), 90, np.uint8))
    seen: list[list[tuple[int, ...]]] = []
    original = P.random_crops

    def spy(arrays, *args, **kwargs):
        seen.append([a.shape for a in arrays])
        return original(arrays, *args, **kwargs)

    monkeypatch.setattr(P, "random_crops", spy)
    cfg = {"patch_size": 32, "iterations": 2, "ssl_iterations": 2, "ssl_patch_size": 64,
           "batch_size": 4, "precision": "fp32", "progress": False}
    summary = pretrain_trunk(images=images, labels=labels, classes=CLASSES, cfg=cfg,
                             fcn_cfg=FCN_CFG, seed=0, out_model=tmp_path / "t.pt",
                             unlabelled=[extra])
    assert summary["ssl_images"] == 2
    assert seen and all(sorted(shapes) == [(128, 128), (160, 144)] for shapes in seen)
    assert load_model(tmp_path / "t.pt")[1]["extra"]["unlabelled_images"] == [str(extra)]
    seen.clear()
    with caplog.at_level("WARNING"):
        summary = pretrain_trunk(images=images, labels=labels, classes=CLASSES,
                                 cfg={**cfg, "ssl_iterations": 0}, fcn_cfg=FCN_CFG, seed=0,
                                 out_model=tmp_path / "u.pt", unlabelled=[extra])
    assert summary["ssl_images"] == 0 and not seen
    assert "unused" in caplog.text


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_pretrain_lr_schedule_sets_each_patch_step_rate(tmp_path, monkeypatch, schedule):
    images, labels = _toy_images(tmp_path)
    rates: list[float] = []
    original = P.fit

    def spy(batches, step, optimizer, *, before=None, **kwargs):
        def recording(iteration):
            if before is not None:
                before(iteration)
            rates.append(optimizer.param_groups[0]["lr"])
        return original(batches, step, optimizer, before=recording, **kwargs)

    monkeypatch.setattr(P, "fit", spy)
    cfg = {"patch_size": 32, "iterations": 4, "batch_size": 4, "lr": 2e-3,
           "lr_schedule": schedule, "precision": "fp32", "progress": False}
    pretrain_trunk(images=images, labels=labels, classes=CLASSES, cfg=cfg, fcn_cfg=FCN_CFG,
                   seed=0, out_model=tmp_path / "t.pt")
    expected = {"constant": [2e-3] * 4,
                "cosine": [2e-3 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]}
    assert rates == pytest.approx(expected[schedule], rel=1e-12)
