"""End-to-end: the whole DAG on a miniature synthetic dataset (tests/data/mini.yaml).

One Snakemake run in a temporary working directory builds every output the default run builds
(data stage, MVFCNN on SEM and LOM, the baselines, tables, figures); the assertions check the
files and their formats, not the (meaningless at this size) accuracies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, *args: str, check: bool = True,
              overlays: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """snakemake on the repository's Snakefile with config.yaml + mini.yaml (+ ``overlays``)."""
    command = [
        str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(ROOT / "config" / "config.yaml"),
        str(ROOT / "tests" / "data" / "mini.yaml"), *map(str, overlays),
        *args,
    ]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("mini")
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1")
    return workdir


def planned_jobs(dry_run_stdout: str) -> list[tuple[str, str]]:
    """(rule, resources line) of every job a ``snakemake -n`` listed."""
    jobs: list[tuple[str, str]] = []
    for line in dry_run_stdout.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":"):
            jobs.append((line.split()[1].rstrip(":"), ""))
        elif line.strip().startswith("resources:") and jobs:
            jobs[-1] = (jobs[-1][0], line.strip())
    return jobs


@pytest.mark.slow
def test_dry_run_declares_gpu_on_network_jobs(tmp_path):
    result = snakemake(tmp_path, "-n", "--cores", "4", "--resources", "gpu=1")
    jobs = planned_jobs(result.stdout)
    network = {"pretrain_trunk", "train_fcn", "predict", "classify"}
    assert network <= {rule for rule, _ in jobs}
    for rule, resources in jobs:
        if rule in network:
            assert "gpu=1" in resources, (rule, resources)
        elif rule in {"synthesize", "register", "mask", "objects", "tile_index", "tables"}:
            assert "gpu=1" not in resources, (rule, resources)
    baselines = [resources for rule, resources in jobs if rule == "train_baseline"]
    # cifarnet, vgg16, vgg19_svm use the network; handcrafted_svm does not (x2 modalities)
    assert sorted("gpu=1" in r for r in baselines) == [False, False] + [True] * 6


@pytest.mark.slow
def test_data_stage_outputs(mini_run):
    registrations = sorted((mini_run / "results" / "registration").glob("*.json"))
    assert registrations
    for path in registrations:
        report = json.loads(path.read_text())
        assert report["rms_error_px"] <= 1.0, path.name
    for path in sorted((mini_run / "results" / "masks").glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("iou") is not None:
            assert report["iou"] >= 0.85, path.name
    tables = sorted((mini_run / "results" / "objects").glob("*.csv"))
    assert tables
    frame = pd.read_csv(tables[0])
    assert {"object_id", "bbox_y0", "area", "true_class", "true_share"} <= set(frame.columns)


@pytest.mark.slow
def test_mvfcnn_outputs(mini_run):
    for modality in ("sem", "lom"):
        run = mini_run / "results" / "mvfcnn" / "ft_balanced_aug" / modality
        for stage in ("32s", "16s", "8s"):
            assert (run / f"fcn{stage}.pt").stat().st_size > 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["object_accuracy"] <= 1.0
        assert {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"} <= set(metrics["pixel"])


@pytest.mark.slow
def test_fcn32s_starts_from_the_pretrained_trunk(mini_run):
    """`pretrained: patches`: pretrain_trunk ran per modality and FCN-32s was built from it."""
    import torch

    from mvfcnn.models.io import load_model

    for modality in ("sem", "lom"):
        trunk_file = mini_run / "results" / "pretrain" / modality / "trunk.pt"
        pretrained, meta = load_model(trunk_file)
        assert meta["arch"] == "patch_classifier" and not meta["kwargs"]["batch_norm"]
        assert (mini_run / "results" / "pretrain" / modality / "pretrain.png").stat().st_size
        run = mini_run / "results" / "mvfcnn" / "ft_balanced_aug" / modality
        _, fcn_meta = load_model(run / "fcn32s.pt")
        assert fcn_meta["extra"]["variant"]["pretrained"] == f"results/pretrain/{modality}/trunk.pt"
        # conv5_3 moved during 32s training, but only a little: it started from the trunk
        key = "features.28.weight"
        start = pretrained.trunk.state_dict()[key]
        fcn, _ = load_model(run / "fcn32s.pt")
        end = fcn.trunk.state_dict()[key]
        assert torch.linalg.norm(end - start) < 0.1 * torch.linalg.norm(start)


@pytest.mark.slow
def test_rerun_is_a_no_op(mini_run):
    result = snakemake(mini_run, "-n", "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_report_reruns_only_for_settings_it_reads(mini_run, tmp_path):
    """Report jobs take only the config sections they read: a resources change reruns none of
    them, a change to a section they print (inference) reruns them."""
    resources = tmp_path / "resources.yaml"
    resources.write_text("resources:\n  predict: {threads: 1, mem_mb: 3000, runtime: 20}\n")
    inference = tmp_path / "inference.yaml"
    inference.write_text("inference:\n  overlap: 60\n")
    quiet = planned_jobs(snakemake(mini_run, "-n", "--cores", "2", overlays=(resources,)).stdout)
    assert not {rule for rule, _ in quiet} & {"tables", "best_run", "figure_noise"}, quiet
    loud = planned_jobs(snakemake(mini_run, "-n", "--cores", "2", overlays=(inference,)).stdout)
    assert {"tables", "best_run", "figure_noise"} <= {rule for rule, _ in loud}


@pytest.mark.slow
def test_every_table_and_figure(mini_run, repo_root):
    import yaml

    tables = mini_run / "results" / "tables"
    paper = yaml.safe_load((repo_root / "workflow" / "resources" / "paper_tables.yaml").read_text())
    assert paper  # the paper's numbers come from this one file
    for number in range(1, 7):
        frame = pd.read_csv(tables / f"table{number}.csv")
        # table 4 is in long format: a `source` column says ours / paper
        columns = set(frame.columns) | set(frame.get("source", pd.Series(dtype=str)).astype(str))
        assert any("paper" in column for column in columns), number
        assert (tables / f"table{number}.md").read_text().strip()
    table1 = pd.read_csv(tables / "table1.csv")
    assert sorted(table1["paper"].dropna().round(2)) == [48.89, 57.03, 64.84, 66.5, 93.94]
    assert (tables / "summary.md").exists()
    best = json.loads((mini_run / "results" / "best.json").read_text())
    assert best["sem"]["variant"] == best["lom"]["variant"] == "ft_balanced_aug"
    for name in ("fig4_examples", "fig6_segmentation", "fig7_maxvoting", "fig8a_lom_vs_sem",
                 "fig8b_noise"):
        assert (mini_run / "results" / "figures" / f"{name}.png").stat().st_size > 1000, name
    baselines = sorted((mini_run / "results" / "baselines").glob("*/*/metrics.json"))
    assert len(baselines) == 8


@pytest.mark.slow
def test_classify_predict_samples(mini_run):
    """The `classify` rule's outputs for the `predict` sample, and its object classes equal the
    `vote` rule's on the same sample and model (the vote rule is asked for that one file)."""
    import tifffile

    out = mini_run / "results" / "classify" / "predict_0"
    for name in ("objects.csv", "summary.csv", "low_confidence.csv", "overlay.png",
                 "overlay_preview.png", "classmap.ome.tif", "size_distribution.png", "run.json"):
        assert (out / name).stat().st_size > 0, name
    run = json.loads((out / "run.json").read_text())
    assert run["pixel_size_um"] == 0.1 and run["object_source"] == "mask"
    with tifffile.TiffFile(out / "classmap.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].shape == (2, 256, 256)
    bundle = mini_run / "results" / "mvfcnn" / "ft_balanced_aug" / "sem" / "model_bundle.pt"
    assert bundle.stat().st_size > 0
    # the prepare settings travel in the bundle (classify repeats the training images' stretch)
    from mvfcnn.classify.bundle import load_for_inference

    training = load_for_inference(bundle).extra["training"]
    assert training["prepare"] == {"upscale": 1, "intensity_percentiles": None}
    assert run["intensity_stretch"] is None
    votes = "results/mvfcnn/ft_balanced_aug/sem/votes/predict_0.csv"
    snakemake(mini_run, "--resources", "gpu=1", "--cores", "2", votes)  # targets last
    ours = pd.read_csv(out / "objects.csv")
    rule = pd.read_csv(mini_run / votes)
    assert len(ours) > 0
    assert ours["object_id"].tolist() == rule["object_id"].tolist()
    assert ours["class"].tolist() == rule["pred_class"].tolist()


HOSTILE_NAMES = {
    # a `;` once ran the rest of the name as a command (issue 15)
    "sem": "x;touch INJECTED.tif",
    # real file names: `#` once cut the path (sample-sheet comment), `(` broke bash
    "lom": "040617#2_S127(2)0015.tif",
    "labels": "it's \"a\" file.tif",
    "mask_sem": "$(touch INJECTED2) `touch INJECTED3`.tif",
    "mask": "mask & echo INJECTED4 > INJECTED4.tif",
}


@pytest.mark.slow
def test_data_stage_with_hostile_file_names(tmp_path, default_config):
    """File names with spaces, #, ;, parentheses, quotes, $() and backticks run the data stage
    (registration, mask, objects) end to end, and no command hidden in a name runs."""
    import numpy as np

    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import write_image
    from mvfcnn.data.synthetic import render_sample

    classes = ClassSet.from_config(default_config)
    cfg = {**default_config["synthetic"], "height": 256, "width": 256, "object_count": [4, 6],
           "object_radius_px": [18, 30]}
    data = tmp_path / "my data (copy) #1"
    data.mkdir()
    one = render_sample("train_martensite_0", cfg, classes, 0)
    two = render_sample("test_pearlite_0", cfg, classes, 0)
    write_image(data / HOSTILE_NAMES["sem"], one.sem)
    write_image(data / HOSTILE_NAMES["lom"], one.lom)
    write_image(data / HOSTILE_NAMES["labels"], one.labels)
    write_image(data / HOSTILE_NAMES["mask_sem"], two.sem)
    write_image(data / HOSTILE_NAMES["mask"], (two.labels != 0).astype(np.uint8))
    sheet = tmp_path / "samples.tsv"
    rel = data.name
    sheet.write_text(
        "# comment line: whole lines starting with # are comments, a # inside a path is kept\n"
        "sample\tsplit\tsem\tlom\tmask\tlabels\tclass\n"
        f"s1\ttrain\t{rel}/{HOSTILE_NAMES['sem']}\t{rel}/{HOSTILE_NAMES['lom']}\t\t"
        f"{rel}/{HOSTILE_NAMES['labels']}\tmartensite\n"
        f"s2\tpredict\t{rel}/{HOSTILE_NAMES['mask_sem']}\t\t{rel}/{HOSTILE_NAMES['mask']}\t\t\n"
    )
    targets = ["results/registration/s1.json", "results/masks/s1.json", "results/masks/s2.json",
               "results/objects/s1.csv", "results/objects/s2.csv"]
    result = snakemake(tmp_path, "--config", f"samples={sheet.name}", "--cores", "2", *targets,
                       check=False)  # targets last: --config takes any number of values
    stray = sorted(p.name for p in tmp_path.rglob("INJECTED*"))
    assert not stray, f"a command hidden in a file name ran: {stray}"
    assert result.returncode == 0, result.stderr[-6000:]
    objects = pd.read_csv(tmp_path / "results" / "objects" / "s1.csv")
    assert len(objects) > 0 and set(objects["true_class_name"]) <= {"martensite", "matrix"}
    assert len(pd.read_csv(tmp_path / "results" / "objects" / "s2.csv")) > 0


@pytest.mark.slow
def test_labels_only_sheet_runs_the_default_target(tmp_path, default_config):
    """Issue 21 item 1: a sheet with SEM + labels only (no lom, mask or fold column) goes
    through the default target; objects then come from the labels, Fig. 4 shows no mask."""
    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import write_image
    from mvfcnn.data.synthetic import render_sample

    classes = ClassSet.from_config(default_config)
    cfg = {**default_config["synthetic"], "height": 256, "width": 256, "object_count": [4, 6],
           "object_radius_px": [18, 30]}
    rows = ["sample\tsplit\tsem\tlabels\tclass"]
    for split in ("train", "test"):
        for index, name in enumerate(classes.names[1:]):
            sample = render_sample(f"{split}_{name}_0", cfg, classes, 10 * index + len(split))
            write_image(tmp_path / f"{split}_{name}.tif", sample.sem)
            write_image(tmp_path / f"{split}_{name}_labels.tif", sample.labels)
            rows.append(f"{split}_{name}\t{split}\t{split}_{name}.tif\t"
                        f"{split}_{name}_labels.tif\t{name}")
    (tmp_path / "samples.tsv").write_text("\n".join(rows) + "\n")
    overlay = tmp_path / "labels_only.yaml"
    overlay.write_text("samples: samples.tsv\nrun: {modalities: [sem], baseline_modalities: "
                       "[sem]}\n")
    snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1", overlays=(overlay,))
    assert not (tmp_path / "results" / "masks").exists()  # no mask source, none made
    for name in ("results/tables/summary.md", "results/tables/table1.csv",
                 "results/figures/fig4_examples.png",
                 "results/mvfcnn/ft_balanced_aug/sem/metrics.json"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize(("overlay", "reruns", "keeps"), [
    # masks -> objects -> votes and the baselines' crops; the FCN and its tiles stay
    ("masking:\n  closing_radius: 3\n", {"mask", "objects", "vote"},
     {"train_fcn", "tile_index", "pretrain_trunk", "predict"}),
    # windows -> predictions -> votes; no training job
    ("inference:\n  overlap: 40\n", {"predict", "vote"},
     {"train_fcn", "tile_index", "pretrain_trunk", "mask", "objects"}),
    # the tile index -> the FCN stages -> predictions; masks and objects stay
    ("tiles:\n  stride: 48\n", {"tile_index", "train_fcn", "predict", "vote"},
     {"mask", "objects", "pretrain_trunk", "register"}),
    # a setting of the object vote only (here unused): the network's predictions stay
    ("inference:\n  object_offset_recall_slack: 0.3\n", set(),
     {"predict", "train_fcn", "tile_index", "pretrain_trunk"}),
], ids=["masking", "inference", "tiles", "vote_setting"])
def test_a_settings_change_reruns_only_what_reads_it(mini_run, tmp_path, overlay, reruns,
                                                     keeps):
    """Issue 21 item 8: a dry run after a masking.*, inference.* or tiles.* edit plans the jobs
    that read the changed section and what depends on them, and nothing upstream."""
    path = tmp_path / "change.yaml"
    path.write_text(overlay)
    planned = {rule for rule, _ in planned_jobs(
        snakemake(mini_run, "-n", "--cores", "2", overlays=(path,)).stdout)}
    assert reruns <= planned, planned
    assert not keeps & planned, planned & keeps


def test_unlabelled_rows_reach_the_ssl_pretraining_and_nothing_else(tmp_path, default_config):
    """Split `unlabelled` (issue 22): with an SSL phase the trunk pretraining reads them; no job
    looks for their objects, and without the SSL phase nothing reads them."""
    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import write_image
    from mvfcnn.data.synthetic import render_sample

    classes = ClassSet.from_config(default_config)
    cfg = {**default_config["synthetic"], "height": 128, "width": 128}
    rows = ["sample\tsplit\tsem\tlabels"]
    for index, (split, name) in enumerate((("train", "train_pearlite_0"),
                                           ("test", "test_bainite_0"),
                                           ("unlabelled", "predict_0"))):
        sample = render_sample(name, cfg, classes, index)
        write_image(tmp_path / f"{split}.tif", sample.sem)
        labels = ""
        if split != "unlabelled":
            write_image(tmp_path / f"{split}_labels.tif", sample.labels)
            labels = f"{split}_labels.tif"
        rows.append(f"{split}\t{split}\t{split}.tif\t{labels}")
    (tmp_path / "samples.tsv").write_text("\n".join(rows) + "\n")
    overlay = tmp_path / "unlabelled.yaml"
    base = ("samples: samples.tsv\nrun: {modalities: [sem], baseline_modalities: [sem], "
            "baselines: []}\n")
    for ssl, expected in ((8, True), (0, False)):
        overlay.write_text(base + f"pretrain: {{ssl_iterations: {ssl}, ssl_patch_size: 64}}\n")
        result = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--resources", "gpu=1",
                           "--forceall", overlays=(overlay,))
        shells = [line for line in result.stdout.splitlines() if "pretrain-trunk" in line]
        assert len(shells) == 1, result.stdout[-3000:]
        assert ("--unlabelled unlabelled.tif" in shells[0]) == expected, shells[0]
        assert "--sample unlabelled" not in result.stdout  # no objects job for it
        assert "results/objects/unlabelled.csv" not in result.stdout
