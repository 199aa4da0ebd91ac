"""A tuned grid's part of the report: what each cell's search selected, and what its re-runs gave.

Read from the study folder only: selection.json (written once between the
two phases), the search rows and the re-run rows of results.parquet. Where a
fixed-hyperparameter twin of the study is given (same factors), its cells
stand beside the tuned ones.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from ptlab.report.aggregate import COMPLETED, StudyResults, cell_summary, format_number, load_study, metric_columns
from ptlab.study.layout import SELECTION_FILE
from ptlab.study.schema import STATUS

RESULT = "test_acc"


def read_selection(study: StudyResults) -> dict | None:
    path = study.folder / SELECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def rule_label(selection: dict) -> str:
    """How the configurations were chosen, oracle never passing for a fair result."""
    if selection["selection"] == "oracle":
        return f"ORACLE: selected by {selection['metric']} on test data, an upper bound, not a fair result"
    return f"selected by {selection['metric']} on validation ({selection['mode']})"


def _factors(study: StudyResults) -> list[str]:
    return list((study.spec.get("factors") or {}).keys())


def _matching(rows: pl.DataFrame, cell: dict) -> pl.DataFrame:
    for path, value in cell.items():
        rows = rows.filter(pl.col(path) == value)
    return rows


def _result(rows: pl.DataFrame, factors: list[str], prefix: str) -> dict:
    """Mean ± 95% CI of the test accuracy of one cell's result rows."""
    if rows.is_empty() or RESULT not in rows.columns:
        return {f"{prefix}{RESULT}": None, f"{prefix}ci95": None, f"{prefix}seeds": 0}
    summary = cell_summary(rows, factors, metric_columns(rows))
    row = summary.row(0, named=True) if summary.height else {}
    return {f"{prefix}{RESULT}": row.get(f"{RESULT}_mean"), f"{prefix}ci95": row.get(f"{RESULT}_ci95"),
            f"{prefix}seeds": int(row.get("n_seeds", 0) or 0)}


def tuned_cells(study: StudyResults, selection: dict, fixed: StudyResults | None = None) -> pl.DataFrame:
    """Per cell: factors, the selected values, the search's size, pruned share and best value, the re-runs' test accuracy."""
    factors = _factors(study)
    rows = []
    for chosen in selection["cells"].values():
        cell = chosen["cell"]
        row = {**cell, **{f"selected {path}": value for path, value in chosen["params"].items()}}
        row.update({"samples": chosen["samples"], "pruned %": 100 * chosen["pruned"] / max(chosen["samples"], 1),
                    f"best {selection['metric']}": chosen["value"]})
        row.update(_result(_matching(study.cell_trials, cell), factors, "tuned "))
        if fixed is not None:
            row.update(_result(_matching(fixed.cell_trials, cell), factors, "fixed "))
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def selected_figure(cells: pl.DataFrame, selection: dict, factors: list[str]) -> go.Figure:
    """Each searched field's selected value against the first numeric factor (noise rate), one line per other cell."""
    searched = [c for c in cells.columns if c.startswith("selected ")]
    numeric = [f for f in factors if cells.schema[f].is_numeric()]
    x = "noise_rate" if "noise_rate" in factors else (numeric or factors)[0]
    others = [f for f in factors if f != x]
    fig = go.Figure()
    for column in searched:
        groups = cells.partition_by(others, maintain_order=True) if others else [cells]
        for group in groups:
            group = group.sort(x)
            name = ", ".join(f"{f}={group[f][0]}" for f in others) or "all"
            fig.add_trace(go.Scatter(x=group[x].to_list(), y=group[column].to_list(), mode="lines+markers",
                                     name=f"{name}" + (f" ({column})" if len(searched) > 1 else "")))
    log = any(c.endswith("lr") for c in searched)
    fig.update_layout(xaxis_title=x, yaxis_title=", ".join(searched), yaxis_type="log" if log else None,
                      template="plotly_white", height=420, title=rule_label(selection))
    return fig


def _cell_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.1 and value else format_number(value)
    return "–" if value is None else str(value)


def _html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell_text(v))}</td>" for v in row) + "</tr>"
                   for row in frame.iter_rows())
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _with_intervals(cells: pl.DataFrame) -> pl.DataFrame:
    """`tuned test_acc` and its ci95 as one '81.2 ± 1.3' column, likewise for the fixed twin."""
    out = cells
    for prefix in ("tuned ", "fixed "):
        mean, ci = f"{prefix}{RESULT}", f"{prefix}ci95"
        if mean not in out.columns:
            continue
        text = [("–" if m is None else f"{m:.1f}" + ("" if c is None or not math.isfinite(c) else f" ± {c:.1f}"))
                for m, c in zip(out[mean].to_list(), out[ci].to_list(), strict=True)]
        out = out.with_columns(pl.Series(f"{prefix}{RESULT} (mean ± 95% CI)", text)).drop(mean, ci)
    return out


def tuned_section(study: StudyResults, fixed_dir: str | Path | None = None) -> str:
    """The report's tuned-grid section; empty for other studies."""
    selection = read_selection(study)
    if selection is None:
        if study.search.is_empty():
            return ""
        return ('<h2 id="tuned">Tuned grid</h2><p class="note">The searches have not all ended: no configuration '
                f"is selected yet ({study.search.height} search trials stored).</p>")
    fixed = load_study(fixed_dir) if fixed_dir else None
    cells = tuned_cells(study, selection, fixed)
    factors = _factors(study)
    figure = selected_figure(cells, selection, factors).to_html(
        full_html=False, include_plotlyjs=False, div_id="plot-selected", config={"displaylogo": False})
    done = study.trials.filter(pl.col(STATUS) == COMPLETED).height if not study.trials.is_empty() else 0
    parts = [
        '<h2 id="tuned">Tuned grid</h2>',
        f"<p><b>{escape(rule_label(selection))}</b>. Every cell had its own Optuna search of "
        f"{selection['cells'] and next(iter(selection['cells'].values()))['samples']} samples with ASHA; the selected "
        f"configuration was re-run for every seed to the end ({done} completed re-runs), and only those re-runs are "
        "the cell's result (mean ± 95% CI over seeds, Student t). The summary above is made of the re-runs.</p>",
        _html_table(_with_intervals(cells)),
        f'<section class="figure"><h3>Selected values per cell</h3>{figure}</section>',
    ]
    if fixed is not None:
        parts.append(f"<p>fixed: the same cells in {escape(fixed.name)} at one fixed configuration "
                     f"({escape(str(fixed.folder))}).</p>")
    return "".join(parts)
