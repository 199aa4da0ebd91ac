"""Study folder → tables: seeds folded into cells, noise robustness per method.

Reads only what a study stored (study.yaml, results.parquet, curves.parquet);
nothing here trains or touches Ray. Accuracies are percentages (0-100).
results.parquet may also hold a study's seed ensembles, one row each: they
make cells of their own (method `<method>_ensemble`) but are not trials. The
zero-shot reference (reference/results.parquet, ptlab.study.reference) is
neither: it is the line every accuracy figure is read against.

Uncertainty is one rule, stated once in the report (UNCERTAINTY): a cell's
mean over its completed seeds, with a Student-t 95% interval from 3 seeds up.
Two seeds give t = 12.7 and an interval wider than the data, so below 3 a
cell shows its mean and n, and figures draw its seeds as points. Counts and
timings (epochs, attempts, images encoded, seconds) are bookkeeping, not
measurements with a sampling error: they get a mean and no interval.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from ptlab.config import is_config_column
from ptlab.methods.base import STATUS_COLLAPSED, STATUS_COMPLETED, STATUS_FAILED, STATUS_NAN, STATUS_PRUNED
from ptlab.study.layout import STUDY_FILE
from ptlab.study.reference import reference_store
from ptlab.study.schema import (
    CELL_ID,
    ENSEMBLE_MEMBERS,
    ENSEMBLE_SIZE,
    ERROR,
    PHASE,
    STATUS,
    TIMINGS,
    TRIAL_ID,
    latest_rows,
)
from ptlab.study.space import cell_id, cell_label, differing_fields, field_value
from ptlab.study.spec import stored_plan
from ptlab.study.store import ResultStore, is_ensemble

COMPLETED, PRUNED = STATUS_COMPLETED, STATUS_PRUNED
# Trials that ran but whose numbers must not enter a mean; a cell lists them.
EXCLUDED = (STATUS_NAN, STATUS_COLLAPSED, STATUS_FAILED)
NOISE = "noise_rate"

_RECORD_COLUMNS = {TRIAL_ID, CELL_ID, STATUS, ERROR}
# Metrics a researcher looks for first; any other numeric outcome follows them.
_METRIC_ORDER = (
    "test_acc",
    "test_macro_acc",
    "val_acc",
    "zeroshot_acc",
    "pseudo_label_acc",
    "auroc",
    "many_acc",
    "medium_acc",
    "few_acc",
    "grad_ratio",
)
# Outcomes where lower is better; percentages are higher-is-better, and others have no best.
_LOWER_IS_BETTER = ("train_loss", "key_loss")
MIN_SEEDS_FOR_CI = 3
UNCERTAINTY = (
    "Every number is the mean over a cell's completed seeds, n is their count, and ± is the 95% confidence "
    f"interval of that mean (Student t, n − 1 degrees of freedom), given from n = {MIN_SEEDS_FOR_CI} on: with 2 "
    "seeds t = 12.7 and the interval says only that two values are too few. Figures shade the interval, "
    "clipped to 0–100 % for percentages, and draw the seeds themselves as points where n < "
    f"{MIN_SEEDS_FOR_CI}. Counts and timings get no interval."
)


@dataclass(frozen=True)
class StudyResults:
    """One study folder, read once: the spec, every trial's final row, its curves."""

    folder: Path
    spec: dict[str, Any]
    spec_text: str
    trials: pl.DataFrame
    ensembles: pl.DataFrame  # rows of seed ensembles; empty unless the study asked for them
    references: pl.DataFrame  # zero-shot reference rows (ptlab.study.reference); empty where none applies
    curves: pl.DataFrame
    keys: list[str]  # config columns (and ensemble_size) that tell cells apart, spec factors first
    metrics: list[str]  # numeric outcome columns holding at least one value
    # A tuned grid's search trials: they chose each cell's configuration; `trials` are its re-runs.
    search: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)
    # The rows of the cells that compute what another cell does (`repeated_rows`): that cell's
    # trial and ensemble rows under their own factor values and cell id. Not trials of their own.
    repeats: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)

    @property
    def name(self) -> str:
        return str(self.spec.get("name", self.folder.name))

    @property
    def cell_trials(self) -> pl.DataFrame:
        """Trials as the grid's cells hold them: a trial that is the result of several cells once in each."""
        if self.repeats.is_empty():
            return self.trials
        return pl.concat([self.trials, self.repeats.filter(~is_ensemble(self.repeats))], how="diagonal_relaxed")

    @property
    def rows(self) -> pl.DataFrame:
        """Trials and ensembles, each in every cell it is the result of: what cells are made of."""
        frames = [f for f in (self.trials, self.ensembles, self.repeats) if not f.is_empty()]
        return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else self.trials

    @property
    def planned(self) -> int | None:
        planned = self.spec.get("planned_trials")
        return int(planned) if planned is not None else None

    @property
    def partial(self) -> bool:
        # Without a plan we cannot prove completeness, so we do not claim it.
        return self.planned is None or self.trials.height + self.search.height < self.planned

    def status_counts(self) -> dict[str, int]:
        if self.trials.is_empty():
            return {}
        counts = self.trials.group_by(STATUS).len().sort(STATUS)
        return dict(counts.iter_rows())

    def optuna_storage(self) -> Path | None:
        for name in ("optuna.db", "journal.log"):
            if (self.folder / name).is_file():
                return self.folder / name
        return None


def load_study(folder: str | Path) -> StudyResults:
    """Read a study folder; a study that is still running reads as what exists so far."""
    folder = Path(folder)
    spec_path = folder / STUDY_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{folder}: not a study folder (no study.yaml)")
    spec_text = spec_path.read_text()
    spec = yaml.safe_load(spec_text) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path}: a study spec is a mapping")
    store = ResultStore(folder)  # rebuilds a missing or damaged Parquet file from the trial folders
    rows = store.rows()
    # A tuned grid re-runs the selected search trial's config: the same trial_id in each phase, apart by phase.
    search = rows.filter(pl.col(PHASE) == "search") if PHASE in rows.columns else pl.DataFrame()
    if not search.is_empty():
        rows = rows.filter(pl.col(PHASE).fill_null("") != "search")  # ensemble rows have no phase
        search = spread_method_options(latest_rows(search))
    if not rows.is_empty():
        # A row is named by its key (ptlab.study.schema); of one recorded twice, the latest counts.
        rows = spread_method_options(latest_rows(rows))
    ensemble = is_ensemble(rows)
    repeats = repeated_rows(rows, repeated_cells(spec))
    references = reference_store(folder).rows()
    curves = store.curves()
    factors = list((spec.get("factors") or {}).keys())
    # a tuned grid's cells are its factors; the searched fields are what each cell selected
    searched = set((spec.get("search") or {}).get("space") or {}) if PHASE in rows.columns else set()
    every = pl.concat([rows, repeats], how="diagonal_relaxed") if not repeats.is_empty() else rows
    return StudyResults(
        search=search,
        folder=folder,
        spec=spec,
        spec_text=spec_text,
        trials=rows.filter(~ensemble),
        ensembles=rows.filter(ensemble),
        references=references,
        curves=curves,
        keys=[k for k in cell_keys(every, factors) if k not in searched],
        metrics=metric_columns(rows),
        repeats=repeats,
    )


def _as_stored(value: Any) -> Any:
    # as the store flattens a config (ptlab.config.flatten_config) and spread_method_options a nested option
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def repeated_cells(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Cell id of a study's trials -> for each other grid cell they are the result of, what tells it apart.

    That is the factor values, as results.parquet holds them, in which a
    cell differs from the first cell of its group (StudySpec.cell_groups),
    the one the study ran; empty where the grid has no such cells or the
    stored spec is none this ptlab can plan.
    """
    plan = stored_plan(spec)
    if plan is None or not plan.kind.has_cells:
        return {}
    repeated = {}
    for first, *others in plan.cell_groups():
        if others:
            configs = [plan.base.with_updates(other) for other in others]
            repeated[cell_id(plan.base.with_updates(first))] = [
                {path: _as_stored(field_value(cfg, path)) for path in differing_fields(other, first)}
                for other, cfg in zip(others, configs, strict=True)
            ]
    return repeated


def repeated_rows(rows: pl.DataFrame, repeated: dict[str, list[dict[str, Any]]]) -> pl.DataFrame:
    """Copies of the trial and ensemble rows of each cell in `repeated`, one set per cell repeating it, under
    that cell's factor values and the cell id `<cell id>/<what differs>`; an ensemble is in its members' cell."""
    if not repeated or rows.is_empty():
        return pl.DataFrame()
    cell = pl.col("cell_id")
    if ENSEMBLE_SIZE in rows.columns:
        member_cell = dict(zip(rows["trial_id"], rows["cell_id"], strict=True))
        first_member = pl.col(ENSEMBLE_MEMBERS).list.first()
        cell = pl.when(is_ensemble(rows)).then(first_member.replace_strict(member_cell, default=None)).otherwise(cell)
    copies = []
    for cell_of, repeats in repeated.items():
        own = rows.filter(cell == cell_of)
        for values in repeats if not own.is_empty() else ():
            # rows the repeated cell ran itself (a folder begun by a ptlab that ran it apart) are already its own
            holds = pl.all_horizontal([pl.col(path).eq_missing(value) if path in own.columns else pl.lit(False)
                                       for path, value in values.items()])
            copies.append(own.filter(~holds).with_columns(
                *[pl.lit(value).alias(path) for path, value in values.items()],
                (pl.col("cell_id") + "/" + cell_label(values)).alias("cell_id"),
            ))
    copies = [c for c in copies if not c.is_empty()]
    return pl.concat(copies, how="diagonal_relaxed") if copies else pl.DataFrame()


def spread_method_options(trials: pl.DataFrame) -> pl.DataFrame:
    """The store keeps the free ``method_options`` mapping as one JSON column; its keys
    become ``method_options.<key>`` columns that cells and dashboards can name."""
    if trials.schema.get("method_options") != pl.String:
        return trials
    options = [json.loads(text) if text else {} for text in trials["method_options"].to_list()]
    names = sorted({k for o in options for k in o})
    nested = (dict, list)
    spread = [
        pl.Series(
            f"method_options.{k}",
            [json.dumps(v, sort_keys=True) if isinstance(v := o.get(k), nested) else v for o in options],
            strict=False,
        )
        for k in names
    ]
    return trials.drop("method_options").with_columns(spread)


def _is_input_column(column: str) -> bool:
    """What a row was computed from rather than what it measured; ensembles of a cell differ in size alone."""
    return is_config_column(column) or column == ENSEMBLE_SIZE


def cell_keys(trials: pl.DataFrame, factors: list[str]) -> list[str]:
    """Columns that vary between rows, seed aside: a grid's factors or a search's space, and ensemble sizes."""
    if trials.is_empty():
        return []
    varying = [c for c in trials.columns if _is_input_column(c) and c != "seed" and trials.get_column(c).n_unique() > 1]
    return [f for f in factors if f in varying] + sorted(c for c in varying if c not in factors)


def metric_columns(trials: pl.DataFrame) -> list[str]:
    if trials.is_empty():
        return []
    numeric = [
        c
        for c, dtype in trials.schema.items()
        if dtype.is_numeric()
        and c not in _RECORD_COLUMNS
        and not _is_input_column(c)
        and trials.get_column(c).null_count() < trials.height
    ]
    first = [m for m in _METRIC_ORDER if m in numeric]
    last = [m for m in TIMINGS if m in numeric]
    return first + sorted(set(numeric) - set(first) - set(last)) + last


def is_bookkeeping(column: str, values: pl.Series) -> bool:
    """Counts and timings: the study's own records (seconds, epochs, attempts) and whole-number
    outcomes such as images encoded or train_size. Percentages are measurements even when whole."""
    if is_percent(column):
        return False
    if column in TIMINGS or column.endswith("_s"):
        return True
    known = values.drop_nulls().cast(pl.Float64).drop_nans()
    return known.len() > 0 and bool((known == known.round(0)).all())


def is_percent(metric: str) -> bool:
    """Accuracies and AUROCs are stored in percent, bounded to [0, 100]."""
    return metric.endswith(("_acc", "auroc"))


def higher_is_better(metric: str) -> bool | None:
    """Which way a metric improves, where that is known; None: no best to mark."""
    if is_percent(metric):
        return True
    return False if metric in _LOWER_IS_BETTER else None


def t_critical(dof: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value for an integer number of degrees of freedom.

    Seeds are few (3-5), so the normal 1.96 would understate the interval by
    a factor of up to 2. Without scipy, this bisects the closed-form CDF of
    Abramowitz & Stegun 26.7.3-4, exact for integer dof.
    """
    if dof < 1:
        raise ValueError("a confidence interval needs at least two seeds")

    def central_mass(t: float) -> float:
        theta = math.atan(t / math.sqrt(dof))
        sin, cos2 = math.sin(theta), math.cos(theta) ** 2
        if dof % 2:
            term, total, k = math.cos(theta), 0.0, 1
            while k <= dof - 2:
                total += term
                term *= cos2 * (k + 1) / (k + 2)
                k += 2
            return 2 / math.pi * (theta + sin * total)
        term, total, k = 1.0, 0.0, 0
        while k <= dof - 2:
            total += term
            term *= cos2 * (k + 1) / (k + 2)
            k += 2
        return sin * total

    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if central_mass(mid) < level else (lo, mid)
    return (lo + hi) / 2


def cell_summary(trials: pl.DataFrame, keys: list[str], metrics: list[str]) -> pl.DataFrame:
    """One row per cell: completed seeds, excluded seeds and why, mean/std/95% CI per metric.

    Pruned trials are search bookkeeping, not results, and are left out. The
    interval is left empty below MIN_SEEDS_FOR_CI seeds and for counts and timings.
    """
    rows = trials.filter(pl.col(STATUS) != PRUNED)
    if rows.is_empty():
        return pl.DataFrame()
    done = pl.col(STATUS) == COMPLETED
    bad = pl.col(STATUS).is_in(EXCLUDED)
    reason = pl.format("seed {} {}", pl.col("seed"), pl.col(STATUS))
    aggs = [
        done.sum().alias("n_seeds"),
        bad.sum().alias("n_excluded"),
        reason.filter(bad).str.join("; ").alias("excluded"),
    ]
    for m in metrics:
        value = pl.col(m).filter(done)
        aggs += [value.mean().alias(f"{m}_mean"), value.std(ddof=1).alias(f"{m}_std"), value.count().alias(f"_{m}_n")]
    cells = rows.group_by(CELL_ID, maintain_order=True).agg(*[pl.col(k).first() for k in keys], *aggs)
    for m in metrics:
        counts = [n for n in cells.get_column(f"_{m}_n").unique().to_list() if n >= MIN_SEEDS_FOR_CI]
        if is_bookkeeping(m, rows.get_column(m)):
            counts = []
        t = pl.col(f"_{m}_n").replace_strict(
            {n: t_critical(n - 1) for n in counts}, default=None, return_dtype=pl.Float64
        )
        cells = cells.with_columns((t * pl.col(f"{m}_std") / pl.col(f"_{m}_n").sqrt()).alias(f"{m}_ci95"))
    ordered = [CELL_ID, *keys, "n_seeds", "n_excluded", "excluded"]
    ordered += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std", "ci95")]
    cells = cells.select(ordered)
    return cells.sort(keys) if keys else cells


def robustness_summary(cells: pl.DataFrame, keys: list[str], metric: str = "test_acc") -> pl.DataFrame:
    """Per method/loss/etc. (every key but the noise rate): the drop from the lowest to the
    highest noise rate and the area under the metric-vs-noise curve (trapezoids).

    ``auc_norm`` divides the area by the noise range: the mean of the metric over
    the range, in the metric's own unit, comparable across grids.
    """
    mean = f"{metric}_mean"
    if NOISE not in keys or mean not in cells.columns:
        return pl.DataFrame()
    group = [k for k in keys if k != NOISE]
    rate, value = pl.col(NOISE), pl.col(mean)
    aggs = [
        pl.len().alias("n_rates"),
        rate.first().alias("rate_lo"),
        rate.last().alias("rate_hi"),
        value.first().alias(f"{metric}_lo"),
        value.last().alias(f"{metric}_hi"),
        (value.first() - value.last()).alias("drop"),
        ((rate.diff() * (value + value.shift(1))) / 2).sum().alias("auc"),
    ]
    ordered = cells.filter(value.is_not_null()).sort(NOISE)
    table = ordered.group_by(group, maintain_order=True).agg(aggs) if group else ordered.select(aggs)
    span = pl.col("rate_hi") - pl.col("rate_lo")
    # One rate gives neither a drop nor an area: leave them empty, not zero.
    one = pl.col("n_rates") < 2
    table = table.with_columns(
        pl.when(one).then(None).otherwise(pl.col("drop")).alias("drop"),
        pl.when(one).then(None).otherwise(pl.col("auc")).alias("auc"),
        pl.when(one).then(None).otherwise(pl.col("auc") / span).alias("auc_norm"),
    )
    return table.sort(group) if group else table


def excluded_trials(trials: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Flagged and failed trials, with their cell and error, for the researcher to inspect."""
    if trials.is_empty():
        return pl.DataFrame()
    columns = [TRIAL_ID, *keys, "seed", STATUS, ERROR]
    rows = trials.filter(pl.col(STATUS).is_in(EXCLUDED))
    return rows.select([c for c in columns if c in rows.columns])


def format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    # Below 1 come noise rates, learning rates and 0-1 scores: keep their significant digits.
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def format_mean_ci(mean: float | None, ci: float | None) -> str:
    """``mean ± ci``, the interval printed to the mean's precision."""
    if ci is None or mean is None or abs(mean) < 1:
        return format_number(mean) if ci is None else f"{format_number(mean)} ± {format_number(ci)}"
    return f"{mean:.2f} ± {ci:.2f}"


def paper_table(cells: pl.DataFrame, keys: list[str], metrics: list[str]) -> pl.DataFrame:
    """Cells as text: the keys, n (noting exclusions), and ``mean ± 95% CI`` per metric (the mean alone where there is no CI)."""
    if cells.is_empty():
        return pl.DataFrame()
    columns: dict[str, list[str]] = {
        # a key that some rows lack (ensemble_size on trial rows) prints as a dash
        k: [format_number(v) if isinstance(v, float) or v is None else str(v) for v in cells.get_column(k).to_list()]
        for k in keys
    }
    seeds = []
    for n, excluded in cells.select("n_seeds", "n_excluded").iter_rows():
        seeds.append(f"{n} ({excluded} excluded)" if excluded else str(n))
    columns["n"] = seeds
    for m in metrics:
        if f"{m}_mean" not in cells.columns:
            continue
        pairs = cells.select(f"{m}_mean", f"{m}_ci95").iter_rows()
        columns[m] = [format_mean_ci(mean, ci) for mean, ci in pairs]
    return pl.DataFrame(columns)


def best_rows(cells: pl.DataFrame, metrics: list[str]) -> dict[str, set[int]]:
    """Per metric with a known direction, the rows whose mean is the best as printed (ties all count)."""
    best: dict[str, set[int]] = {}
    for m in metrics:
        direction = higher_is_better(m)
        if direction is None or f"{m}_mean" not in cells.columns:
            continue
        printed = [None if v is None or math.isnan(v) else round(v, 2) for v in cells[f"{m}_mean"].to_list()]
        known = [v for v in printed if v is not None]
        if len(known) < 2:
            continue
        top = max(known) if direction else min(known)
        best[m] = {i for i, v in enumerate(printed) if v == top}
    return best


def reference_table(study: StudyResults, keys: list[str], metrics: list[str]) -> pl.DataFrame:
    """The zero-shot reference as rows of a paper table: labelled in the first key's column, n = 1."""
    refs = study.references.filter(pl.col(STATUS) == COMPLETED) if not study.references.is_empty() else study.references
    if refs.is_empty():
        return pl.DataFrame()
    varied = [c for c in keys if c in refs.columns and refs[c].n_unique() > 1]
    rows = []
    for ref in refs.iter_rows(named=True):
        label = "zero-shot CLIP" + "".join(f", {c}={ref[c]}" for c in varied)
        row = {(keys[0] if keys else "cell"): label} | {k: "" for k in keys[1:]} | {"n": "1"}
        for m in metrics:
            value = ref.get(m)
            row[m] = format_number(value) if value is not None else "–"
        rows.append(row)
    return pl.DataFrame(rows).select(list(rows[0]))


def markdown(table: pl.DataFrame, bold: dict[str, set[int]] | None = None) -> str:
    """A GitHub/pandoc pipe table, numbers as they print in the report, ``bold`` cells in **bold**."""
    bold = bold or {}

    def cell(column: str, i: int, v: Any) -> str:
        text = format_number(v) if isinstance(v, float) else ("–" if v is None else str(v))
        text = text.replace("|", "\\|")
        return f"**{text}**" if i in bold.get(column, ()) else text

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * table.width]
    lines += [
        "| " + " | ".join(cell(c, i, v) for c, v in zip(table.columns, row, strict=True)) + " |"
        for i, row in enumerate(table.iter_rows())
    ]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_text(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace("–", "--")


def latex(table: pl.DataFrame, bold: dict[str, set[int]] | None = None, rule_after: int = 0) -> str:
    """A booktabs tabular, as papers print it; the first ``rule_after`` rows (the reference) get a rule of their own."""
    bold = bold or {}
    # Numbers right-aligned, names left, as in a paper.
    align = "".join(
        "r" if all(re.match(r"[-+\d–]", v) for v in table[c].drop_nulls().cast(pl.String) if v) else "l"
        for c in table.columns
    )
    lines = [f"\\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex_text(c) for c in table.columns) + r" \\", r"\midrule"]
    for i, row in enumerate(table.iter_rows()):
        if rule_after and i == rule_after:
            lines.append(r"\midrule")
        cells = ["" if v is None else _latex_text(str(v)) for v in row]
        cells = [f"\\textbf{{{t}}}" if i in bold.get(c, ()) else t for c, t in zip(table.columns, cells, strict=True)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def export_tables(
    study: StudyResults, cells: pl.DataFrame, robustness: pl.DataFrame, out: Path, primary: list[str]
) -> list[Path]:
    """cells.csv and robustness.csv (every number); summary.md and summary.tex, the main table as a paper prints it
    (the zero-shot reference first, mean ± 95% CI, best per column in bold)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    sections = [f"# {study.name}\n", UNCERTAINTY + "\n"]
    if not cells.is_empty():
        cells.write_csv(out / "cells.csv")
        written.append(out / "cells.csv")
        table = paper_table(cells, study.keys, primary)
        bold = best_rows(cells, primary)
        reference = reference_table(study, study.keys, primary)
        shown = pl.concat([reference, table], how="diagonal") if not reference.is_empty() else table
        bold = {m: {i + reference.height for i in rows} for m, rows in bold.items()}
        sections += ["## Summary (mean ± 95% CI; best in bold)\n", markdown(shown, bold)]
        (out / "summary.tex").write_text(latex(shown, bold, reference.height))
        written.append(out / "summary.tex")
    if not robustness.is_empty():
        robustness.write_csv(out / "robustness.csv")
        written.append(out / "robustness.csv")
        sections += ["## Robustness to label noise\n", markdown(robustness)]
    (out / "summary.md").write_text("\n".join(sections))
    written.append(out / "summary.md")
    return written
