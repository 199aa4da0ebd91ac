"""The study report: one HTML file that opens offline, plotly.js inlined once.

Order of the page: status banner (partial or complete), overview, summary
table, robustness table, excluded trials, the dashboard's figures, the study
spec. The tables also go beside it as CSV and Markdown.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from pathlib import Path

import polars as pl
from plotly.offline import get_plotlyjs

from ptlab.report.aggregate import (
    COMPLETED,
    StudyResults,
    cell_summary,
    excluded_trials,
    export_tables,
    format_number,
    load_study,
    paper_table,
    robustness_summary,
)
from ptlab.report.dashboard import Dashboard, choose_dashboard, load_dashboard
from ptlab.report.figures import Rendered, render
from ptlab.study.store import ENSEMBLE_SIZE

PROVENANCE = ("ptlab_version", "git_commit", "torch_version", "open_clip_version", "ray_version")

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 28px 60px; background: #fff; }
h1 { margin: 8px 0 2px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.sub { color: #666; margin: 0 0 12px; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.banner.partial { background: #fff4d6; border: 1px solid #e0b440; }
.banner.complete { background: #e3f4e6; border: 1px solid #6dbb7c; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; white-space: nowrap; }
th { background: #f1f3f6; } tr:nth-child(even) td { background: #fafbfc; }
td.wrap { white-space: normal; max-width: 520px; }
.scroll { overflow-x: auto; }
.figure { margin: 22px 0 34px; } .figure p { color: #555; margin: 2px 0 6px; }
.note { color: #8a6d00; font-style: italic; }
pre { background: #f5f6f8; padding: 12px; overflow-x: auto; font-size: 13px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; } dt { color: #666; } dd { margin: 0; }
"""


def build_report(study_dir: str | Path, dashboard: str | Path | None = None) -> Path:
    """Aggregate a study folder and write report/index.html plus its tables; returns the HTML path.

    ``dashboard`` overrides the one the study names (its ``report`` field).
    """
    study = load_study(study_dir)
    board_path = choose_dashboard(study.spec, study.folder / "study.yaml", dashboard)
    board = load_dashboard(board_path)
    cells = cell_summary(study.rows, study.keys, study.metrics) if not study.rows.is_empty() else pl.DataFrame()
    primary = next((m for m in board.summary.metrics if m in study.metrics), "test_acc")
    robustness = robustness_summary(cells, study.keys, primary) if not cells.is_empty() else pl.DataFrame()
    out = study.folder / "report"
    tables = export_tables(study, cells, robustness, out)
    figures = [render(spec, study, cells) for spec in board.figures]
    page = out / "index.html"
    page.write_text(_page(study, board, board_path, cells, robustness, figures, tables))
    return page


def _banner(study: StudyResults) -> str:
    n = study.trials.height
    if n == 0:
        return '<div class="banner partial" id="status">Partial report: no trial has finished yet.</div>'
    if study.planned is None:
        return (
            '<div class="banner partial" id="status">Partial report (completeness unknown): '
            f"{n} trials have results, and study.yaml does not say how many were planned (no planned_trials).</div>"
        )
    if study.partial:
        return (
            f'<div class="banner partial" id="status">Partial report: {n} of {study.planned} planned trials have '
            "results. The study is still running or was interrupted; means use the seeds that exist and "
            "figures may have holes.</div>"
        )
    return f'<div class="banner complete" id="status">Complete: all {study.planned} planned trials have results.</div>'


def _table(frame: pl.DataFrame, wrap: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.iter_rows():
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            text = format_number(value) if isinstance(value, float) or value is None else str(value)
            cls = ' class="wrap"' if column in wrap else ""
            cells.append(f"<td{cls}>{escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _overview(study: StudyResults, board_path: Path) -> str:
    items = [
        ("method", str(study.spec.get("method", "–"))),
        ("varied", ", ".join(study.keys) or "nothing"),
        ("seeds", ", ".join(map(str, study.spec.get("seeds") or [])) or "–"),
        ("trials", ", ".join(f"{count} {status}" for status, count in study.status_counts().items()) or "none yet"),
    ]
    if not study.ensembles.is_empty():
        per_size = study.ensembles.group_by(ENSEMBLE_SIZE).len().sort(ENSEMBLE_SIZE).iter_rows()
        items.append(("seed ensembles", ", ".join(f"{n} of {size} seeds" for size, n in per_size)))
    items.append(("dashboard", str(board_path)))
    if "wall_s" in study.trials.columns:
        items.append(("compute time", f"{study.trials['wall_s'].sum() / 3600:.2f} trial-hours"))
    for column in PROVENANCE:
        if column in study.trials.columns:
            items.append(
                (column, ", ".join(str(v) for v in study.trials[column].unique(maintain_order=True).to_list()))
            )
    items.append(("generated", dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")))
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items) + "</dl>"


def _summary(study: StudyResults, board: Dashboard, cells: pl.DataFrame) -> str:
    if cells.is_empty():
        return '<p class="note">No completed or flagged trials yet.</p>'
    wanted = board.summary.metrics
    metrics = [m for m in wanted if m in study.metrics]
    parts = []
    missing = [m for m in wanted if m not in study.metrics]
    if missing:
        parts.append(f'<p class="note">Not in these results: {escape(", ".join(missing))}.</p>')
    sort_by = board.summary.sort_by
    if sort_by and f"{sort_by}_mean" in cells.columns:
        cells = cells.sort(f"{sort_by}_mean", descending=board.summary.descending, nulls_last=True)
    limit = board.summary.limit
    if limit and cells.height > limit:
        parts.append(
            f"<p>The best {limit} of {cells.height} cells by {escape(sort_by or 'order')}; cells.csv holds all.</p>"
        )
        cells = cells.head(limit)
    table = paper_table(cells, study.keys, metrics)
    if cells["n_excluded"].sum():
        table = table.with_columns(cells["excluded"].fill_null("").alias("excluded (not in the mean)"))
    parts.append(_table(table, wrap=("excluded (not in the mean)",)))
    return "".join(parts)


def _ensembles_note(study: StudyResults) -> str:
    if study.ensembles.is_empty():
        return ""
    return (
        "<p>Rows with an ensemble_size are seed ensembles: one value each, the accuracy of the averaged test "
        "logits of that many seeds of their cell (the lowest completed ones); member_test_acc is the mean "
        "accuracy of the same seeds alone.</p>"
    )


def _figure(i: int, item: Rendered) -> str:
    head = f'<section class="figure" id="figure-{i}"><h3>{escape(item.title)}</h3>'
    if item.description:
        head += f"<p>{escape(item.description)}</p>"
    if item.figure is None:
        return head + f'<p class="note">Not shown: {escape(item.note or "")}.</p></section>'
    div = item.figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{i}",
        config={"displaylogo": False, "responsive": True},
    )
    return head + div + "</section>"


def _page(
    study: StudyResults,
    board: Dashboard,
    board_path: Path,
    cells: pl.DataFrame,
    robustness: pl.DataFrame,
    figures: list[Rendered],
    tables: list[Path],
) -> str:
    state = "partial" if study.partial else "complete"
    excluded = excluded_trials(study.trials, study.keys)
    done = study.trials.filter(pl.col("status") == COMPLETED).height if not study.trials.is_empty() else 0
    sections = [
        f"<h1>{escape(study.name)}</h1>",
        f'<p class="sub">{escape(board.title)}. {escape(board.description)}</p>',
        _banner(study),
        '<nav><a href="#summary">Summary</a><a href="#figures">Figures</a><a href="#spec">Study spec</a></nav>',
        "<h2>Overview</h2>",
        _overview(study, board_path),
        '<h2 id="summary">Summary</h2>',
        "<p>Per cell: mean ± 95% confidence interval (Student t) over its completed seeds "
        f"({done} completed trials in all). Flagged and failed trials are left out of the means and listed below; "
        "pruned trials appear only in the learning curves and search figures.</p>",
        _ensembles_note(study),
        _summary(study, board, cells),
    ]
    if not robustness.is_empty():
        sections += [
            "<h2>Robustness to label noise</h2>",
            "<p>drop: mean at the lowest minus mean at the highest noise rate. auc: area under the "
            "mean-vs-noise-rate curve (trapezoids); auc_norm: that area over the noise range, the "
            "curve's average.</p>",
            _table(robustness),
        ]
    if not excluded.is_empty():
        sections += [f"<h2>Excluded trials ({excluded.height})</h2>", _table(excluded, wrap=("error",))]
    sections += ['<h2 id="figures">Figures</h2>', *(_figure(i, f) for i, f in enumerate(figures))]
    links = " · ".join(f'<a href="{escape(p.name)}">{escape(p.name)}</a>' for p in tables)
    sections += [
        '<h2 id="spec">Study spec</h2>',
        f"<p>Tables beside this file: {links}</p>",
        f"<pre>{escape(study.spec_text)}</pre>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(study.name)} · ptlab report</title>"
        # An empty icon: the browser would otherwise ask for /favicon.ico and log a failure.
        '<link rel="icon" href="data:,">'
        f"<style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        f'</head><body data-report-state="{state}"><main>{"".join(sections)}</main></body></html>\n'
    )
