"""FCN stage training: loss conventions, a short run, stage initialisation, and exact resume."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.fcn.checkpoints import checkpoint_files
from mvfcnn.fcn.losses import lr_factor, lr_sum_to_mean, make_optimizer, pixel_loss
from mvfcnn.fcn.tiling import tile_index
from mvfcnn.fcn.train import split_validation, train_stage
from mvfcnn.models.fcn import build_fcn
from mvfcnn.models.io import load_model
from mvfcnn.models.preprocess import normalize_batch

CLASSES = ClassSet((0, 1), ("bg", "A"), ("#000000", "#ff0000"))
TILE = 64
# tiny model: width 1/16 (4..32 channels), fc 16; fast on 2 shared cores
CFG = {
    "width": 1 / 16, "fc_channels": 16, "dropout": 0.5, "stages": ["32s", "16s", "8s"],
    "iterations": {"32s": 32, "16s": 4, "8s": 4}, "batch_size": 4,
    "lr": {"32s": 1e-2, "16s": 1e-3, "8s": 1e-3}, "momentum": 0.9, "weight_decay": 5e-4,
    "loss": "mean", "precision": "fp32", "checkpoint_every": 4, "validate_every": 12,
    "device": "cpu", "progress": False,
}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine this is faster, and every run (in-process
    and subprocess) uses the same kernels, which bit-identical resume comparisons need."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
VARIANT = {"pretrained": "none", "balanced": False, "augment": True}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> pd.DataFrame:
    """One 160x128 grey image: bright class A in the top quarter, dark matrix below."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    labels = np.zeros((160, 128), np.uint8)
    labels[:40] = 1
    labels[:2] = 255
    image = np.where(labels == 1, 200, 40) + rng.normal(0, 10, labels.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    tifffile.imwrite(root / "img.tif", image)
    tifffile.imwrite(root / "lab.tif", labels)
    images = pd.DataFrame([{"sample": "s1", "height": 160, "width": 128, "class": "A",
                            "image": str(root / "img.tif"), "labels": str(root / "lab.tif")}])
    return tile_index(images, size=TILE, stride=32, balanced=False, augment=True).tiles


def _run(tmp: Path, tiles: pd.DataFrame, *, stage="32s", parent=None, cfg=CFG, val=None):
    out = tmp / f"fcn{stage}.pt"
    summary = train_stage(stage=stage, tiles=tiles, classes=CLASSES, cfg=copy.deepcopy(cfg),
                          variant=VARIANT, parent=parent, out_model=out,
                          out_csv=tmp / f"train_{stage}.csv", out_png=tmp / f"train_{stage}.png",
                          checkpoint_dir=tmp / "ckpt" / stage, seed=3, device="cpu",
                          val_tiles=val)
    return out, summary


def test_sum_and_mean_sgd_steps_agree():
    """lr_mean = lr_sum * N and wd_mean = wd_sum / N give the same weights (momentum too)."""
    torch.manual_seed(0)
    base = build_fcn("32s", num_classes=3, width=1 / 16, fc_channels=8, dropout=0.0)
    with torch.no_grad():
        for p in (base.score_fr.weight, base.score_fr.bias):
            p.normal_(0, 0.1)  # non-zero head so the trunk gets gradients as well
    x = normalize_batch(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8))
    y = torch.randint(0, 3, (2, 32, 32))
    y[0, :4] = 255
    n = int((y != 255).sum())
    lr_sum, wd_sum = 1e-6, 5e-4
    lr_mean, wd_mean = lr_sum_to_mean(lr_sum, wd_sum, n)
    assert lr_mean == pytest.approx(lr_sum * n) and wd_mean == pytest.approx(wd_sum / n)
    models = {}
    for kind, lr, wd in (("sum", lr_sum, wd_sum), ("mean", lr_mean, wd_mean)):
        model = copy.deepcopy(base).to(torch.float64)
        opt = make_optimizer(model, lr=lr, momentum=0.9, weight_decay=wd, bias_lr_mult=2.0,
                             bias_decay_mult=0.0)
        for _ in range(2):  # the second step exercises the momentum buffer
            objective, mean_loss, count = pixel_loss(model(x.double()), y, ignore_index=255,
                                                     reduction=kind)
            assert count == n
            opt.zero_grad()
            objective.backward()
            opt.step()
        models[kind] = model.state_dict()
    changed = 0
    for key, value in models["sum"].items():
        torch.testing.assert_close(value, models["mean"][key], rtol=1e-7, atol=1e-10)
        changed += int(not torch.equal(value, base.state_dict()[key].double()))
    assert changed > 5  # the step really moved the weights


def test_pixel_loss_conventions_and_empty_batch():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 4, 4))
    s, mean, n = pixel_loss(logits, labels, ignore_index=255, reduction="sum")
    m, _, _ = pixel_loss(logits, labels, ignore_index=255, reduction="mean")
    s, m = s.detach(), m.detach()
    assert n == 16 and float(s) == pytest.approx(16 * float(m)) and mean == pytest.approx(float(m))
    empty, value, n = pixel_loss(logits, torch.full((1, 4, 4), 255), ignore_index=255,
                                 reduction="mean")
    assert n == 0 and value == 0.0 and empty.item() == 0.0


def test_split_validation_holds_out_positions():
    frame = pd.DataFrame({"sample": ["a"] * 8, "y": [0, 0, 1, 1] * 2, "x": [0, 1, 0, 1] * 2,
                          "rot": [0] * 4 + [1] * 4})
    train, val = split_validation(frame, every=2)
    held = set(zip(val["y"], val["x"], strict=True))
    assert held == {(0, 1), (1, 1)} and set(val["rot"]) == {0}
    assert not held & set(zip(train["y"], train["x"], strict=True))
    assert len(train) == 4
    assert split_validation(frame, every=0)[0] is frame


def _dataset_loss(model: torch.nn.Module, tiles: pd.DataFrame) -> float:
    """Mean cross-entropy per labelled pixel over every tile (eval mode: no dropout noise)."""
    from mvfcnn.fcn.dataset import TileDataset

    data = TileDataset(tiles)
    images, labels = zip(*(data[i] for i in range(len(data))), strict=True)
    with torch.no_grad():
        logits = model.eval()(normalize_batch(torch.stack(images)))
    return pixel_loss(logits, torch.stack(labels), ignore_index=255, reduction="mean")[1]


def test_training_run_outputs_and_stage_init(tmp_path, tiles):
    train, val = split_validation(tiles, every=4)
    model_path, summary = _run(tmp_path, train, val=val)
    frame = pd.read_csv(tmp_path / "train_32s.csv")
    assert list(frame.columns) == ["iteration", "loss", "lr", "seconds", "pixel_accuracy",
                                   "mean_iu"]
    assert frame["iteration"].tolist() == list(range(1, 33))
    assert frame.dropna(subset=["pixel_accuracy"])["iteration"].tolist() == [12, 24, 32]
    assert frame["mean_iu"].notna().sum() == 3 and frame["pixel_accuracy"].between(0, 1).any()
    assert frame["loss"].iloc[0] == pytest.approx(np.log(2), abs=1e-6)  # zero-initialised head
    assert (tmp_path / "train_32s.png").read_bytes()[:4] == b"\x89PNG"
    assert checkpoint_files(tmp_path / "ckpt" / "32s") == []  # removed after success
    model, meta = load_model(model_path)
    assert meta["arch"] == "fcn32s" and meta["extra"]["classes"] == CLASSES.to_dict()
    assert meta["extra"]["tile_size"] == TILE and meta["extra"]["normalisation"] == "imagenet"
    assert meta["extra"]["precision"] == "fp32"
    assert meta["extra"]["precision_choice"]["requested"] == "fp32"
    # the trained model fits the training tiles better than the initial one (ln 2 everywhere);
    # judged on all tiles in eval mode, as the per-batch loss is too noisy at batch 4
    trained_loss = _dataset_loss(model, train)
    assert trained_loss < 0.9 * np.log(2)

    # 16s from the trained 32s: every shared layer copied, the new score_pool4 zero, so the
    # child starts from its parent's prediction. Not bit-equal: upsampling x2 then x16
    # (bilinear samples between the coarse knots) only approximates the parent's x32 bilinear.
    cfg0 = {**CFG, "iterations": {**CFG["iterations"], "16s": 0}}
    child_path, _ = _run(tmp_path, train, stage="16s", parent=model_path, cfg=cfg0)
    child, meta16 = load_model(child_path)
    assert meta16["arch"] == "fcn16s" and meta16["extra"]["parent"] == str(model_path)
    child_state = child.state_dict()
    shared = [k for k, v in model.state_dict().items()
              if k in child_state and child_state[k].shape == v.shape]
    assert any(k.startswith("trunk.") for k in shared) and "score_fr.weight" in shared
    for key in shared:
        assert torch.equal(child_state[key], model.state_dict()[key]), key
    assert not child_state["score_pool4.weight"].any()
    assert _dataset_loss(child, train) == pytest.approx(trained_loss, rel=0.05)
    _run(tmp_path, train, stage="16s", parent=model_path)  # and trains on from there
    assert pd.read_csv(tmp_path / "train_16s.csv")["loss"].notna().all()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path)[0].state_dict()


def test_resume_after_sigkill_is_bit_identical(tmp_path, tiles):
    cfg = {**CFG, "iterations": {**CFG["iterations"], "32s": 18}, "checkpoint_every": 3,
           "validate_every": 0}  # ~0.1 s per iteration: ample time to kill after ckpt 3
    reference, _ = _run(tmp_path / "ref", tiles, cfg=cfg)

    work = tmp_path / "killed"
    work.mkdir()
    tile_csv = work / "tiles.csv"
    tiles.to_csv(tile_csv, index=False)
    ckpt_dir = work / "ckpt"
    cmd = [sys.executable, "-m", "mvfcnn.cli", "train-fcn", "--stage", "32s",
           "--tiles", str(tile_csv), "--classes-json", json.dumps(CLASSES.to_dict()),
           "--params-json", json.dumps({**cfg, "keep_checkpoints": False}),
           "--variant-json", json.dumps(VARIANT), "--seed", "3", "--out", str(work / "m.pt"),
           "--out-csv", str(work / "m.csv"), "--out-png", str(work / "m.png"),
           "--checkpoint-dir", str(ckpt_dir), "--device", "cpu", "--val-holdout-every", "0",
           "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not checkpoint_files(ckpt_dir):
            if proc.poll() is not None:
                pytest.fail(f"training exited before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 120 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "m.pt").exists(), "killed too late: increase iterations"
    at_kill = checkpoint_files(ckpt_dir)[0][0]
    assert 3 <= at_kill < 18 and at_kill % 3 == 0

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from iteration {at_kill}" in done.stderr
    resumed, expected = _state(work / "m.pt"), _state(reference)
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    rows = pd.read_csv(work / "m.csv")
    assert rows["iteration"].tolist() == list(range(1, 19))
    ref_rows = pd.read_csv(tmp_path / "ref" / "train_32s.csv")
    np.testing.assert_array_equal(rows["loss"].to_numpy(), ref_rows["loss"].to_numpy())


def test_foreign_checkpoint_is_ignored(tmp_path, tiles, caplog):
    cfg = {**CFG, "iterations": {**CFG["iterations"], "32s": 4}, "checkpoint_every": 2,
           "keep_checkpoints": True, "validate_every": 0}
    _run(tmp_path / "a", tiles, cfg=cfg)
    assert [i for i, _ in checkpoint_files(tmp_path / "a" / "ckpt" / "32s")] == [2]
    other = {**cfg, "lr": {**cfg["lr"], "32s": 1e-3}}
    with caplog.at_level("INFO", logger="mvfcnn.fcn.train"):
        _, summary = _run(tmp_path / "a", tiles, cfg=other)
    assert summary["resumed_from"] == 0
    assert "other settings" in caplog.text and "resuming" not in caplog.text


def test_median_frequency_weights_exact():
    """8 matrix and 2 class-1 pixels (255 skipped), class 2 absent: freq 0.8/0.2, median 0.5."""
    from mvfcnn.fcn.losses import class_balance_weights

    class Tiny:
        def __len__(self):
            return 2

        def __getitem__(self, index):
            labels = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 255]]) if index == 0 else \
                torch.tensor([[0, 0, 1, 255], [255, 255, 255, 255]])
            return torch.zeros(1, 2, 4, dtype=torch.uint8), labels

    weights = class_balance_weights(Tiny(), 3, ignore_index=255)
    assert torch.allclose(weights, torch.tensor([0.5 / 0.8, 0.5 / 0.2, 0.0]))


def test_weighted_loss_keeps_per_pixel_normalisation():
    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    weights = torch.tensor([1.0, 3.0])
    objective, mean_loss, n = pixel_loss(logits, labels, ignore_index=255, reduction="mean",
                                         class_weights=weights)
    assert n == 2
    assert objective.item() == pytest.approx((1.0 + 3.0) * math.log(2) / 2)
    assert mean_loss == pytest.approx(math.log(2))  # the logged loss stays unweighted


def test_adam_option_and_unknown_optimizer():
    model = torch.nn.Conv2d(1, 2, 1)
    assert isinstance(make_optimizer(model, lr=1e-3, momentum=0.9, weight_decay=0.0, kind="adam"),
                      torch.optim.Adam)
    with pytest.raises(InputError, match="fcn.optimizer"):
        make_optimizer(model, lr=1e-3, momentum=0.9, weight_decay=0.0, kind="rmsprop")


def test_a_trunk_trained_from_scratch_is_never_frozen():
    """fcn.freeze fixes a PRETRAINED trunk; a `pretrained: none` variant's random trunk must
    learn, in FCN-32s and in the later stages (which inherit it from their parent)."""
    from mvfcnn.fcn.stage_model import build_stage_model, frozen_until

    cfg = {"freeze": "pool4"}
    assert frozen_until(cfg, {"pretrained": "none"}) == "none"
    assert frozen_until(cfg, {}) == "none"
    assert frozen_until(cfg, {"pretrained": "patches"}) == "pool4"
    assert frozen_until(cfg, {"pretrained": "/models/trunk.pt"}) == "pool4"
    classes = ClassSet((0, 1, 2), ("matrix", "a", "b"), ("#000000", "#ff0000", "#00ff00"))
    fcn = {"width": 0.0625, "fc_channels": 16, "dropout": 0.5, "freeze": "pool4"}
    model = build_stage_model("32s", classes=classes, cfg=fcn, variant={"pretrained": "none"},
                              parent=None)
    assert all(p.requires_grad for p in model.trunk.parameters())


@pytest.mark.parametrize("until", ["none", "pool1", "pool3", "pool4"])
def test_freeze_keeps_the_trunk_prefix_fixed(until):
    """fcn.freeze: layers up to the pool do not move in a training step, all later ones do,
    and the optimizer holds only the trainable ones."""
    from mvfcnn.fcn.losses import make_optimizer
    from mvfcnn.fcn.stage_model import freeze_trunk
    from mvfcnn.models.vgg_trunk import CONV_INDICES, POOL_INDICES

    torch.manual_seed(0)
    model = freeze_trunk(build_fcn("32s", num_classes=3, width=0.0625, fc_channels=16), until)
    last = -1 if until == "none" else POOL_INDICES[int(until[-1]) - 1]
    frozen = [i for i in CONV_INDICES if i <= last]
    torch.nn.init.normal_(model.score_fr.weight, std=0.1)  # zero-init score: no gradient below
    before = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.rand(2, 3, 40, 40)
    loss, _, _ = pixel_loss(model(x), torch.randint(0, 3, (2, 40, 40)), ignore_index=255,
                            reduction="mean")
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for index in CONV_INDICES:
        key = f"trunk.features.{index}.weight"
        assert torch.equal(before[key], after[key]) == (index in frozen), key
    assert not torch.equal(before["score_fr.weight"], after["score_fr.weight"])


def test_lr_factor_schedules_exact():
    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor("poly", 0, 10) == 1.0
    assert lr_factor("poly", 5, 10) == pytest.approx(0.5 ** 0.9)
    assert lr_factor("poly", 9, 10) == pytest.approx(0.1 ** 0.9)
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    with pytest.raises(InputError, match="fcn.lr_schedule"):
        lr_factor("step", 1, 10)
    with pytest.raises(InputError, match="pretrain.lr_schedule"):
        lr_factor("step", 1, 10, key="pretrain.lr_schedule")


def test_poly_schedule_lr_column_and_keep_best_weights(tmp_path, tiles):
    """The CSV's lr is each step's decayed rate; keep_best's model is bit-equal to a run
    stopped at the best validated iteration (a prefix of the same batches)."""
    train, val = split_validation(tiles, every=4)
    cfg = {**CFG, "iterations": {**CFG["iterations"], "32s": 16}, "validate_every": 4}
    _run(tmp_path / "poly", train, val=val, cfg={**cfg, "lr_schedule": "poly"})
    rows = pd.read_csv(tmp_path / "poly" / "train_32s.csv")
    expected = [1e-2 * lr_factor("poly", i, 16) for i in range(16)]
    np.testing.assert_allclose(rows["lr"].to_numpy(), expected, rtol=1e-12)

    best_cfg = {**cfg, "keep_best": True, "checkpoint_every": 4, "keep_checkpoints": True}
    best_path, _ = _run(tmp_path / "best", train, val=val, cfg=best_cfg)
    rows = pd.read_csv(tmp_path / "best" / "train_32s.csv").dropna(subset=["mean_iu"])
    best_it = int(rows["iteration"].iloc[int(np.argmax(rows["mean_iu"].to_numpy()))])
    assert best_it < 16  # the choice is exercised: not simply the last iteration
    meta = load_model(best_path)[1]["extra"]
    assert meta["kept_iteration"] == best_it and meta["lr_schedule"] == "constant"
    prefix = {**cfg, "iterations": {**cfg["iterations"], "32s": best_it}, "validate_every": 0}
    reference, _ = _run(tmp_path / "prefix", train, cfg=prefix)
    kept, expected_state = _state(best_path), _state(reference)
    for key, value in expected_state.items():
        assert torch.equal(kept[key], value), key
    # a run resumed after the best iteration keeps the same best (it is in the checkpoint)
    _, summary = _run(tmp_path / "best", train, val=val, cfg=best_cfg)
    assert summary["resumed_from"] == 12
    resumed = _state(best_path)
    for key, value in expected_state.items():
        assert torch.equal(resumed[key], value), key


def test_finer_stages_train_from_their_parents_only(tmp_path, tiles):
    """FCN-4s and 2s continue the chain (issue 22): each from the stage before it."""
    cfg = {**CFG, "stages": ["32s", "16s", "8s", "4s", "2s"],
           "iterations": {"32s": 2, "16s": 2, "8s": 2, "4s": 2, "2s": 2},
           "lr": {s: 1e-3 for s in ("32s", "16s", "8s", "4s", "2s")}, "validate_every": 0}
    parent = None
    for stage in cfg["stages"]:
        parent, _ = _run(tmp_path, tiles, stage=stage, parent=parent, cfg=cfg)
        assert load_model(parent)[1]["arch"] == f"fcn{stage}"
    with pytest.raises(InputError, match="FCN-4s needs a fcn8s parent, got fcn16s"):
        _run(tmp_path / "wrong", tiles, stage="4s", parent=tmp_path / "fcn16s.pt", cfg=cfg)


def test_weight_average_follows_the_warmed_up_decay_exactly():
    """avg <- d_n * avg + (1 - d_n) * live with d_n = min(decay, (1 + n) / (10 + n))."""
    from mvfcnn.fcn.averaging import WeightAverage, ema_factor

    assert ema_factor(0.995, 1) == pytest.approx(2 / 11)
    assert ema_factor(0.9, 1000) == 0.9
    live = torch.nn.Linear(1, 1)
    with torch.no_grad():
        live.weight.fill_(1.0)
        live.bias.fill_(0.0)
    average = WeightAverage(live, 0.5)
    expected = 1.0
    for n, value in enumerate((3.0, 5.0, -1.0), start=1):
        with torch.no_grad():
            live.weight.fill_(value)
        average.update(live)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        assert float(average.model.weight) == pytest.approx(expected, rel=1e-6)
    assert not average.model.weight.requires_grad
    restored = WeightAverage(live, 0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 3 and float(restored.model.weight) == float(average.model.weight)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(live, 1.0)


def test_ema_model_is_the_average_and_resumes_bit_identically(tmp_path, tiles):
    """fcn.ema_decay: the kept model is the average (not the last iterate, which a run without
    it keeps), and a run resumed from a checkpoint ends on the same bits."""
    train, val = split_validation(tiles, every=4)
    cfg = {**CFG, "iterations": {**CFG["iterations"], "32s": 8}, "validate_every": 4,
           "checkpoint_every": 4, "keep_checkpoints": True}
    plain, _ = _run(tmp_path / "plain", train, val=val, cfg=cfg)
    ema_cfg = {**cfg, "ema_decay": 0.9}
    averaged, _ = _run(tmp_path / "ema", train, val=val, cfg=ema_cfg)
    assert load_model(averaged)[1]["extra"]["ema_decay"] == 0.9
    last, kept = _state(plain), _state(averaged)
    assert any(not torch.equal(last[k], kept[k]) for k in last)
    # resumed from iteration 4: the checkpoint holds the average as well
    _, summary = _run(tmp_path / "ema", train, val=val, cfg=ema_cfg)
    assert summary["resumed_from"] == 4
    resumed = _state(averaged)
    for key, value in kept.items():
        assert torch.equal(resumed[key], value), key
    ema_rows = pd.read_csv(tmp_path / "ema" / "train_32s.csv")
    plain_rows = pd.read_csv(tmp_path / "plain" / "train_32s.csv")
    np.testing.assert_array_equal(ema_rows["loss"], plain_rows["loss"])  # same steps
