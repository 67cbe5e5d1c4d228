"""A fair Table 1: the VGG baselines start from the same initialisation as the MVFCNN they are
compared with (``baselines.{vgg16,vgg19_svm}.pretrained``, default ``match``)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

torch = pytest.importorskip("torch")

from conftest import stripe_images  # noqa: E402

from mvfcnn.core import runs as R  # noqa: E402
from mvfcnn.core.errors import InputError  # noqa: E402
from mvfcnn.report import collect as C  # noqa: E402
from mvfcnn.report import tables as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
TINY = {"width": 1 / 16, "fc_channels": 16}  # C5 = 32 channels
CLASSES = {"classes": [{"index": 0, "name": "matrix", "color": "#000000"},
                       {"index": 1, "name": "alpha", "color": "#ff0000"},
                       {"index": 2, "name": "beta", "color": "#00ff00"}],
           "ignore_index": 255}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def no_download(monkeypatch, tmp_path):
    """Offline: an empty torch hub cache and every download fails at once."""
    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    return calls


@pytest.fixture()
def trunk_file(tmp_path):
    """A pretrain-trunk file as the rule writes it: a patch classifier, BatchNorm folded."""
    from mvfcnn.models.io import save_model
    from mvfcnn.models.patch_classifier import fold_batch_norm, patch_classifier

    torch.manual_seed(3)
    model = patch_classifier(num_classes=3, **TINY).eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding changes the weights
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    fold_batch_norm(model)
    path = tmp_path / "pretrain" / "sem" / "trunk.pt"
    save_model(path, model, arch="patch_classifier", kwargs=model.kwargs)
    return path, model


# --------------------------------------------------------------------------- models


def test_trunk_classifier_loads_the_pretrained_trunk(trunk_file):
    from mvfcnn.models.trunk_classifier import vgg16_trunk_classifier, vgg16_trunk_features

    path, source = trunk_file
    expected = source.trunk.features.state_dict()
    model = vgg16_trunk_classifier(num_classes=2, pretrained=path, **TINY)
    loaded = model.features.state_dict()
    assert list(loaded) == list(expected) and len(loaded) == 26  # 13 convolutions
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert model.features[0].padding == (1, 1)  # whole crops, no FCN padding
    assert model.classifier.in_features == 32 and model.classifier.out_features == 2
    assert torch.all(model.classifier.bias == 0)
    assert set(model.state_dict()) == {*(f"features.{k}" for k in expected),
                                       "classifier.weight", "classifier.bias"}  # no fc6/fc7
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)

    extractor = vgg16_trunk_features(pretrained=path, **TINY)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = source.trunk.features(x).mean(dim=(2, 3))
    torch.testing.assert_close(extractor(x), want, rtol=0, atol=0)
    assert extractor.out_channels == 32
    assert not any(p.requires_grad for p in extractor.parameters())

    with pytest.raises(InputError, match=r"trunk\.pt.*shape mismatch at trunk key"):
        vgg16_trunk_classifier(num_classes=2, pretrained=path, width=1 / 8, fc_channels=16)


def test_uses_trunk_layout_by_file_content(tmp_path, trunk_file):
    from mvfcnn.models.trunk_classifier import uses_trunk_layout

    path, _ = trunk_file
    assert uses_trunk_layout(path, "vgg16") and uses_trunk_layout(path, "vgg19")
    for value in ("none", "imagenet"):
        assert not uses_trunk_layout(value, "vgg16") and not uses_trunk_layout(value, "vgg19")
    t = torch.zeros(1)
    vgg16_state = {"features.0.weight": t, "features.28.weight": t, "classifier.0.weight": t}
    torch.save(vgg16_state, tmp_path / "vgg16.pth")
    torch.save({**vgg16_state, "features.34.weight": t}, tmp_path / "vgg19.pth")
    assert not uses_trunk_layout(tmp_path / "vgg16.pth", "vgg16")  # torchvision VGG16
    assert uses_trunk_layout(tmp_path / "vgg16.pth", "vgg19")       # VGG16 into the trunk
    assert not uses_trunk_layout(tmp_path / "vgg19.pth", "vgg19")   # torchvision VGG19


def test_imagenet_offline_gives_the_clear_error(no_download):
    from mvfcnn.models.trunk_classifier import vgg16_trunk_classifier

    with pytest.raises(InputError, match=r"needs the real VGG16 layout \(width 1\.0"):
        vgg16_trunk_classifier(num_classes=2, pretrained="imagenet", **TINY)
    with pytest.raises(InputError) as err:
        vgg16_trunk_classifier(num_classes=2, pretrained="imagenet", width=1.0,
                               fc_channels=4096, progress=False)
    assert str(err.value).startswith("ImageNet weights for vgg16 not found and cannot be "
                                     "downloaded")
    assert "place vgg16-397923af.pth" in str(err.value)
    assert len(no_download) == 1


# --------------------------------------------------------------------------- match


def _config(**changes):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return config


def test_match_resolves_to_the_compared_variants_init():
    config = _config()
    assert config["baselines"]["vgg16"]["pretrained"] == "match"
    assert R.compared_variant(config) == "ft_balanced_aug"
    assert R.baseline_init(config, "vgg16") == R.baseline_init(config, "vgg19_svm") == "patches"
    # the preferred variant wins wherever it is listed
    config = _config(**{"run.variants": ["scratch_balanced_aug", "ft_balanced_aug"]})
    assert R.baseline_init(config, "vgg16") == "patches"
    # without it: the first configured variant
    config = _config(**{"run.variants": ["scratch_unbalanced", "ft_unbalanced"]})
    assert R.compared_variant(config) == "scratch_unbalanced"
    assert R.baseline_init(config, "vgg19_svm") == "none"
    config = _config(**{"run.variants": [], "run.modalities": []})
    assert R.compared_variant(config) is None and R.baseline_init(config, "vgg16") == "none"
    # an explicit choice is kept
    config = _config(**{"baselines.vgg16.pretrained": "imagenet"})
    assert R.baseline_init(config, "vgg16") == "imagenet"
    assert R.baseline_init(config, "vgg19_svm") == "patches"
    # paper.yaml: ImageNet for the baselines and for every ft_* variant
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert R.baseline_init(paper, "vgg16") == R.baseline_init(paper, "vgg19_svm") == "imagenet"
    assert R.variant_settings(R.filled_config(paper), R.compared_variant(paper))[
        "pretrained"] == "imagenet"
    assert (paper["fcn"]["width"], paper["fcn"]["fc_channels"]) == (1.0, 4096)
    # layered on config.yaml (as users run it), the demo's speed settings do not leak in
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    layered = {**demo["fcn"], **paper["fcn"]}
    assert demo["fcn"]["freeze"] == "pool4" and layered["freeze"] == "none"
    assert (layered["width"], layered["batch_size"]) == (1.0, 1)
    # the schema default is `match` (mvfcnn.core.settings fills it)
    from mvfcnn.core.settings import defaults

    assert defaults("baselines")["vgg16"]["pretrained"] == "match"
    assert defaults("baselines")["vgg19_svm"]["pretrained"] == "match"
    with pytest.raises(InputError, match="no pretrained setting"):
        R.baseline_init(config, "cifarnet")


# --------------------------------------------------------------------------- train-baseline


def _cropset(n_per_class: int, seed: int, split: str):
    from mvfcnn.baselines.crops import CropSet

    images, classes = stripe_images(n_per_class, seed=seed, classes=2)
    n = len(images)
    return CropSet(images=np.stack(images), true_class=np.asarray(classes, dtype=np.int64),
                   sample=np.asarray([f"{split}_0"] * n), object_id=np.arange(1, n + 1),
                   bbox=np.tile([0, 0, 32, 32], (n, 1)), area=np.full(n, 1024),
                   handcrafted=np.zeros((n, 3), np.float32),
                   handcrafted_names=np.asarray(["a", "b", "c"]), modality="sem", split=split,
                   crop_size=32)


def _cli(tmp_path, method, params, *extra):
    from mvfcnn.baselines.cli import train_baseline as cli

    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    _cropset(4, 1, "train").save(train)
    _cropset(2, 2, "test").save(test)
    out = tmp_path / method
    argv = ["--method", method, "--modality", "sem", "--train", str(train), "--test", str(test),
            "--classes-json", json.dumps(CLASSES), "--params-json", json.dumps(params),
            "--out-metrics", str(out / "metrics.json"), "--out-objects", str(out / "o.csv"),
            "--out-confusion", str(out / "c.csv"), "--out-info", str(out / "info.json"),
            "--out-model", str(out / "model.bin"), "--device", "cpu", *extra]
    assert cli(argv) == 0
    return json.loads((out / "info.json").read_text()), out


def test_train_baseline_from_the_pretrained_trunk(tmp_path, trunk_file):
    from mvfcnn.models.io import load_model

    path, source = trunk_file
    layout = ["--trunk-json", json.dumps(TINY)]
    params = {"precision": "fp32", "vgg16": {"pretrained": str(path), "epochs": 1,
                                             "batch_size": 4}}
    info, out = _cli(tmp_path, "vgg16", params, *layout)
    assert info["init"] == str(path) and info["network"] == "vgg16_trunk_classifier"
    assert info["epochs"] == 1 and info["train_seconds"] > 0
    assert info["parameters"] == sum(p.numel() for p in source.trunk.features.parameters()) \
        + 32 * 2 + 2
    model, meta = load_model(out / "model.bin")
    assert meta["arch"] == "vgg16_trunk_classifier" and meta["kwargs"] == {
        "num_classes": 2, **TINY}
    assert meta["extra"]["init"] == str(path)

    params = {"precision": "fp32", "vgg19_svm": {"pretrained": str(path)},
              "svm": {"C": [1], "gamma_factor": [1], "folds": 2}}
    info, _ = _cli(tmp_path, "vgg19_svm", params, *layout)
    assert info["features"] == "vgg16_trunk_pool5_gap" and info["n_features"] == 32
    assert info["train_seconds"] > 0

    with pytest.raises(InputError, match="resolved by the workflow"):
        _cli(tmp_path, "vgg16", {"vgg16": {"pretrained": "match"}})


# --------------------------------------------------------------------------- workflow


def _dry_run(workdir: Path, *targets: str) -> str:
    snakemake = Path(sys.executable).parent / "snakemake"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(
        [str(snakemake), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
         "--configfile", str(ROOT / "config" / "config.yaml"),
         str(ROOT / "tests" / "data" / "mini.yaml"), "-n", *targets],
        capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _job_inputs(stdout: str, output: str) -> list[str]:
    """The input line of the dry-run job whose outputs include ``output``."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("output:") and output in line:
            inputs = lines[i - 1].strip()
            assert inputs.startswith("input:"), inputs
            return [p.strip() for p in inputs[len("input:"):].split(",")]
    raise AssertionError(f"no job writes {output}:\n{stdout[-3000:]}")


def test_dry_run_vgg16_depends_on_the_fcns_trunk(tmp_path):
    vgg16 = "results/baselines/vgg16/sem/metrics.json"
    cifarnet = "results/baselines/cifarnet/sem/metrics.json"
    stdout = _dry_run(tmp_path, vgg16, cifarnet)
    assert _job_inputs(stdout, vgg16) == ["results/baselines/crops/sem_train.npz",
                                          "results/baselines/crops/sem_test.npz",
                                          "results/pretrain/sem/trunk.pt"]
    assert _job_inputs(stdout, cifarnet) == ["results/baselines/crops/sem_train.npz",
                                             "results/baselines/crops/sem_test.npz"]
    assert _job_inputs(stdout, "results/pretrain/sem/trunk.pt")  # the FCN's own rule makes it


# --------------------------------------------------------------------------- tables


def test_table_configuration_names_init_and_budget(tmp_path, default_config, classes):
    from mvfcnn.evaluation.evaluate import write_evaluation

    config = copy.deepcopy(default_config)
    config["run"] = {"variants": ["ft_balanced_aug"], "modalities": ["sem"],
                     "baselines": ["cifarnet", "vgg19_svm", "vgg16"],
                     "baseline_modalities": ["sem"]}
    objects = pd.DataFrame({"sample": ["s"], "object_id": [1], "true_class": [1],
                            "pred_class": [1], "confidence": [0.9]})
    for method, variant, directory in (
            ("mvfcnn", "ft_balanced_aug", tmp_path / "mvfcnn" / "ft_balanced_aug" / "sem"),
            ("cifarnet", None, tmp_path / "baselines" / "cifarnet" / "sem"),
            ("vgg19_svm", None, tmp_path / "baselines" / "vgg19_svm" / "sem"),
            ("vgg16", None, tmp_path / "baselines" / "vgg16" / "sem")):
        write_evaluation(objects, classes, method=method, modality="sem", variant=variant,
                         out_metrics=directory / "metrics.json",
                         out_objects=directory / "objects.csv",
                         out_confusion=directory / "confusion.csv")
    base = tmp_path / "baselines"
    (base / "vgg16" / "sem" / "info.json").write_text(json.dumps(
        {"n_train": 40, "train_seconds": 12.34, "init": "results/pretrain/sem/trunk.pt",
         "network": "vgg16_trunk_classifier"}))
    (base / "vgg19_svm" / "sem" / "info.json").write_text(json.dumps(
        {"n_train": 40, "train_seconds": 2.5, "features": "vgg16_trunk_pool5_gap"}))
    (base / "cifarnet" / "sem" / "info.json").write_text(json.dumps(
        {"n_train": 40, "train_seconds": 30.0}))
    (tmp_path / "pretrain" / "sem").mkdir(parents=True)
    pd.DataFrame({"iteration": [1, 2], "loss": [1.0, 0.9], "accuracy": [0.5, 0.6],
                  "seconds": [1.5, 1.5]}).to_csv(tmp_path / "pretrain" / "sem" / "pretrain.csv",
                                                 index=False)
    for stage, seconds in (("32s", 100.0), ("16s", 80.0), ("8s", 70.0)):
        pd.DataFrame({"iteration": [1], "seconds": [seconds]}).to_csv(
            tmp_path / "mvfcnn" / "ft_balanced_aug" / "sem" / f"train_{stage}.csv", index=False)
    paper = C.load_paper(ROOT / "workflow" / "resources" / "paper_tables.yaml")
    tables = T.build_tables(tmp_path, classes, config, paper)
    t1 = tables["table1"].set_index("method")["configuration"]
    pretrain = "trunk pretraining 400 iterations x 32 patches (3.0 s)"
    assert t1["vgg16"] == (
        "SEM; init=patches (match: as ft_balanced_aug), the FCN's VGG16 trunk (width x0.25, "
        "fc 512) + GAP pool5 + new linear layer; crop 64 px; budget: 60 epochs, batch 16 (12 s) "
        f"+ the FCN's {pretrain}; 40 train objects; 1 test images, 1 test objects")
    assert t1["vgg19_svm"] == (
        "SEM; init=patches (match: as ft_balanced_aug), SVM on GAP pool5 of the FCN's VGG16 "
        "trunk (width x0.25, fc 512), not VGG19 fc7; crop 64 px; budget: RBF SVM grid 5 C x 4 "
        f"gamma, 5-fold CV, no network training (2.5 s) + the FCN's {pretrain}; "
        "40 train objects; 1 test images, 1 test objects")
    assert t1["cifarnet"] == (
        "SEM; init=none (from scratch, torch random init); crop 64 px; budget: 60 epochs, "
        "batch 16 (30 s); 40 train objects; 1 test images, 1 test objects")
    assert ("init=patches; balanced=true; augment=true; VGG16 width x0.25, fc 512; tile 384 px; "
            "budget: FCN iterations 400/300/300 (32s/16s/8s), batch 1 (250 s) + "
            f"{pretrain}") in t1["mvfcnn"]
    t3 = tables["table3"].set_index("method")["configuration"]
    assert t3["vgg16"] == t1["vgg16"]
    from mvfcnn.report.rendering import shown_table

    _, notes = shown_table("table1", tables["table1"])
    assert f"- **vgg16**: {t1['vgg16']}" in notes
