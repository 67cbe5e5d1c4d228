"""Rendering of report tables: markdown files for readers, HTML pages for the Snakemake report.

The table frames themselves come from :mod:`mvfcnn.report.tables` (computation) and the
summary prose from :mod:`mvfcnn.report.summary`; this module only turns frames and text into
files. HTML tables are written by pandas (``DataFrame.to_html``); free text (notes, the summary
page) is shown as the markdown it is, in a ``<pre>`` block, rather than through a hand-written
markdown parser.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.io import write_table, write_text
from mvfcnn.evaluation.metrics import NOT_SEGMENTED_LABEL

PIXEL_LABELS = {"pixel_accuracy": "pixel acc.", "mean_accuracy": "mean acc.",
                "mean_iu": "mean IU", "fw_iu": "f.w. IU"}
TITLES = {
    "table1": "Table 1. Object classification accuracy (%), SEM: object-based baselines vs MVFCNN",
    "table2": "Table 2. MVFCNN training data and strategy vs test object accuracy (%), SEM",
    "table3": "Table 3. Object classification accuracy (%), LOM vs SEM",
    "table4": "Table 4. Object confusion matrix of the best MVFCNN (rows predicted, columns "
              "actual)",
    "table5": "Table 5. Pixel-wise segmentation metrics (%) of the FCN configurations",
    "table6": "Table 6. Per-class pixel accuracy (%) of the FCN configurations",
}
_STYLE = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;"
          "margin:8px 0}th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}"
          "th{background:#eee}td:first-child,th:first-child{text-align:left}"
          "pre{white-space:pre-wrap;font-size:12px}")


# ----------------------------------------------------------------------------------------------
# Cells and markdown


def cell(value: Any, *, integer: bool = False, markdown: bool = True) -> str:
    """One table cell as text: empty for None/NaN, 2 decimals (or 0 with ``integer``), ✓/- for
    booleans; ``markdown`` escapes the pipe that would end a markdown cell."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "✓" if value else "-"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return f"{value:.0f}" if integer else f"{value:.2f}"
    if isinstance(value, int | np.integer):
        return str(value)
    return str(value).replace("|", "\\|") if markdown else str(value)


def markdown_table(frame: pd.DataFrame, *, integer_rows: pd.Series | None = None) -> str:
    """A GitHub-markdown table; empty cells for NaN, 2 decimals, ✓/- for booleans."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c])
                           and not pd.api.types.is_bool_dtype(frame[c]) else "---"
                           for c in frame.columns) + "|"
    lines = [header, align]
    for pos, (_, row) in enumerate(frame.iterrows()):
        integer = bool(integer_rows.iloc[pos]) if integer_rows is not None else False
        lines.append("| " + " | ".join(cell(v, integer=integer) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _configuration_notes(frame: pd.DataFrame, key: list[str]) -> str:
    lines = []
    for _, row in frame.iterrows():
        text = row.get("configuration", "")
        if isinstance(text, str) and text:
            label = " / ".join(str(row[k]) for k in key if k in row)
            lines.append(f"- **{label}**: {text}")
    if not lines:
        return "Configuration of ours: no run of this table exists yet in this configuration.\n"
    return "Configuration that produced ours:\n\n" + "\n".join(lines) + "\n"


def _pretty(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """The shown columns that the frame has (a dataset that is not the paper's has no paper
    columns)."""
    present = {k: v for k, v in columns.items() if k in frame.columns}
    return frame[list(present)].rename(columns=present)


def _pair_columns(frame: pd.DataFrame, keys: list[str], labels: dict[str, str]
                  ) -> dict[str, str]:
    out = {k: k for k in keys}
    for stem, label in labels.items():
        out[f"{stem}_ours"] = f"{label} (ours)"
        out[f"{stem}_paper"] = f"{label} (paper)"
    return {k: v for k, v in out.items() if k in frame.columns}


def shown_table(name: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """What a reader sees of tables 1-3, 5, 6: the displayed columns (ours beside the paper)
    and the markdown text under the table. Shared by the markdown and the HTML rendering."""
    if name == "table1":
        return (_pretty(frame, {"label": "method", "type": "type",
                                "strategy": "training strategy", "ours": "ours",
                                "paper": "paper"}),
                _configuration_notes(frame, ["method"]))
    if name == "table2":
        return (_pretty(frame, {"variant": "variant", "training_data": "training data",
                                "strategy": "training strategy", "ours": "ours",
                                "paper": "paper"}),
                _configuration_notes(frame, ["variant"]))
    if name == "table3":
        return (_pretty(frame, _pair_columns(frame, ["label", "input", "strategy"],
                                             {"lom": "LOM", "sem": "SEM"})),
                ("Paper SEM values of the object-based methods are from Table 1 (Table 3 "
                 "prints only MVFCNN on SEM).\n\n" if "sem_paper" in frame.columns else "")
                + _configuration_notes(frame, ["method"]))
    if name == "table5":
        labels = PIXEL_LABELS
    else:
        labels = {c[:-len("_ours")]: c[:-len("_ours")] for c in frame.columns
                  if c.endswith("_ours")}
    return (_pretty(frame, _pair_columns(
        frame, ["data", "balanced", "augmented", "strategy", "variant"], labels)),
        _configuration_notes(frame, ["variant", "modality"]))


def _t4_blocks(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame, list[str], list[str]]]:
    """Table 4 as the paper prints it, per source (ours, paper): (title, one row of cell texts
    per predicted class with count and column percentage in one cell, the class-recall cells,
    the bullet lines under the block)."""
    names = [c for c in frame.columns
             if c not in ("source", "predicted", "quantity", "class_precision", "overall")]
    blocks = []
    for source in ("ours", "paper"):
        block = frame[frame["source"] == source]
        if block.empty:  # no paper block when the dataset is not the paper's
            continue
        title = "Ours" if source == "ours" else "Paper (Azimi et al. 2018, Table 4)"
        rows = []
        for name in names:
            count = block[(block["predicted"] == name) & (block["quantity"] == "count")].iloc[0]
            pct = block[(block["predicted"] == name) & (block["quantity"] == "percent")].iloc[0]
            cells = []
            for n in names:
                c, p = cell(count[n], integer=True), cell(pct[n])
                cells.append(f"{c} ({p}%)" if c and p else c or (f"({p}%)" if p else ""))
            prec = cell(pct["class_precision"])
            rows.append([name, *cells, prec + "%" if prec else ""])
        shown = pd.DataFrame(rows, columns=["predicted \\ actual", *names, "class precision"])
        recall = block[block["predicted"] == "class_recall"].iloc[0]
        recall_cells = [(cell(recall[n]) + "%") if cell(recall[n]) else "" for n in names]
        single = {r["predicted"]: r["overall"] for _, r in block.iterrows()
                  if r["predicted"] in (NOT_SEGMENTED_LABEL, "total_accuracy", "object_accuracy")}
        bullets = [f"total accuracy (segmented objects only): "
                   f"{cell(single.get('total_accuracy')) or 'n/a'}%",
                   f"not-segmented objects (excluded above): "
                   f"{cell(single.get(NOT_SEGMENTED_LABEL), integer=True) or 'n/a'}",
                   f"object accuracy (not-segmented counted wrong, = Table 1): "
                   f"{cell(single.get('object_accuracy')) or 'n/a'}%"]
        not_seg = block[block["predicted"] == NOT_SEGMENTED_LABEL].iloc[0]
        per_class = [f"{n} {cell(not_seg[n], integer=True)}" for n in names
                     if cell(not_seg[n], integer=True)]
        if per_class:
            bullets.append("not-segmented per actual class: " + ", ".join(per_class))
        blocks.append((title, shown, recall_cells, bullets))
    return blocks


def table4_markdown(frame: pd.DataFrame) -> str:
    """Table 4 as the paper prints it: count and column percentage in one cell, one block per
    source (ours, paper)."""
    parts = []
    for title, shown, recall_cells, bullets in _t4_blocks(frame):
        names = list(shown.columns[1:-1])
        lines = [f"**{title}**", "",
                 "| predicted \\ actual | " + " | ".join(names) + " | class precision |",
                 "|---|" + "---:|" * (len(names) + 1)]
        lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
        lines.append("| class recall | " + " | ".join(recall_cells) + " | |")
        lines += [""] + [f"- {b}" for b in bullets]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def render_markdown(name: str, frame: pd.DataFrame, notes: str = "") -> str:
    """One table file: title, the table (ours beside the paper), the configuration notes."""
    title = f"# {TITLES[name]}\n\n"
    if name == "table4":
        body = table4_markdown(frame)
    else:
        shown, under = shown_table(name, frame)
        body = markdown_table(shown) + "\n" + under
    return title + body + ("\n" + notes if notes else "")


# ----------------------------------------------------------------------------------------------
# HTML


def frame_html(frame: pd.DataFrame, *, index: bool = False) -> str:
    """A frame as an HTML table by pandas, cells already text; the page's stylesheet styles it,
    so pandas' own table attributes (border, CSS classes) are dropped."""
    text = frame.to_html(index=index, na_rep="", border=0)
    return re.sub(r"<table[^>]*>", "<table>", text, count=1)


def text_html(text: str) -> str:
    """Free text (markdown as written to the .md files) shown verbatim, escaped."""
    return f"<pre>{html.escape(text.strip())}</pre>" if text.strip() else ""


def html_page(body: str) -> str:
    """A standalone HTML page the Snakemake report can embed."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as :func:`cell` text (for pandas' HTML, which would print NaN and 0.1234)."""
    return frame.map(lambda v: cell(v, markdown=False))


def render_html(name: str, frame: pd.DataFrame, notes: str = "") -> str:
    """One table page: the same title, table and notes as :func:`render_markdown`."""
    parts = [f"<h1>{html.escape(TITLES[name])}</h1>"]
    if name == "table4":
        for title, shown, recall_cells, bullets in _t4_blocks(frame):
            recall = pd.DataFrame([["class recall", *recall_cells, ""]], columns=shown.columns)
            parts += [f"<h2>{html.escape(title)}</h2>",
                      frame_html(pd.concat([shown, recall], ignore_index=True)),
                      "<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in bullets) + "</ul>"]
    else:
        shown, under = shown_table(name, frame)
        parts += [frame_html(as_text(shown)), text_html(under)]
    parts.append(text_html(notes))
    return html_page("".join(parts))


def markdown_page_html(markdown: str) -> str:
    """A markdown document (e.g. summary.md) as an HTML page: the text itself, verbatim."""
    return html_page(text_html(markdown))


# ----------------------------------------------------------------------------------------------
# Files


def write_tables(tables: dict[str, pd.DataFrame], outdir: str | Path, *, html: bool = True,
                 notes: dict[str, str] | None = None) -> list[Path]:
    """table{N}.csv + .md (+ .html for the Snakemake report), each written atomically;
    ``notes`` adds a footer per table name."""

    outdir = Path(outdir)
    written = []
    for name, frame in tables.items():
        note = (notes or {}).get(name, "")
        write_table(outdir / f"{name}.csv", frame)
        write_text(outdir / f"{name}.md", render_markdown(name, frame, note))
        written += [outdir / f"{name}.csv", outdir / f"{name}.md"]
        if html:
            write_text(outdir / f"{name}.html", render_html(name, frame, note))
            written.append(outdir / f"{name}.html")
    return written
