"""One source of truth for settings: defaults come only from the config schema, and every key a
module reads from its section exists in the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mvfcnn.core import settings

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mvfcnn"

#: module -> (the name its section goes by in the code, the schema section(s) it reads)
READERS = {
    "fcn/train.py": ("cfg|full", ("fcn",)),
    "fcn/stage_model.py": ("cfg", ("fcn",)),
    "fcn/pretrain.py": ("cfg", ("pretrain",)),
    "objects/cli.py": ("params", ("masking",)),
    "data/synthetic.py": ("cfg", ("synthetic",)),
    "baselines/features.py": ("p", ("baselines", "handcrafted")),
    "baselines/svm.py": ("p", ("baselines", "svm")),
}


def _schema_keys(*path: str) -> set[str]:
    node = settings.schema()
    for key in path:
        node = node["properties"][key]
    return set(node["properties"])


@pytest.mark.parametrize("module", sorted(READERS))
def test_every_key_the_code_reads_is_in_the_schema(module):
    names, section = READERS[module]
    text = (SRC / module).read_text()
    read = set(re.findall(rf'\b(?:{names})\["([a-z_0-9]+)"\]', text))
    assert read, f"{module}: no section keys found (pattern out of date?)"
    unknown = read - _schema_keys(*section)
    assert not unknown, f"{module} reads {sorted(unknown)}, not in schema {'.'.join(section)}"


def test_baseline_method_sections_are_in_the_schema():
    text = (SRC / "baselines" / "run.py").read_text()
    read = set(re.findall(r'\bcfg\["([a-z_0-9]+)"\]', text))
    methods = {"cifarnet", "vgg16", "vgg19_svm"}
    known = set().union(*(_schema_keys("baselines", m) for m in methods))
    assert read and read <= known, sorted(read - known)


def test_no_module_keeps_its_own_defaults():
    offenders = [str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
                 if re.search(r"^[A-Z_]*DEFAULTS?\b[^=\n]*=", path.read_text(), re.M)]
    assert not offenders, f"defaults written outside the schema: {offenders}"


def test_defaults_equal_the_schema_and_merge_deeply():
    fcn = settings.defaults("fcn")
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert fcn["checkpoint_every"] == schema["properties"]["fcn"]["properties"][
        "checkpoint_every"]["default"] == 50
    merged = settings.with_defaults("synthetic", {"lom": {"blur_sigma": 0.5}})
    assert merged["lom"]["blur_sigma"] == 0.5 and merged["lom"]["downscale"] == 2.0
    assert merged["images_per_class"] == {"train": 1, "test": 1}
    baselines = settings.with_defaults("baselines", {"vgg16": {"epochs": 7}})
    assert baselines["vgg16"]["epochs"] == 7 and baselines["vgg16"]["lr"] == 1.0e-4
    assert baselines["svm"]["folds"] == 5
    with pytest.raises(KeyError, match="no section 'nope'"):
        settings.defaults("nope")


def test_the_workflow_schema_is_the_package_schema():
    """workflow/schemas/config.schema.yaml links to the file the package reads."""
    linked = (ROOT / "workflow" / "schemas" / "config.schema.yaml").resolve()
    assert linked == settings.SCHEMA_PATH


def test_report_view_keeps_only_report_sections():
    """Report rules hash this view into their params: resources must not be in it, every
    section the tables and figures read must."""
    from mvfcnn.core.settings import REPORT_SECTIONS, report_view, schema

    top = set(schema()["properties"])
    assert set(REPORT_SECTIONS) <= top
    left_out = top - set(REPORT_SECTIONS)
    assert left_out == {"registration", "masking", "classify", "crossval", "resources"}
    config = {key: {"x": 1} for key in top}
    view = report_view(config)
    assert set(view) == set(REPORT_SECTIONS)
    view["fcn"]["x"] = 2
    assert config["fcn"]["x"] == 1  # a copy


def test_layout_under_re_roots_a_rule_pattern():
    """The report finds a rule's output at the same pattern under its --results-dir."""
    from pathlib import Path

    from mvfcnn.core import layout

    assert layout.under("/x/res", layout.run_dir(False), variant="v", modality="sem") == Path(
        "/x/res/mvfcnn/v/sem")
    assert layout.under("res", layout.OBJECT_IDS, sample="a b#1") == Path("res/objects/a b#1.tif")
    assert layout.under("r", layout.BASELINE_DIR, method="vgg16", modality="lom") == Path(
        "r/baselines/vgg16/lom")
    assert layout.under("r", layout.SYNTHETIC) == Path("r/synthetic")
