"""Configuration helpers shared by the workflow and the library: classes and the sample sheet."""

from __future__ import annotations

import difflib
import io
import itertools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mvfcnn.core.errors import InputError
from mvfcnn.core.settings import defaults

SAMPLE_COLUMNS = ["sample", "split", "sem", "lom", "mask", "labels", "class", "fold",
                  "crop_bottom", "scale_bar_um"]
SPLITS = ("train", "test", "predict", "unlabelled")
#: splits whose images only feed self-supervised pretraining (no objects, no prediction)
SSL_ONLY_SPLITS = ("unlabelled",)
#: a sample id names output files (results/masks/<id>.tif): no separators, spaces or quotes
SAMPLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` if none is close.

    Case is ignored and a cut-short key (``blur`` for ``blur_sigma``) counts as close.
    """
    by_lower = {str(c).lower(): str(c) for c in choices}
    key = word.lower()
    close = difflib.get_close_matches(key, list(by_lower), n=1)
    if not close and len(key) >= 3:
        close = [c for c in by_lower if c.startswith(key)][:1]
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


@dataclass(frozen=True)
class ClassSet:
    """The configured classes: index 0 is the matrix, the rest are second-phase constituents."""

    indices: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[str, ...]
    ignore_index: int = 255

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClassSet:
        entries = sorted(config["classes"], key=lambda c: c["index"])
        indices = tuple(int(c["index"]) for c in entries)
        if indices != tuple(range(len(indices))):
            raise InputError(f"class indices must be 0..K without gaps, got {list(indices)}")
        names = tuple(c["name"] for c in entries)
        if len(set(names)) != len(names):
            raise InputError(f"class names must be unique, got {list(names)}")
        ignore = int(config["ignore_index"] if "ignore_index" in config
                     else defaults("ignore_index"))
        if ignore in indices:
            raise InputError(f"ignore_index {ignore} is also the index of class "
                             f"{names[indices.index(ignore)]!r}: its pixels would never be "
                             "learned or scored; use a value outside 0..K such as 255")
        return cls(indices, names, tuple(c["color"] for c in entries), ignore)

    @property
    def num_classes(self) -> int:
        return len(self.indices)

    @property
    def foreground(self) -> tuple[int, ...]:
        """Indices of the second-phase classes (everything but the matrix, index 0)."""
        return self.indices[1:]

    @property
    def foreground_names(self) -> tuple[str, ...]:
        """Names of the second-phase classes, in index order."""
        return self.names[1:]

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"unknown class {name!r}; configured classes: "
                             f"{list(self.names)}") from None

    def rgb(self) -> list[tuple[int, int, int]]:
        """Colours as 0..255 RGB triples, in index order."""
        return [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in self.colors]  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {"classes": [{"index": i, "name": n, "color": c}
                            for i, n, c in zip(self.indices, self.names, self.colors, strict=True)],
                "ignore_index": self.ignore_index}


def check_config_keys(config: dict[str, Any], schema: dict[str, Any] | str | Path) -> None:
    """Reject config keys the schema does not know, naming the key and the closest valid one.

    A typo (``sample:``, ``masking: {treshold: ...}``) would otherwise be ignored and the run
    would silently use the defaults. JSON-schema validation rejects it too
    (``additionalProperties: false``), but its message neither names the full key nor suggests
    the intended one, so this walks the schema first.
    """
    if not isinstance(schema, dict):
        import yaml

        schema = yaml.safe_load(Path(schema).read_text())
    _check_keys(config, schema, "")


def _check_keys(value: Any, schema: dict[str, Any], where: str) -> None:
    if isinstance(value, dict):
        known = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames", {}).get("enum")
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if key in known:
                _check_keys(item, known[key], path)
            elif names is not None and key not in names:
                raise InputError(f"config: unknown key {path!r}{did_you_mean(str(key), names)}")
            elif isinstance(extra, dict):
                _check_keys(item, extra, path)
            elif extra is False:
                raise InputError(f"config: unknown key {path!r}{did_you_mean(str(key), known)}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check_keys(item, schema["items"], f"{where}[{i}]")


#: `pretrained` words that are not a file (`match`: the baselines' "as the compared variant")
PRETRAINED_WORDS = ("none", "imagenet", "patches", "match")


def check_config_files(paths: list[str | Path]) -> None:
    """Each config file (the default and every ``--configfile`` overlay) once more, for what
    Snakemake's own reading lets pass: a key given twice in one mapping, whose last value
    would silently win. (A file that is not YAML, empty, or a list never gets here: Snakemake
    stops on it first, with its own message.)"""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first:
                raise InputError(f"key {key!r} appears twice (lines {first[key]} and {line}); "
                                 "the last would silently win: keep one")
            first[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    for path in paths:
        try:
            yaml.load(Path(path).read_text(encoding="utf-8"), Loader=StrictLoader)  # noqa: S506
        except InputError as err:
            raise InputError(f"config file: {err}", path=path) from None
        except (OSError, yaml.YAMLError):
            continue  # Snakemake reported these already


#: the FCN stages in training order; each starts from the one before it (FCN-32s from the trunk)
FCN_STAGES = ("32s", "16s", "8s", "4s", "2s")


def check_config_fields(config: dict[str, Any]) -> None:
    """Rules between keys that the schema cannot state, checked when the DAG is built.

    ``config`` is schema-validated (defaults filled). The one message names the key; a relative
    ``pretrained`` path is resolved against the working directory, as the jobs resolve it.
    """
    ClassSet.from_config(config)  # indices 0..K, unique names, ignore_index not a class
    window, overlap = config["inference"]["tile_size"], config["inference"]["overlap"]
    if overlap >= window:
        raise InputError(f"inference.overlap ({overlap}) must be smaller than "
                         f"inference.tile_size ({window}): windows would not advance")
    percentiles = (config.get("prepare") or {}).get("intensity_percentiles")
    if percentiles is not None and not percentiles[0] < percentiles[1]:
        raise InputError(f"prepare.intensity_percentiles {list(percentiles)} needs low < high: "
                         "the grey values between them are stretched to the full range")
    inference = config["inference"]
    if inference["object_offsets"] != "none" and inference["object_vote"] != "second_phase":
        raise InputError(f"inference.object_offsets {inference['object_offsets']} needs "
                         "inference.object_vote second_phase: the offsets move each pixel's "
                         "choice among the non-matrix classes")
    edges = [float(e) for e in inference["object_offset_size_edges"]]
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise InputError(f"inference.object_offset_size_edges {edges} must be strictly "
                         "ascending: each edge starts the next size bin")
    size, stride = config["tiles"]["size"], config["tiles"]["stride"]
    if stride > size:
        raise InputError(f"tiles.stride ({stride}) must not exceed tiles.size ({size}): the "
                         "pixels between two training tiles would never be trained on")
    fcn = config["fcn"]
    stages = list(fcn["stages"])
    if stages != list(FCN_STAGES[:len(stages)]):
        raise InputError(f"fcn.stages {stages} must be the staged chain from 32s in order, "
                         f"e.g. {list(FCN_STAGES[:max(len(stages), 3)])}: each stage starts "
                         "from the one before it")
    for key in ("iterations", "lr"):
        missing = [stage for stage in stages if stage not in fcn[key]]
        if missing:
            raise InputError(f"fcn.{key} needs an entry for every stage in fcn.stages; missing "
                             f"{missing}")
    variants = config.get("variants") or {}
    run = config["run"]
    named = [("run.variants", v) for v in run["variants"]]
    named += [("run.combinations", c["variant"]) for c in run.get("combinations") or []]
    for key, name in named:
        if name not in variants:
            raise InputError(f"{key} names {name!r}, which is not defined under variants"
                             f"{did_you_mean(name, variants)}; defined: {sorted(variants)}")
    pretrained = [(f"variants.{n}.pretrained", v["pretrained"]) for n, v in variants.items()]
    pretrained += [(f"baselines.{n}.pretrained", config["baselines"][n]["pretrained"])
                   for n in ("vgg16", "vgg19_svm") if n in config.get("baselines", {})]
    for key, value in pretrained:
        if value not in PRETRAINED_WORDS and not Path(value).is_file():
            raise InputError(f"{key}: {value!r} is none of {list(PRETRAINED_WORDS)} and no "
                             "existing weights file" + (" (it is a directory)"
                                                        if Path(value).is_dir() else ""))


def json_arg(text: str, flag: str) -> Any:
    """A ``--*-json`` command-line argument, parsed; :class:`InputError` naming ``flag`` when
    it is not JSON (the one copy of this check for every CLI)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{flag} is not valid JSON ({err})") from err


def classes_from_json(text: str) -> ClassSet:
    """Rebuild a ClassSet from the JSON a rule passes as ``--classes-json``; :class:`InputError`
    when it is not JSON or not a class set."""
    try:
        return ClassSet.from_config(json.loads(text))
    except (InputError, KeyError, TypeError, ValueError) as err:  # ValueError: not JSON
        raise InputError(f"--classes-json is not a valid class set ({err})") from err


def load_sample_sheet(path: str | Path, classes: ClassSet | None = None) -> pd.DataFrame:
    """Read and check a sample sheet; relative file paths are relative to the working directory.

    Only whole lines starting with ``#`` are comments: real file names contain ``#``
    (``040617#2_S127(2)0015.tif``), so a ``#`` inside a value is kept. Checks what a schema
    cannot: valid and unique ids, known columns and splits, known image-level classes, and that
    a labelled split (train/test) has ground truth.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("sample sheet not found", path=path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read sample sheet ({err})", path=path) from err
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    if not text.strip():
        raise InputError("sample sheet is empty (expected a header line: "
                         f"{chr(9).join(SAMPLE_COLUMNS)})", path=path)
    try:
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False,
                            skip_blank_lines=True)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot parse sample sheet ({err})", path=path) from err
    return check_sample_sheet(frame, source=path, classes=classes)


def check_sample_sheet(frame: pd.DataFrame, *, source: str | Path = "<samples>",
                       classes: ClassSet | None = None, base: Path | None = None) -> pd.DataFrame:
    """Check a sample sheet's columns and rows (see :func:`load_sample_sheet`); index by id."""
    frame = frame.rename(columns=lambda c: str(c).strip())
    unknown = [c for c in frame.columns if c not in SAMPLE_COLUMNS]
    if unknown:
        raise InputError(f"sample sheet has unknown column {unknown[0]!r}"
                         f"{did_you_mean(unknown[0], SAMPLE_COLUMNS)}; columns are "
                         f"{SAMPLE_COLUMNS}", path=source)
    missing = [c for c in ("sample", "split", "sem") if c not in frame.columns]
    if missing:
        raise InputError(f"sample sheet lacks required column(s) {missing}", path=source)
    frame = frame.copy()
    for column in SAMPLE_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    frame = frame.fillna("").astype(str)
    if frame.empty:
        raise InputError("sample sheet has no samples (a header line only)", path=source)
    for column in SAMPLE_COLUMNS:  # an invisible space would become part of a file name
        stripped = frame[column].str.strip()
        changed = frame.loc[stripped != frame[column], "sample"].str.strip().tolist()
        if changed:
            logging.getLogger(__name__).warning(
                "%s: leading/trailing whitespace removed from column %r of sample(s) %s",
                source, column, changed[:5])
            frame[column] = stripped
    for row in frame.to_dict("records"):
        if not SAMPLE_ID.fullmatch(row["sample"]):
            raise InputError(f"sample sheet: invalid sample id {row['sample']!r} (letters, "
                             "digits, '_', '.', '-', starting with a letter or digit; it names "
                             "output files)", path=source)
    dupes = sorted(frame.loc[frame["sample"].duplicated(), "sample"].unique())
    if dupes:
        raise InputError(f"duplicate sample id(s) {dupes}", path=source)
    for row in frame.to_dict("records"):
        sample = row["sample"]
        if row["split"] not in SPLITS:
            raise InputError(f"unknown split {row['split']!r} (expected one of {list(SPLITS)})",
                             sample=sample, path=source)
        if not row["sem"]:
            raise InputError("needs a 'sem' image", sample=sample, path=source)
        if row["split"] in ("train", "test") and not row["labels"]:
            raise InputError(f"split {row['split']!r} needs a 'labels' image", sample=sample,
                             path=source)
        if row["split"] in SSL_ONLY_SPLITS:
            if row["labels"]:
                raise InputError("split 'unlabelled' is for micrographs without labels (they "
                                 "only feed the self-supervised pretraining); a labelled one "
                                 "belongs to split 'train'", sample=sample, path=source)
        elif not row["lom"] and not row["mask"] and not row["labels"]:
            raise InputError("needs a 'lom' image, a 'mask' or 'labels' to find objects",
                             sample=sample, path=source)
        if classes is not None and row["class"] and row["class"] not in classes.names:
            raise InputError(f"unknown class {row['class']!r}; configured: "
                             f"{list(classes.names)}", sample=sample, path=source)
        if row["fold"] and row["split"] != "test":
            raise InputError(f"a 'fold' (the cross-validation fold that tests this sample) needs "
                             f"split 'test', not {row['split']!r}", sample=sample, path=source)
        if row["crop_bottom"] and not str(row["crop_bottom"]).isdigit():
            raise InputError(f"crop_bottom must be a non-negative integer (rows), got "
                             f"{row['crop_bottom']!r}", sample=sample, path=source)
        if row["scale_bar_um"]:
            try:
                ok = float(row["scale_bar_um"]) > 0
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"scale_bar_um must be a positive length in µm, got "
                                 f"{row['scale_bar_um']!r}", sample=sample, path=source)
    folds = sorted({f for f in frame["fold"] if f})
    if folds and len(folds) < 2:
        raise InputError(f"cross-validation needs at least 2 folds, the sheet names {folds}",
                         path=source)
    if folds:
        unfolded = [s for s, split, f in zip(frame["sample"], frame["split"], frame["fold"],
                                             strict=True) if split == "test" and not f]
        if unfolded:
            raise InputError(f"the sheet cross-validates (it has a 'fold' column) but test "
                             f"sample(s) {unfolded[:5]} have no fold", path=source)
    if not folds and "test" in set(frame["split"]) and "train" not in set(frame["split"]):
        raise InputError("the sheet has test samples but no training sample (split 'train'): "
                         "nothing would train the networks they test", path=source)
    if base is not None:
        for column in ("sem", "lom", "mask", "labels"):
            frame[column] = [str(base / v) if v and not Path(v).is_absolute() else v
                             for v in frame[column]]
    for row in frame.to_dict("records"):
        for column in ("sem", "lom", "mask", "labels"):
            if row[column] and Path(row[column]).is_dir():
                raise InputError(f"'{column}' {row[column]!r} is a directory, not an image "
                                 "file", sample=row["sample"], path=source)
    return frame.set_index("sample", drop=False)


def cv_folds(samples: pd.DataFrame) -> list[str]:
    """The sheet's cross-validation folds (empty: one train/test split, no folds)."""
    return sorted({str(f) for f in samples["fold"] if f}, key=lambda f: (len(f), f))


def fold_samples(samples: pd.DataFrame, fold: str | None, role: str) -> list[str]:
    """Sample ids that train (``role='train'``) or test (``'test'``) the model of ``fold``.

    Without folds these are the ``train``/``test`` splits. With folds, a fold tests its own
    samples and trains on every other labelled sample (``train`` rows and other folds' tests).
    """
    if role not in ("train", "test"):
        raise ValueError(f"role must be 'train' or 'test', got {role!r}")
    split = samples["split"]
    if fold is None:
        return list(samples.index[split == role])
    fold_column = samples["fold"].astype(str)
    if role == "test":
        return list(samples.index[fold_column == str(fold)])
    labelled = split.isin(["train", "test"])
    return list(samples.index[labelled & (fold_column != str(fold))])
