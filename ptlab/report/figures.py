"""Plotly figures of a study, one builder per dashboard figure kind.

Every factor a figure does not put on an axis, a colour or a facet is folded
into the trace or panel label, so a figure never silently averages over a
factor the study varied. A figure that the study's data cannot fill (a column
missing, an axis with one value, no Optuna storage) comes back as a note that
the report lists once, under "not applicable to this study".

Accuracy figures carry their reference lines: the study's zero-shot CLIP
(dashed grey) and, in noisy-label studies, each series' clean-label value
(its noise_rate 0 cell, dotted in the series' colour). Intervals follow
aggregate.UNCERTAINTY: a band from 3 seeds up, the seeds as points below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.colors import hex_to_rgb, qualitative
from plotly.subplots import make_subplots

from ptlab.methods.base import STATUS_COLLAPSED, STATUS_FAILED, STATUS_NAN
from ptlab.report import dashboard as dash
from ptlab.report.aggregate import (
    COMPLETED,
    MIN_SEEDS_FOR_CI,
    NOISE,
    PRUNED,
    StudyResults,
    is_percent,
    t_critical,
)
from ptlab.study.schema import CELL_ID, EPOCH, KEY, STATUS, TRIAL_ID, row_key

PALETTE = qualitative.Plotly
PANEL_COLUMNS = 3
PANEL_HEIGHT = 380
STATUS_COLOURS = {
    COMPLETED: "#1f77b4",
    PRUNED: "#ff7f0e",
    STATUS_FAILED: "#d62728",
    STATUS_NAN: "#9467bd",
    STATUS_COLLAPSED: "#8c564b",
}


class FigureSkipped(Exception):
    """The study holds no data for this figure; the message says what is missing."""


@dataclass(frozen=True)
class Rendered:
    title: str
    description: str
    figure: go.Figure | None
    note: str | None = None  # why there is no figure


def render(spec: dash.Figure, study: StudyResults, cells: pl.DataFrame) -> Rendered:
    builder, default_title = _BUILDERS[spec.kind]
    title = spec.title or default_title(spec)
    if study.trials.is_empty():
        return Rendered(title, spec.description, None, "no trial has finished yet")
    if spec.kind in _CELL_KINDS and cells.is_empty():
        return Rendered(title, spec.description, None, "no trial has completed yet (only pruned ones)")
    try:
        figure = builder(spec, study, cells)
    except FigureSkipped as why:
        return Rendered(title, spec.description, None, str(why))
    figure.update_layout(template="plotly_white", margin={"t": 60, "l": 60, "r": 30, "b": 50})
    return Rendered(title, spec.description, figure)


# --- column resolution -------------------------------------------------------


def _pick(columns: dash.Columns | None, study: StudyResults, role: str, *, taken: tuple[str | None, ...] = ()) -> str:
    candidates = [columns] if isinstance(columns, str) else list(columns or [])
    for c in candidates:
        if c in study.keys and c not in taken:
            return c
    raise FigureSkipped(f"{role}: {' / '.join(candidates) or 'no column'} does not vary in this study")


def _maybe(
    columns: dash.Columns | None, study: StudyResults, role: str, *, taken: tuple[str | None, ...] = ()
) -> str | None:
    try:
        return _pick(columns, study, role, taken=taken)
    except FigureSkipped:
        return None


def _metric(name: str, study: StudyResults) -> str:
    if name not in study.metrics:
        raise FigureSkipped(f"no values for {name} in results.parquet")
    return name


def _label(metric: str) -> str:
    """An axis title with its unit."""
    return f"{metric} (%)" if is_percent(metric) else metric


def _clip(values: pl.Series, metric: str) -> pl.Series:
    # A wide t interval can reach -50..200%; drawn whole it flattens every curve.
    return values.clip(0, 100) if is_percent(metric) else values


ZERO_SHOT_COLOUR = "#555555"


def zero_shot_values(study: StudyResults, metric: str, where: dict[str, Any]) -> list[tuple[str, float]]:
    """The zero-shot reference values of ``metric`` that match ``where`` (a panel's or series' factor values).

    Only the columns in which the references differ (e.g. backbone, where the
    study varies it) are matched; a panel that mixes them gets each, labelled.
    """
    refs = study.references
    if refs.is_empty() or metric not in refs.columns or not is_percent(metric):
        return []
    refs = refs.filter((pl.col(STATUS) == COMPLETED) & pl.col(metric).is_not_null())
    differing = [c for c in refs.columns if c in study.keys and refs[c].n_unique() > 1]
    for column, value in where.items():
        if column in differing:
            refs = refs.filter(pl.col(column) == value)
    shown = [c for c in differing if c not in where]
    return [
        ("zero-shot CLIP" + "".join(f", {c}={r[c]}" for c in shown), float(r[metric]))
        for r in refs.sort(shown or TRIAL_ID).iter_rows(named=True)
    ]


def clean_value(study: StudyResults, cells: pl.DataFrame, metric: str, where: dict[str, Any]) -> float | None:
    """The noise_rate 0 cell's mean of ``metric`` for the other factor values in ``where``; None without one."""
    mean = f"{metric}_mean"
    if NOISE not in study.keys or mean not in cells.columns or not is_percent(metric):
        return None
    clean = cells.filter(pl.col(NOISE) == 0)
    for column, value in where.items():
        if column != NOISE and column in clean.columns:
            clean = clean.filter(pl.col(column) == value)
    values = clean[mean].drop_nulls()
    return float(values.mean()) if values.len() else None


CLEAN_LEGEND = "clean labels (noise rate 0), dotted in each series' colour"


@dataclass(frozen=True)
class Reference:
    """A horizontal reference line: the zero-shot value, or a series' clean-label value (``group`` = the series)."""

    name: str
    value: float
    colour: str = ZERO_SHOT_COLOUR
    group: str | None = None

    @property
    def clean(self) -> bool:
        return self.group is not None


def _reference_traces(fig: go.Figure, lines: list[Reference], span: list[Any], row: int, col: int, shown: set[str]) -> None:
    """Lines across ``span`` (the panel's x values); a zero-shot line has a legend entry of its own, clean-label
    lines share one and toggle with their series."""
    if not span:
        return
    xs = [min(span), max(span)] if len(set(span)) > 1 else [span[0], span[0]]
    for ref in lines:
        legend = CLEAN_LEGEND if ref.clean else ref.name
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[ref.value, ref.value],
                mode="lines",
                name=legend,
                legendgroup=ref.group if ref.clean else ref.name,
                showlegend=not ref.clean and legend not in shown,
                line={"color": ref.colour, "dash": "dot" if ref.clean else "dash", "width": 1.5},
                hovertemplate=f"{ref.name}: {ref.value:.2f}<extra></extra>",
            ),
            row,
            col,
        )
        shown.add(legend)
    if any(ref.clean for ref in lines) and "_clean_key" not in shown:
        # one legend entry that explains every clean-label line
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=CLEAN_LEGEND,
                                 line={"color": ZERO_SHOT_COLOUR, "dash": "dot"}), row, col)
        shown.add("_clean_key")


def _seed_points(study: StudyResults, cell_ids: list[str], y: str) -> pl.DataFrame:
    """The completed seeds of the given cells that hold ``y``, to draw as points where a cell has too few for an interval."""
    return study.rows.filter(pl.col(CELL_ID).is_in(cell_ids) & (pl.col(STATUS) == COMPLETED) & pl.col(y).is_not_null())


def _rest(study: StudyResults, *used: str | None) -> list[str]:
    return [k for k in study.keys if k not in used]


def _groups(frame: pl.DataFrame, columns: list[str]) -> list[tuple[str, pl.DataFrame]]:
    """Sub-frames per combination of ``columns``, labelled ``a=1, b=x``, in sorted order."""
    if not columns:
        return [("", frame)]
    parts = frame.sort(columns, nulls_last=True).partition_by(columns, maintain_order=True, as_dict=True)
    return [(", ".join(f"{c}={v}" for c, v in zip(columns, key, strict=True)), part) for key, part in parts.items()]


def _colour(i: int, alpha: float = 1.0) -> str:
    r, g, b = hex_to_rgb(PALETTE[i % len(PALETTE)])
    return f"rgba({r},{g},{b},{alpha})"


def _panel_grid(n: int, per_row: int = PANEL_COLUMNS) -> tuple[int, int]:
    cols = min(n, per_row)
    return math.ceil(n / cols), cols


def _position(i: int, cols: int) -> tuple[int, int]:
    return i // cols + 1, i % cols + 1


# --- cell figures ------------------------------------------------------------


def _curve(spec: dash.Curve, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    x = _pick(spec.x, study, "x")
    y = _metric(spec.y, study)
    colour = _maybe(spec.color, study, "color", taken=(x,))
    facet = _maybe(spec.facet, study, "facet", taken=(x, colour))
    series_by = [c for c in (colour, *_rest(study, x, colour, facet)) if c]
    panels = _groups(cells, [facet] if facet else [])
    rows, cols = _panel_grid(len(panels))
    fig = make_subplots(rows, cols, subplot_titles=[p for p, _ in panels], shared_yaxes=True, horizontal_spacing=0.05)
    order = [label for label, _ in _groups(cells, series_by)]
    shown: set[str] = set()
    for i, (_, panel) in enumerate(panels):
        row, col = _position(i, cols)
        span = panel[x].drop_nulls().to_list()
        where = {facet: panel[facet][0]} if facet else {}
        references = [Reference(name, v) for name, v in zero_shot_values(study, y, where)]
        for label, series in _groups(panel, series_by):
            k = order.index(label)
            s = series.filter(pl.col(f"{y}_mean").is_not_null()).sort(x)
            xs, mean, ci = s[x].to_list(), s[f"{y}_mean"], s[f"{y}_ci95"]
            if spec.band and ci.null_count() < len(ci):
                lower, upper = _clip(mean - ci, y).to_list(), _clip(mean + ci, y).to_list()
                band = {
                    "mode": "lines",
                    "line": {"width": 0},
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "legendgroup": label,
                }
                fig.add_trace(go.Scatter(x=xs, y=lower, **band), row, col)
                fig.add_trace(go.Scatter(x=xs, y=upper, fill="tonexty", fillcolor=_colour(k, 0.2), **band), row, col)
            few = s.filter(pl.col("n_seeds") < MIN_SEEDS_FOR_CI)[CELL_ID].to_list()
            if spec.band and few:
                points = _seed_points(study, few, y)
                fig.add_trace(
                    go.Scatter(
                        x=points[x].to_list(),
                        y=points[y].to_list(),
                        mode="markers",
                        legendgroup=label,
                        showlegend=False,
                        marker={"color": _colour(k, 0.55), "size": 6, "symbol": "circle-open"},
                        customdata=points["seed"].to_list(),
                        hovertemplate=f"seed %{{customdata}}<br>{x}=%{{x}}<br>{y}=%{{y:.2f}}<extra></extra>",
                    ),
                    row,
                    col,
                )
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=mean.to_list(),
                    name=label or y,
                    legendgroup=label,
                    showlegend=label not in shown,
                    mode="lines+markers",
                    line={"color": _colour(k)},
                    customdata=list(zip(ci.to_list(), s["n_seeds"].to_list(), strict=True)),
                    hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y:.2f}} ± %{{customdata[0]:.2f}}<br>n=%{{customdata[1]}}",
                ),
                row,
                col,
            )
            shown.add(label)
            clean = clean_value(study, cells, y, {c: series[c][0] for c in [*series_by, *where]})
            if clean is not None:
                references.append(Reference(f"clean labels, {label}" if label else "clean labels", clean, _colour(k), label))
        _reference_traces(fig, references, span, row, col, shown)
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=f"{_label(y)}, mean", col=1)
    fig.update_yaxes(matches="y")
    fig.update_layout(height=rows * PANEL_HEIGHT + 80, legend_title_text=", ".join(series_by))
    return fig


def _matrix(panel: pl.DataFrame, x: str, y: str, values: str, xs: list[Any], ys: list[Any]) -> list[list[Any]]:
    """values laid out as rows over ys and columns over xs; a missing cell stays a hole."""
    at = {(a, b): v for a, b, v in panel.select(x, y, values).iter_rows()}
    return [[at.get((a, b)) for a in xs] for b in ys]


def _two_axes(spec: dash.Surface | dash.Heatmap, study: StudyResults) -> tuple[str, str, str, list[str]]:
    x = _pick(spec.x, study, "x")
    y = _pick(spec.y, study, "y", taken=(x,))
    z = _metric(spec.z, study)
    facet = _maybe(spec.facet, study, "facet", taken=(x, y))
    return x, y, z, [c for c in (facet, *_rest(study, x, y, facet)) if c]


def _surface(spec: dash.Surface, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    x, y, z, panel_by = _two_axes(spec, study)
    for axis in (x, y):
        if not cells.schema[axis].is_numeric():
            raise FigureSkipped(f"a surface needs numeric axes and {axis} is not; use a heatmap")
    mean = f"{z}_mean"
    xs, ys = sorted(cells[x].unique().to_list()), sorted(cells[y].unique().to_list())
    lo, hi = cells[mean].min(), cells[mean].max()
    panels = _groups(cells, panel_by)
    # 3D scenes need more room than flat panels to keep their axis labels readable.
    rows, cols = _panel_grid(len(panels), per_row=2)
    fig = make_subplots(
        rows,
        cols,
        specs=[[{"type": "scene"}] * cols for _ in range(rows)],
        subplot_titles=[p or z for p, _ in panels],
        horizontal_spacing=0.02,
    )
    for i, (_, panel) in enumerate(panels):
        fig.add_trace(
            go.Surface(
                x=xs,
                y=ys,
                z=_matrix(panel, x, y, mean, xs, ys),
                customdata=_matrix(panel, x, y, f"{z}_ci95", xs, ys),
                cmin=lo,
                cmax=hi,
                colorscale="Viridis",
                showscale=i == 0,
                colorbar={"title": {"text": _label(z)}},
                hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>{z}=%{{z:.2f}} ± %{{customdata:.2f}}<extra></extra>",
            ),
            *_position(i, cols),
        )
    fig.update_scenes(
        xaxis_title_text=x,
        yaxis_title_text=y,
        zaxis_title_text=_label(z),
        zaxis_range=[lo, hi],  # one height scale, so surfaces compare at a glance
        camera_eye={"x": 1.6, "y": -1.6, "z": 1.0},
    )
    fig.update_layout(height=rows * 520 + 60)
    return fig


def _heatmap(spec: dash.Heatmap, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    x, y, z, panel_by = _two_axes(spec, study)
    mean, ci = f"{z}_mean", f"{z}_ci95"
    xs, ys = sorted(cells[x].unique().to_list()), sorted(cells[y].unique().to_list())
    text = cells.with_columns(
        pl.when(pl.col(ci).is_null())
        .then(pl.col(mean).round(1).cast(pl.String))
        .otherwise(pl.format("{}±{}", pl.col(mean).round(1), pl.col(ci).round(1)))
        .alias("_text")
    )
    panels = _groups(text, panel_by)
    rows, cols = _panel_grid(len(panels))
    fig = make_subplots(
        rows, cols, subplot_titles=[p or z for p, _ in panels], horizontal_spacing=0.06, vertical_spacing=0.12
    )
    for i, (_, panel) in enumerate(panels):
        fig.add_trace(
            go.Heatmap(
                x=[str(v) for v in xs],
                y=[str(v) for v in ys],
                z=_matrix(panel, x, y, mean, xs, ys),
                text=_matrix(panel, x, y, "_text", xs, ys),
                texttemplate="%{text}",
                coloraxis="coloraxis",
                hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>{z}=%{{text}}<extra></extra>",
            ),
            *_position(i, cols),
        )
    fig.update_xaxes(type="category", title_text=x)
    fig.update_yaxes(type="category", title_text=y)
    references = "; ".join(f"{name} {value:.1f}%" for name, value in zero_shot_values(study, z, {}))
    fig.update_layout(
        height=rows * PANEL_HEIGHT + 80,
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": _label(z)}}},
        title={"text": f"reference: {references}" if references else None, "font": {"size": 13}},
    )
    return fig


def _bars(spec: dash.Bars, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    ys = [_metric(m, study) for m in spec.ys]
    x = _maybe(spec.x, study, "x")
    groups = _groups(cells, [c for c in (x, *_rest(study, x)) if c])
    labels = [label or "all trials" for label, _ in groups]
    fig = go.Figure()
    for k, m in enumerate(ys):
        # Grouped by every key, each group is exactly one cell.
        means = [g[f"{m}_mean"].item() for _, g in groups]
        cis = [g[f"{m}_ci95"].item() for _, g in groups]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=means,
                name=m,
                legendgroup=m,
                offsetgroup=str(k),
                marker_color=_colour(k),
                error_y={"type": "data", "array": cis, "visible": True},
                hovertemplate=f"%{{x}}<br>{m}=%{{y:.2f}}<extra></extra>",
            )
        )
        few = {g[CELL_ID].item(): label for label, (_, g) in zip(labels, groups, strict=True)
               if g["n_seeds"].item() < MIN_SEEDS_FOR_CI}
        points = _seed_points(study, list(few), m)
        if points.height:
            fig.add_trace(
                go.Scatter(
                    x=[few[c] for c in points[CELL_ID].to_list()],
                    y=points[m].to_list(),
                    mode="markers",
                    legendgroup=m,
                    offsetgroup=str(k),
                    showlegend=False,
                    marker={"color": "black", "size": 6, "symbol": "circle-open"},
                    customdata=points["seed"].to_list(),
                    hovertemplate=f"seed %{{customdata}}: {m}=%{{y:.2f}}<extra></extra>",
                )
            )
    percent = all(is_percent(m) for m in ys)
    # The zero-shot reference measures test accuracy; it is drawn where the bars hold it.
    reference = "test_acc" if "test_acc" in ys else ys[0] if len(ys) == 1 else None
    for name, value in zero_shot_values(study, reference, {}) if reference else []:
        label = name if len(ys) == 1 else f"{name}, {reference}"
        fig.add_hline(y=value, line_dash="dash", line_color=ZERO_SHOT_COLOUR, annotation_text=f"{label} {value:.1f}%")
    fig.update_layout(barmode="group", scattermode="group", height=PANEL_HEIGHT + 80,
                      yaxis_title_text="mean (%)" if percent else "mean")
    return fig


# --- trial figures -----------------------------------------------------------


def _scatter(spec: dash.Scatter, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    x, y = _metric(spec.x, study), _metric(spec.y, study)
    colour = _maybe(spec.color, study, "color")
    done = study.trials.filter((pl.col(STATUS) == COMPLETED) & pl.col(x).is_not_null() & pl.col(y).is_not_null())
    fig = go.Figure()
    for k, (label, part) in enumerate(_groups(done, [colour] if colour else [])):
        fig.add_trace(
            go.Scatter(
                x=part[x].to_list(),
                y=part[y].to_list(),
                mode="markers",
                name=label or "trials",
                marker={"color": _colour(k), "size": 9, "opacity": 0.8},
                customdata=list(zip(part[TRIAL_ID].to_list(), part["seed"].to_list(), strict=True)),
                hovertemplate=f"trial %{{customdata[0]}} (seed %{{customdata[1]}})<br>{x}=%{{x:.2f}}<br>{y}=%{{y:.2f}}<extra></extra>",
            )
        )
    fig.update_layout(height=PANEL_HEIGHT + 80, xaxis_title_text=_label(x), yaxis_title_text=_label(y))
    return fig


def _curves_with_status(spec: dash.LearningCurves, study: StudyResults, columns: list[str]) -> pl.DataFrame:
    """curves.parquet joined with each trial's status and ``columns``; a trial without a results row yet is left out."""
    if study.curves.is_empty():
        raise FigureSkipped("no curves.parquet in the study folder")
    if spec.y not in study.curves.columns:
        raise FigureSkipped(f"curves.parquet has no column {spec.y}")
    # curves of files written before they carried a key are joined by trial_id
    key = KEY if KEY in study.curves.columns and KEY in study.trials.columns else TRIAL_ID
    # a trial counted in several cells (ptlab.study.space.cell_groups) draws a curve in each
    info = study.cell_trials.select(*dict.fromkeys([key, TRIAL_ID, CELL_ID, STATUS, "seed", *columns]))
    # the trial's row is the one truth of its factor values: the curve's own copies give way to it
    curves = study.curves.drop([c for c in info.columns if c != key], strict=False)
    curves = curves.join(info, on=key, how="inner").filter(pl.col(spec.y).is_not_null())
    if curves.is_empty():
        raise FigureSkipped(f"curves.parquet holds no values of {spec.y}")
    return curves.sort(key, EPOCH)


def _asha_stops(fig: go.Figure, curves: pl.DataFrame, y: str, row: int = 1, col: int = 1, legend: bool = True) -> None:
    stops = curves.filter(pl.col(STATUS) == PRUNED).group_by(row_key(curves), maintain_order=True).last()
    if stops.is_empty():
        return
    fig.add_trace(
        go.Scatter(
            x=stops[EPOCH].to_list(),
            y=stops[y].to_list(),
            mode="markers",
            name="stopped by ASHA",
            legendgroup="stopped by ASHA",
            showlegend=legend,
            marker={"symbol": "x", "size": 11, "color": "black"},
            customdata=stops[TRIAL_ID].to_list(),
            hovertemplate="trial %{customdata} stopped by ASHA after epoch %{x}<extra></extra>",
        ),
        row,
        col,
    )


def _learning_curves(spec: dash.LearningCurves, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    """Grids: per cell the mean over its seeds by epoch with its band, one panel per value of the factors that are
    not the colour. Searches, whose every sample is a cell of one: a line per trial, coloured by status."""
    if study.spec.get("search"):
        return _trial_curves(spec, study)
    colour = _maybe(spec.color, study, "color") or (study.keys[0] if study.keys else None)
    panel_by = _rest(study, colour)
    curves = _curves_with_status(spec, study, [c for c in (colour, *panel_by) if c])
    y = spec.y
    done = curves.filter(pl.col(STATUS) == COMPLETED)
    by = [c for c in (colour, *panel_by) if c]
    stats = (
        done.group_by([*by, CELL_ID, EPOCH], maintain_order=True)
        .agg(pl.col(y).mean().alias("mean"), pl.col(y).std(ddof=1).alias("std"), pl.len().alias("n"))
        .sort([*by, EPOCH], nulls_last=True)
    )
    counts = [n for n in stats["n"].unique().to_list() if n >= MIN_SEEDS_FOR_CI]
    t = pl.col("n").replace_strict({n: t_critical(n - 1) for n in counts}, default=None, return_dtype=pl.Float64)
    stats = stats.with_columns((t * pl.col("std") / pl.col("n").sqrt()).alias("ci"))
    panels = _groups(curves, panel_by)
    # Small multiples: many panels get smaller, four to a row, so a large grid stays one screenful per few rows.
    many = len(panels) > 2 * PANEL_COLUMNS
    rows, cols = _panel_grid(len(panels), per_row=PANEL_COLUMNS + many)
    fig = make_subplots(rows, cols, subplot_titles=[p for p, _ in panels], shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=min(0.12, 0.5 / rows))
    values = sorted(curves[colour].unique().to_list(), key=str) if colour else [None]
    shown: set[str] = set()
    for i, (_, panel) in enumerate(panels):
        row, col = _position(i, cols)
        where = {c: panel[c][0] for c in panel_by}
        references = [Reference(name, v) for name, v in zero_shot_values(study, y, where)]
        for value in values:
            k = values.index(value)
            label = f"{colour}={value}" if colour else y
            match = pl.lit(True) if colour is None else pl.col(colour) == value
            part = stats.join(panel.select(CELL_ID).unique(), on=CELL_ID).filter(match).sort(EPOCH)
            if part.is_empty():
                continue
            epochs, mean, ci = part[EPOCH].to_list(), part["mean"], part["ci"]
            if ci.null_count() < len(ci):
                band = {"mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False,
                        "legendgroup": label}
                fig.add_trace(go.Scatter(x=epochs, y=_clip(mean - ci, y).to_list(), **band), row, col)
                fig.add_trace(go.Scatter(x=epochs, y=_clip(mean + ci, y).to_list(), fill="tonexty",
                                         fillcolor=_colour(k, 0.12), **band), row, col)
            seeds = panel.filter(match & (pl.col(STATUS) == COMPLETED))
            if part["n"].max() < MIN_SEEDS_FOR_CI:
                fig.add_trace(go.Scatter(x=seeds[EPOCH].to_list(), y=seeds[y].to_list(), mode="markers",
                                         legendgroup=label, showlegend=False, customdata=seeds["seed"].to_list(),
                                         marker={"color": _colour(k, 0.5), "size": 4},
                                         hovertemplate="seed %{customdata}, epoch %{x}: %{y:.2f}<extra></extra>"),
                              row, col)
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=mean.to_list(),
                    mode="lines",
                    name=label,
                    legendgroup=label,
                    showlegend=label not in shown,
                    line={"color": _colour(k), "width": 2},
                    customdata=part["n"].to_list(),
                    hovertemplate=f"{label}<br>epoch %{{x}}<br>{y}=%{{y:.2f}} (n=%{{customdata}})<extra></extra>",
                ),
                row,
                col,
            )
            shown.add(label)
            pruned = panel.filter(match & (pl.col(STATUS) == PRUNED))
            for (_,), trial in pruned.partition_by(row_key(pruned), as_dict=True, maintain_order=True).items():
                fig.add_trace(go.Scatter(x=trial[EPOCH].to_list(), y=trial[y].to_list(), mode="lines",
                                         legendgroup=label, showlegend=False, opacity=0.5,
                                         line={"color": _colour(k), "width": 1, "dash": "dash"},
                                         hoverinfo="skip"), row, col)
            clean = clean_value(study, cells, y, {**where, **({colour: value} if colour else {})})
            if clean is not None and where.get(NOISE, 0) != 0:
                references.append(Reference(f"clean labels, {label}", clean, _colour(k), label))
        _asha_stops(fig, panel, y, row, col, legend="stopped by ASHA" not in shown)
        if not panel.filter(pl.col(STATUS) == PRUNED).is_empty():
            shown.add("stopped by ASHA")
        _reference_traces(fig, references, panel[EPOCH].unique().to_list(), row, col, shown)
    fig.update_xaxes(title_text="epoch", row=rows)
    # One y range for every panel (shared_yaxes shares within a row only), so panels compare at a glance.
    fig.update_yaxes(title_text=f"{_label(y)}, mean", col=1)
    fig.update_yaxes(matches="y")
    fig.update_layout(height=rows * (PANEL_HEIGHT - 120 * many) + 80, legend_title_text=colour or "")
    return fig


def _trial_curves(spec: dash.LearningCurves, study: StudyResults) -> go.Figure:
    colour = _maybe(spec.color, study, "color")
    by = colour or STATUS
    curves = _curves_with_status(spec, study, [by])
    values = sorted(curves[by].unique().to_list(), key=str)
    fig = make_subplots(1, 1)
    shown: set[Any] = set()
    for trial in curves.partition_by(row_key(curves), maintain_order=True):
        group, trial_id = trial[by][0], trial[TRIAL_ID][0]
        line = STATUS_COLOURS.get(group, "#7f7f7f") if by == STATUS else _colour(values.index(group))
        fig.add_trace(
            go.Scatter(
                x=trial[EPOCH].to_list(),
                y=trial[spec.y].to_list(),
                mode="lines",
                name=f"{by}={group}",
                legendgroup=str(group),
                showlegend=group not in shown,
                line={"color": line, "width": 1.5},
                opacity=0.7,
                hovertemplate=f"trial {trial_id} ({trial[STATUS][0]})<br>epoch %{{x}}<br>{spec.y}=%{{y:.2f}}<extra></extra>",
            )
        )
        shown.add(group)
    _asha_stops(fig, curves, spec.y)
    references = [Reference(name, v) for name, v in zero_shot_values(study, spec.y, {})]
    _reference_traces(fig, references, curves[EPOCH].unique().to_list(), 1, 1, set())
    fig.update_layout(height=PANEL_HEIGHT + 120, xaxis_title_text="epoch", yaxis_title_text=_label(spec.y))
    return fig


def _optuna_study(study: StudyResults) -> Any:
    storage_path = study.optuna_storage()
    if storage_path is None:
        raise FigureSkipped("no Optuna storage (optuna.db or journal.log) in the study folder")
    # Imported here: grid-study reports need no Optuna, and it is slow to import.
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage_path.suffix == ".db":
        storage: Any = f"sqlite:///{storage_path}"
    else:
        storage = JournalStorage(JournalFileBackend(str(storage_path)))
    names = optuna.study.get_all_study_names(storage)
    if study.name not in names:
        raise FigureSkipped(
            f"{storage_path.name} holds no Optuna study named {study.name} (it holds: {', '.join(names) or 'none'})"
        )
    loaded = optuna.load_study(study_name=study.name, storage=storage)
    complete = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        raise FigureSkipped(f"Optuna study {study.name} has {len(complete)} complete trials; these plots need two")
    return loaded


def _importance(spec: dash.ParamImportance, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    import optuna

    loaded = _optuna_study(study)
    # PED-ANOVA: deterministic, and unlike fANOVA it needs no scikit-learn.
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    return optuna.visualization.plot_param_importances(loaded, evaluator=evaluator)


def _parallel(spec: dash.ParallelCoordinates, study: StudyResults, cells: pl.DataFrame) -> go.Figure:
    import optuna

    return optuna.visualization.plot_parallel_coordinate(_optuna_study(study))


def _first(columns: dash.Columns) -> str:
    return columns if isinstance(columns, str) else columns[0]


def _axes_title(spec: dash.Surface | dash.Heatmap) -> str:
    return f"{spec.z} over {_first(spec.x)} × {_first(spec.y)}"


# Figures of cell means, as opposed to figures of single trials or of the Optuna study.
_CELL_KINDS = {"curve", "surface", "heatmap", "bars"}
_BUILDERS: dict[str, tuple[Callable[..., go.Figure], Callable[[Any], str]]] = {
    "curve": (_curve, lambda s: f"{s.y} vs {_first(s.x)}"),
    "surface": (_surface, _axes_title),
    "heatmap": (_heatmap, _axes_title),
    "bars": (_bars, lambda s: " / ".join(s.ys)),
    "scatter": (_scatter, lambda s: f"{s.y} vs {s.x} per trial"),
    "learning_curves": (_learning_curves, lambda s: f"{s.y} per epoch"),
    "param_importance": (_importance, lambda s: "Hyperparameter importance (Optuna PED-ANOVA)"),
    "parallel_coordinates": (_parallel, lambda s: "Parallel coordinates (Optuna)"),
}
