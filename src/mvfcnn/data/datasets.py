"""Adapters from published dataset releases to the sample sheet, so the files stay as released.

An adapter only translates a release's own index (here MetalDAM's ``metadata.sqlite``) into the
generic sample-sheet columns (``sem``, ``labels``, ``fold``, ``crop_bottom``,
``scale_bar_um``); everything a release needs beyond that (grey from RGB JPEG, the information
band, RGB label maps) is done by :mod:`mvfcnn.data.prepare` for any dataset with those columns.
:func:`workflow_sample_sheet` picks the sheet ``samples:`` names (synthetic, MetalDAM or a TSV).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from mvfcnn.core.config import ClassSet, check_sample_sheet, load_sample_sheet
from mvfcnn.core.errors import InputError
from mvfcnn.data.synthetic import sample_sheet as synthetic_sheet

#: MetalDAM's classes in label-value order (its README); config/metaldam.yaml names them
METALDAM_CLASSES = ("matrix", "austenite", "martensite_austenite", "precipitate", "defect")


def _ids(text: str, *, fold: int, table: str, known: set[int], path: Path) -> list[int]:
    try:
        ids = [int(token) for token in str(text).replace(" ", "").split(",") if token]
    except ValueError as err:
        raise InputError(f"fold {fold}: {table} is not a comma-separated list of image ids "
                         f"({text!r})", path=path) from err
    unknown = sorted(set(ids) - known)
    if unknown:
        raise InputError(f"fold {fold}: {table} names image id(s) {unknown} that are not in "
                         "the micrograph table", path=path)
    return ids


def metaldam_sample_sheet(root: str | Path) -> pd.DataFrame:
    """The MetalDAM release (images/, labels/, metadata.sqlite) as a sample sheet with folds.

    Every image is tested in exactly one of the release's folds (split ``test``, ``fold`` = that
    fold) and trains the models of the other folds. Paths are kept as given (relative to the
    working directory when ``root`` is relative).
    """
    root = Path(root)
    database = root / "metadata.sqlite"
    if not database.is_file():
        raise InputError("MetalDAM metadata not found (expected the release's metadata.sqlite; "
                         "set metaldam.path to the folder holding images/, labels/ and it)",
                         path=database)
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            images = pd.read_sql_query(
                "SELECT micrograph_id, image_path, annotation_path, micron_bar, "
                "micron_bar_units, cropbar FROM micrograph ORDER BY micrograph_id", connection)
            folds = pd.read_sql_query(
                "SELECT fold_id, train_partition, test_partition FROM folds ORDER BY fold_id",
                connection)
    except (sqlite3.Error, pd.errors.DatabaseError) as err:
        raise InputError(f"cannot read the MetalDAM tables micrograph/folds ({err})",
                         path=database) from err
    known = set(int(i) for i in images["micrograph_id"])
    fold_of: dict[int, int] = {}
    for row in folds.itertuples(index=False):
        test = _ids(row.test_partition, fold=row.fold_id, table="test_partition", known=known,
                    path=database)
        train = _ids(row.train_partition, fold=row.fold_id, table="train_partition",
                     known=known, path=database)
        if set(test) & set(train):
            raise InputError(f"fold {row.fold_id}: image id(s) {sorted(set(test) & set(train))} "
                             "are both train and test", path=database)
        for image_id in test:
            if image_id in fold_of:
                raise InputError(f"image id {image_id} is tested in folds {fold_of[image_id]} "
                                 f"and {row.fold_id}", path=database)
            fold_of[image_id] = int(row.fold_id)
    rows = []
    for row in images.itertuples(index=False):
        image_id = int(row.micrograph_id)
        units = str(row.micron_bar_units or "").strip().lower()
        bar_um = float(row.micron_bar) if units in {"um", "µm"} and row.micron_bar else None
        rows.append({
            "sample": f"micrograph{image_id}",
            "split": "test" if image_id in fold_of else "train",
            "sem": str(root / row.image_path),
            "labels": str(root / row.annotation_path),
            "fold": str(fold_of[image_id]) if image_id in fold_of else "",
            "crop_bottom": str(int(row.cropbar or 0)),
            "scale_bar_um": "" if bar_um is None else repr(bar_um),
        })
    return pd.DataFrame(rows)


def workflow_sample_sheet(config: dict[str, Any], classes: ClassSet,
                          synthetic_dir: str | Path) -> pd.DataFrame:
    """The checked sample sheet ``config["samples"]`` names: the synthetic set's (its images
    under ``synthetic_dir``), MetalDAM's (from its metadata.sqlite) or a TSV file. The workflow
    and the report both read it through here."""
    samples = config["samples"]
    if samples == "synthetic":
        frame = synthetic_sheet(config["synthetic"], str(synthetic_dir), classes)
        return check_sample_sheet(frame, classes=classes)
    if samples == "metaldam":
        root = config["metaldam"]["path"]
        return check_sample_sheet(metaldam_sample_sheet(root), classes=classes,
                                  source=Path(root) / "metadata.sqlite")
    return load_sample_sheet(samples, classes)
