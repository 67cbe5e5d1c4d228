"""Figures 4, 6, 7, 8a, 8b from tiny fake results: every file is written, placeholders replace
missing inputs, and class colours/names come from the config alone."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet
from mvfcnn.core.io import write_image
from mvfcnn.evaluation.evaluate import write_evaluation
from mvfcnn.evaluation.voting import vote
from mvfcnn.objects.components import find_objects
from mvfcnn.report import collect as C
from mvfcnn.report import figure_kit as K
from mvfcnn.report import figures as F
from mvfcnn.report import noise_figure as N
from mvfcnn.report import tables as T
from mvfcnn.report.cli import figures as figures_cli

SIZE = 64
PATCH = 32
DPI = 30                      # small PNGs keep the tests fast
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _labels(seed: int) -> np.ndarray:
    """Matrix with one square of each foreground class and an ignore ring around one."""
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for cls, (y, x) in enumerate([(4, 4), (4, 36), (36, 4), (36, 36)], start=1):
        o = (seed + cls) % 4
        labels[y + o:y + o + 20, x:x + 20] = cls
    labels[2, 2:10] = 255
    return labels


def _make_results(root, classes: ClassSet, modalities=("sem", "lom")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for sample, split in (("tr0", "train"), ("te0", "test"), ("te1", "test")):
        labels = _labels(len(rows))
        sem = (rng.random((SIZE, SIZE)) * 120 + labels.astype(float) * 25).astype(np.uint8)
        write_image(root / "data" / f"{sample}_sem.tif", sem)
        write_image(root / "data" / f"{sample}_labels.tif", labels)
        write_image(root / "registration" / f"{sample}_lom.tif",
                    np.stack([255 - sem] * 3, axis=-1))
        mask = ((labels > 0) & (labels < 255)).astype(np.uint8)
        write_image(root / "masks" / f"{sample}.tif", mask)
        ids = find_objects(mask.astype(bool))  # the workflow's objects (8-connected)
        write_image(root / "objects" / f"{sample}.tif", ids)
        rows.append({"sample": sample, "split": split,
                     "sem": str(root / "data" / f"{sample}_sem.tif"), "lom": "x", "mask": "",
                     "labels": str(root / "data" / f"{sample}_labels.tif"), "class": ""})
        if split != "test":
            continue
        for modality in modalities:
            pred = labels.copy()
            pred[pred == 255] = 0
            pred[36:56, 36:46] = 3 if modality == "sem" else 1          # pearlite half wrong
            if modality == "lom":
                pred[4:24, 4:24] = 0                                   # martensite missed
            write_image(root / "mvfcnn" / "ft_balanced_aug" / modality / "pred" / f"{sample}.tif",
                        pred)
    frame = pd.DataFrame(rows).set_index("sample", drop=False)
    for modality in modalities:
        objects = []
        for sample in ("te0", "te1"):
            ids = np.asarray(K.read_optional(root / "objects" / f"{sample}.tif"))
            labels = np.asarray(K.read_optional(root / "data" / f"{sample}_labels.tif"))
            run = root / "mvfcnn" / "ft_balanced_aug" / modality
            pred = np.asarray(K.read_optional(run / "pred" / f"{sample}.tif"))
            voted = vote(pred, ids, classes.num_classes).set_index("object_id")
            for obj in voted.index:
                true = int(np.bincount(labels[ids == obj]).argmax())
                objects.append({"sample": sample, "object_id": int(obj), "true_class": true,
                                "pred_class": int(voted.loc[obj, "pred_class"]),
                                "confidence": 1.0})
        run = root / "mvfcnn" / "ft_balanced_aug" / modality
        write_evaluation(pd.DataFrame(objects), classes, method="mvfcnn", modality=modality,
                         variant="ft_balanced_aug", out_metrics=run / "metrics.json",
                         out_objects=run / "objects.csv", out_confusion=run / "confusion.csv",
                         pixel_confusion=np.eye(classes.num_classes, dtype=np.int64) * 10 + 1)
    return frame


def _config(default_config, modalities=("sem", "lom")):
    config = copy.deepcopy(default_config)
    config["run"] = {"variants": ["ft_balanced_aug"], "modalities": list(modalities),
                     "baselines": [], "baseline_modalities": []}
    return config


def _fake_predictor(patch: np.ndarray) -> np.ndarray:
    """Bright -> martensite, else matrix: enough to exercise the figure."""
    return (patch > 150).astype(np.uint8)


@pytest.fixture()
def fake(tmp_path, default_config):
    config = _config(default_config)
    classes = ClassSet.from_config(config)
    samples = _make_results(tmp_path, classes)
    return tmp_path, config, samples


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_every_figure_is_written(fake, tmp_path):
    root, config, samples = fake
    ctx = K.make_context(root, config, samples)
    written = F.write_figures(ctx, tmp_path / "figs", predictor=_fake_predictor, patch=PATCH,
                              dpi=DPI)
    assert [p.name for p in written] == list(F.FIGURES.values())
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    assert not list((tmp_path / "figs").glob(".*tmp*"))          # atomic: no leftovers


def test_figure_content(fake):
    root, config, samples = fake
    ctx = K.make_context(root, config, samples)
    fig6 = F.make_figure("fig6", ctx, patch=PATCH)
    titles = [ax.get_title() for ax in fig6.axes]
    assert any("prediction, fg acc. 100.0%" in t for t in titles)   # a success
    assert any("(b)" in t for t in titles)                          # a failure column
    assert any(ax.get_xlabel().startswith("te") for ax in fig6.axes)  # sample names
    assert "matrix" in _legend_texts(fig6) and "pearlite" in _legend_texts(fig6)
    fig7 = F.make_figure("fig7", ctx)
    assert "not segmented" in _legend_texts(fig7)
    assert any("max-voted" in ax.get_title() for ax in fig7.axes)
    fig8a = F.make_figure("fig8a", ctx, patch=PATCH)
    assert any("LOM segmentation" in ax.get_title() for ax in fig8a.axes)
    fig8b = F.make_figure("fig8b", ctx, predictor=_fake_predictor, patch=PATCH)
    assert any("with dirt" in ax.get_title() for ax in fig8b.axes)
    assert fig8b.axes[0].get_ylabel() == "matrix"                   # plain ferrite patch first


def test_object_maps_colours():
    classes = ClassSet.from_config({"classes": [
        {"index": 0, "name": "matrix", "color": "#000000"},
        {"index": 1, "name": "a", "color": "#ff0000"},
        {"index": 2, "name": "b", "color": "#00ff00"}]})
    ids = np.array([[0, 1, 2, 3]])
    table = pd.DataFrame({"object_id": [1, 2, 3], "true_class": [1, 2, 0],
                          "pred_class": [2, -1, 1]})
    truth, voted = F.object_maps(ids, table, classes)
    assert truth[0].tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], list(K.NO_TRUTH_RGB)]
    assert voted[0].tolist() == [[0, 0, 0], [0, 255, 0], [255, 255, 255], [255, 0, 0]]


def test_placeholders_when_inputs_missing(tmp_path, default_config):
    root = tmp_path
    config = _config(default_config, modalities=("sem",))
    classes = ClassSet.from_config(config)
    samples = _make_results(root, classes, modalities=("sem",))
    ctx = K.make_context(root, config, samples)
    fig8a = F.make_figure("fig8a", ctx, patch=PATCH)
    assert "LOM was not run" in fig8a.axes[0].texts[0].get_text()
    fig8b = F.make_figure("fig8b", ctx, patch=PATCH)             # no model file written
    assert "No trained SEM model" in fig8b.axes[0].texts[0].get_text()
    empty = K.make_context(tmp_path / "nothing", config, samples)
    for name in ("fig6", "fig7"):
        assert "No MVFCNN result" in F.make_figure(name, empty).axes[0].texts[0].get_text()


def test_artefacts_are_reproducible():
    base = np.full((40, 40), 0.5, dtype=np.float32)
    for kind in N.ARTEFACTS:
        a = N.add_artefacts(base, kind, np.random.default_rng(3))
        b = N.add_artefacts(base, kind, np.random.default_rng(3))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, base) and a.min() >= 0 and a.max() <= 1


def test_pick_extremes():
    classes = ClassSet.from_config({"classes": [{"index": 0, "name": "m", "color": "#000000"},
                                                {"index": 1, "name": "a", "color": "#ff0000"}]})
    patches = [F.Patch("s", 0, i, 8, 1, 10, acc) for i, acc in enumerate([0.5, 0.9, 0.1])]
    best, worst = F.pick_extremes(patches, classes)
    assert best[0].accuracy == 0.9 and worst[0].accuracy == 0.1


def test_colour_and_name_come_from_config(fake, tmp_path, repo_root):
    root, config, samples = fake

    def render(cfg, name):
        ctx = K.make_context(root, cfg, samples)
        return F.write_figures(ctx, tmp_path / name, ["fig7"], patch=PATCH, dpi=DPI)

    before = [p.read_bytes() for p in render(config, "a")]
    recoloured = copy.deepcopy(config)
    recoloured["classes"][4]["color"] = "#ff8800"                  # pearlite orange
    after = [p.read_bytes() for p in render(recoloured, "b")]
    assert all(x != y for x, y in zip(before, after, strict=True))
    again = [p.read_bytes() for p in render(config, "c")]
    assert again == before                                         # deterministic otherwise

    renamed = copy.deepcopy(config)
    renamed["classes"][2]["name"] = "tempered"
    ctx = K.make_context(root, renamed, samples)
    texts = _legend_texts(F.make_figure("fig6", ctx, patch=PATCH))
    assert "tempered" in texts and "tempered_martensite" not in texts

    # the tables follow the renamed class too (Table 4 / 6 headers)
    paper = C.load_paper(repo_root / "workflow/resources/paper_tables.yaml")
    tables = T.build_tables(root, ClassSet.from_config(renamed), renamed, paper)
    assert "tempered" in tables["table4"].columns
    assert "tempered_ours" in tables["table6"].columns


def test_cli_selection(fake, tmp_path):
    root, config, samples = fake
    # the CLI builds the sample sheet from config; point it at a real TSV of the fake samples
    sheet = tmp_path / "samples.tsv"
    samples.to_csv(sheet, sep="\t", index=False)
    config = dict(config, samples=str(sheet))
    out = tmp_path / "cli"
    assert figures_cli(["--results-dir", str(root), "--config-json", json.dumps(config),
                        "--outdir", str(out), "--which", "fig4", "fig7", "--patch",
                        str(PATCH)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fig4_examples.png", "fig7_maxvoting.png"]
