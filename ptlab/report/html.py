"""The study report: one HTML file that opens offline, plotly.js inlined once.

Order of the page, the answer first: title and provenance line, status banner
(the same status `ptlab study status` and `watch` show), how uncertainty is
given (once), the dashboard's first figure, the summary table (varied factors,
primary metrics, n, the zero-shot reference), its other figures, the robustness table, the
details table (secondary metrics, counts and timings), excluded trials, the
overview, what of the dashboard does not apply to this study, the spec. The
tables also go beside it as CSV, Markdown and LaTeX.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from pathlib import Path

import polars as pl
from plotly.offline import get_plotlyjs

from ptlab.report.aggregate import (
    COMPLETED,
    UNCERTAINTY,
    StudyResults,
    best_rows,
    cell_summary,
    excluded_trials,
    export_tables,
    format_number,
    is_bookkeeping,
    load_study,
    paper_table,
    reference_table,
    robustness_summary,
)
from ptlab.report.dashboard import Dashboard, choose_dashboard, load_dashboard
from ptlab.report.figures import Rendered, render
from ptlab.report.tuned import tuned_section
from ptlab.study.layout import REPORT_DIR, STUDY_FILE
from ptlab.study.schema import ENSEMBLE_SIZE, ERROR, PROVENANCE_COLUMNS, STATUS, WALL_S

# the provenance a report shows, in this order: python's is in results.parquet
PROVENANCE = tuple(PROVENANCE_COLUMNS[source] for source in ("ptlab", "git_commit", "torch", "open_clip", "ray"))

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
.prov { color: #666; font-size: 13px; margin: 0 0 6px; }
.uncertainty { color: #444; font-size: 13.5px; max-width: 1000px; }
td.best { font-weight: 700; } tr.reference td { font-style: italic; background: #f4f4f8; }
ul.na { color: #555; }
pre { background: #f5f6f8; padding: 12px; overflow-x: auto; font-size: 13px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; } dt { color: #666; } dd { margin: 0; }
"""


def build_report(study_dir: str | Path, dashboard: str | Path | None = None, fixed: str | Path | None = None) -> Path:
    """Aggregate a study folder and write report/index.html plus its tables; returns the HTML path.

    ``dashboard`` overrides the one the study names (its ``report`` field);
    ``fixed`` is a tuned grid's fixed-hyperparameter twin, shown beside it.
    """
    study = load_study(study_dir)
    board_path = choose_dashboard(study.spec, study.folder / STUDY_FILE, dashboard)
    board = load_dashboard(board_path)
    cells = cell_summary(study.rows, study.keys, study.metrics) if not study.rows.is_empty() else pl.DataFrame()
    primary = [m for m in board.summary.metrics if m in study.metrics]
    robustness = robustness_summary(cells, study.keys, (primary or ["test_acc"])[0]) if not cells.is_empty() else pl.DataFrame()
    out = study.folder / REPORT_DIR
    tables = export_tables(study, cells, robustness, out, primary)
    figures = [render(spec, study, cells) for spec in board.figures]
    page = out / "index.html"
    page.write_text(_page(study, board, board_path, cells, robustness, figures, tables, tuned_section(study, fixed)))
    return page


def _status(study: StudyResults) -> dict:
    """The study's status as `ptlab study status` and `watch` read it; from the stored rows alone if the spec no longer loads."""
    from ptlab.study.spec import StudyError
    from ptlab.study.status import study_status

    try:
        return study_status(study.folder)
    except StudyError:
        return {"state": "unknown", "done": study.trials.height, "planned": study.planned, "running": [], "eta_s": None}


def _banner(study: StudyResults) -> str:
    from ptlab.study.status import clock

    status = _status(study)
    n, planned, state = status["done"], study.planned, status["state"]
    folder = escape(str(study.folder))
    if state == "running":
        eta = f", ETA {clock(status['eta_s'])}" if status.get("eta_s") else ""
        text = (f"Running: {n} of {status['planned']} planned trials have results, {len(status['running'])} "
                f"running{eta}. This page is a snapshot; `ptlab report {folder}` rebuilds it.")
        return f'<div class="banner partial" id="status">{text}</div>'
    if n == 0:
        return '<div class="banner partial" id="status">Partial report: no trial has finished yet.</div>'
    if planned is None:
        return (
            '<div class="banner partial" id="status">Partial report (completeness unknown): '
            f"{n} trials have results, and study.yaml does not say how many were planned (no planned_trials).</div>"
        )
    if study.partial:
        why = (f"The study was interrupted; continue it with `ptlab study resume {folder}`" if state == "interrupted"
               else "The study is still running or was interrupted")
        return (
            f'<div class="banner partial" id="status">Partial report: {n} of {planned} planned trials have '
            f"results. {why}; means use the seeds that exist and figures may have holes.</div>"
        )
    return f'<div class="banner complete" id="status">Complete: all {planned} planned trials have results.</div>'


def _table(frame: pl.DataFrame, wrap: tuple[str, ...] = (), bold: dict[str, set[int]] | None = None,
           reference_rows: int = 0) -> str:
    bold = bold or {}
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.iter_rows()):
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            text = format_number(value) if isinstance(value, float) or value is None else str(value)
            classes = [c for c, on in (("wrap", column in wrap), ("best", i in bold.get(column, ()))) if on]
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{cls}>{escape(text)}</td>")
        kind = ' class="reference"' if i < reference_rows else ""
        rows.append(f"<tr{kind}>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _provenance_line(study: StudyResults) -> str:
    parts = []
    for column in PROVENANCE:
        if column in study.trials.columns:
            found = [str(v) for v in study.trials[column].unique(maintain_order=True).to_list() if v]
            values = ", ".join(v[:12] if column == "git_commit" else v for v in found)
            if values:
                parts.append(f"{column.removesuffix('_version')} {values}")
    parts.append("generated " + dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    return f'<p class="prov">{escape(" · ".join(parts))}</p>'


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
    if not study.references.is_empty():
        items.append(("reference", f"{study.references.height} zero-shot trial(s) of the same backbone, data and template"))
    items.append(("dashboard", str(board_path)))
    if study.optuna_storage() is not None:
        items.append(("Optuna storage", str(study.optuna_storage())))
    # trials that failed before their recipe started have no wall time, and neither may any trial
    if WALL_S in study.trials.columns and study.trials[WALL_S].null_count() < study.trials.height:
        items.append(("compute time", f"{study.trials[WALL_S].sum() / 3600:.2f} trial-hours"))
    for column in PROVENANCE:
        if column in study.trials.columns:
            items.append(
                (column, ", ".join(str(v) for v in study.trials[column].unique(maintain_order=True).to_list()))
            )
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items) + "</dl>"


def _ordered(study: StudyResults, board: Dashboard, cells: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """The cells in the dashboard's order, cut to its limit, and the sentence that says so."""
    sort_by = board.summary.sort_by
    if sort_by and f"{sort_by}_mean" in cells.columns:
        cells = cells.sort(f"{sort_by}_mean", descending=board.summary.descending, nulls_last=True)
    limit = board.summary.limit
    if limit and cells.height > limit:
        note = f"<p>The best {limit} of {cells.height} cells by {escape(sort_by or 'order')}; cells.csv holds all.</p>"
        return cells.head(limit), note
    return cells, ""


def _summary(study: StudyResults, primary: list[str], cells: pl.DataFrame, note: str) -> str:
    """Varied factors, n and the primary metrics, best in bold, the zero-shot reference on top."""
    if cells.is_empty():
        return '<p class="note">No completed or flagged trials yet.</p>'
    table = paper_table(cells, study.keys, primary)
    if cells["n_excluded"].sum():
        table = table.with_columns(cells["excluded"].fill_null("").alias("excluded (not in the mean)"))
    reference = reference_table(study, study.keys, primary)
    bold = {m: {i + reference.height for i in rows} for m, rows in best_rows(cells, primary).items()}
    if not reference.is_empty():
        table = pl.concat([reference, table], how="diagonal")
    return note + _table(table, wrap=("excluded (not in the mean)",), bold=bold, reference_rows=reference.height)


def _details(study: StudyResults, primary: list[str], cells: pl.DataFrame) -> str:
    """The metrics the summary leaves out: secondary ones with their CI, then counts and timings as means alone."""
    rest = [m for m in study.metrics if m not in primary]
    if cells.is_empty() or not rest:
        return ""
    measured = [m for m in rest if not is_bookkeeping(m, study.rows[m])]
    counts = [m for m in rest if m not in measured]
    return (
        '<h2 id="details">Details</h2><p>Secondary metrics (mean ± 95% CI, as above), then counts and timings '
        f"(mean over the cell's seeds, no interval): {escape(', '.join(counts) or 'none')}.</p>"
        + _table(paper_table(cells, study.keys, measured + counts))
    )


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
    div = item.figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{i}",
        config={"displaylogo": False, "responsive": True},
    )
    return head + div + "</section>"


def _not_applicable(board: Dashboard, study: StudyResults, figures: list[Rendered]) -> str:
    """What of the dashboard this study holds nothing for, listed once instead of as empty sections."""
    items = [f"{item.title}: {item.note}" for item in figures if item.figure is None]
    missing = [m for m in board.summary.metrics if m not in study.metrics]
    if missing:
        items.insert(0, f"summary column{'s' if len(missing) > 1 else ''} {', '.join(missing)}: no values in these results")
    if not items:
        return ""
    lines = "".join(f"<li>{escape(text)}</li>" for text in items)
    return f'<h2 id="not-applicable">Not applicable to this study</h2><ul class="na">{lines}</ul>'


def _page(
    study: StudyResults,
    board: Dashboard,
    board_path: Path,
    cells: pl.DataFrame,
    robustness: pl.DataFrame,
    figures: list[Rendered],
    tables: list[Path],
    tuned: str = "",
) -> str:
    state = "partial" if study.partial else "complete"
    excluded = excluded_trials(study.trials, study.keys)
    done = study.trials.filter(pl.col(STATUS) == COMPLETED).height if not study.trials.is_empty() else 0
    primary = [m for m in board.summary.metrics if m in study.metrics]
    ordered, limit_note = _ordered(study, board, cells) if not cells.is_empty() else (cells, "")
    drawn = [(i, f) for i, f in enumerate(figures) if f.figure is not None]
    sections = [
        f"<h1>{escape(study.name)}</h1>",
        _provenance_line(study),
        f'<p class="sub">{escape(board.title)}. {escape(board.description)}</p>',
        _banner(study),
        f'<p class="uncertainty" id="uncertainty">{escape(UNCERTAINTY)}</p>',
        "<nav>{nav}</nav>",
        # The dashboard's first figure is its headline: on the first screen, above the table.
        *(_figure(i, f) for i, f in drawn[:1]),
        '<h2 id="summary">Summary</h2>',
        f"<p>{done} completed trials. Flagged and failed trials are left out of the means and listed below; "
        "pruned trials appear only in the learning curves and search figures. Best per column in bold.</p>",
        _ensembles_note(study),
        _summary(study, primary, ordered, limit_note),
        tuned,
    ]
    if len(drawn) > 1:
        sections += ['<h2 id="figures">More figures</h2>', *(_figure(i, f) for i, f in drawn[1:])]
    if not robustness.is_empty():
        sections += [
            "<h2>Robustness to label noise</h2>",
            "<p>drop: mean at the lowest minus mean at the highest noise rate. auc: area under the "
            "mean-vs-noise-rate curve (trapezoids); auc_norm: that area over the noise range, the "
            "curve's average.</p>",
            _table(robustness),
        ]
    sections.append(_details(study, primary, ordered))
    if not excluded.is_empty():
        sections += [f"<h2>Excluded trials ({excluded.height})</h2>", _table(excluded, wrap=(ERROR,))]
    sections += ['<h2 id="overview">Overview</h2>', _overview(study, board_path)]
    sections.append(_not_applicable(board, study, figures))
    anchors = [("summary", "Summary"), ("figures", "Figures"), ("details", "Details"), ("overview", "Overview"),
               ("not-applicable", "Not applicable"), ("spec", "Study spec")]
    present = "".join(sections)
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in anchors if a == "spec" or f'id="{a}"' in present)
    sections = [part.replace("<nav>{nav}</nav>", f"<nav>{nav}</nav>") for part in sections]
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
