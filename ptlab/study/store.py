"""Trial outcomes → results.parquet (one row per trial) and curves.parquet (one row per trial and epoch).

Both files are derived data. Every recorded outcome is first written as
`trials/<key>/outcome.json` (and the ensembles' rows as `ensembles.json`):
when a Parquet file is missing or unreadable, it is rebuilt from those, and
the rebuild says so on stderr.

Each file is rewritten whole into a temporary file and renamed over the old
one, so a reader, or a driver killed mid-write, only ever sees a complete file
holding every trial recorded before. Curves are written before results: a
trial listed in results always has its curve. Rows are keyed by Tune's trial
id, so recording a trial twice (after a resume) replaces, never duplicates.
Columns, types, identity and the study label written into both files are
ptlab.study.schema's.

results.parquet also holds the rows of a study's seed ensembles
(ptlab.methods.ensemble), which alone have an `ensemble_size`. They are
derived from the trials' rows and always replaced as a whole, so computing
them again (after a resume) never duplicates them either.
"""

from __future__ import annotations

import functools
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from ptlab.config import config_columns, flatten_config
from ptlab.files import atomic_write
from ptlab.study.layout import CURVES, ENSEMBLES, OUTCOME, RESULTS, STUDY_FILE, TRIALS_DIR
from ptlab.study.schema import (
    ATTEMPTS,
    CELL_ID,
    CONFIG_JSON,
    ENSEMBLE_SIZE,
    EPOCH,
    EPOCHS_DONE,
    ERROR,
    FINISHED_AT,
    KEY,
    METRIC_PREFIX,
    PHASE,
    PROVENANCE_COLUMNS,
    RECIPE_S,
    STATUS,
    STUDY,
    TRIAL_ID,
    WALL_S,
    StudyLabel,
    concat,
    conform,
    curves_dtypes,
    curves_frame,
    factor_values,
    results_dtypes,
    results_frame,
)


def is_ensemble(rows: pl.DataFrame) -> pl.Expr:
    """Which rows of a results table are seed ensembles: only they carry an ensemble_size."""
    return pl.col(ENSEMBLE_SIZE).is_not_null() if ENSEMBLE_SIZE in rows.columns else pl.lit(False)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _metric_column(name: str) -> str:
    # a metric named like a config column must not overwrite it
    return f"{METRIC_PREFIX}{name}" if name in config_columns() else name


@dataclass
class TrialOutcome:
    """What the study knows of one trial when it ends, however it ended."""

    key: str
    trial_id: str
    cell_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    curve: list[dict[str, Any]]
    timings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    error: str = ""
    phase: str = ""  # a tuned grid's "search" or "rerun" (PHASE column)

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            TRIAL_ID: self.trial_id,
            CELL_ID: self.cell_id,
            KEY: self.key,
            STATUS: self.status,
            ERROR: self.error,
            **({PHASE: self.phase} if self.phase else {}),
            **flatten_config(self.config),
            CONFIG_JSON: json.dumps(self.config, sort_keys=True),
        }
        for name, value in self.metrics.items():
            number = _number(value)
            if number is None or name in (EPOCH, EPOCHS_DONE):
                continue
            row[_metric_column(name)] = float(number)
        row[EPOCHS_DONE] = int(self.metrics.get(EPOCHS_DONE, self.curve[-1][EPOCH] if self.curve else 0))
        finished, attempts = self.timings.get(FINISHED_AT), _number(self.timings.get(ATTEMPTS))
        row.update({
            WALL_S: _number(self.timings.get(WALL_S)),
            RECIPE_S: _number(self.timings.get(RECIPE_S)),
            ATTEMPTS: int(attempts) if attempts is not None else None,
            FINISHED_AT: datetime.fromtimestamp(finished, timezone.utc) if finished else None,
        })
        for source, column in PROVENANCE_COLUMNS.items():
            row[column] = self.provenance.get(source, "")
        return row

    def curve_rows(self, factors: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """One row per epoch, with the trial's value of each of the study's `factors` (StudyLabel.columns)."""
        ids = {TRIAL_ID: self.trial_id, KEY: self.key, **factor_values(self.config, factors)}
        rows = []
        for point in self.curve:
            values = {_metric_column(k): float(v) for k, v in point.items() if _number(v) is not None and k != EPOCH}
            rows.append({**ids, EPOCH: int(point[EPOCH]), **values})
        return rows


class ResultStore:
    """A study's results and curves files in `folder`; their label is read from `study_dir`'s study.yaml (default `folder`)."""

    def __init__(self, folder: str | Path, study_dir: str | Path | None = None):
        self.folder = Path(folder)
        self.study_dir = Path(study_dir) if study_dir is not None else self.folder

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS

    @property
    def curves_path(self) -> Path:
        return self.folder / CURVES

    @functools.cached_property
    def label(self) -> StudyLabel | None:
        """The study the files belong to, as its study.yaml says; None where there is none (a bare folder)."""
        path = self.study_dir / STUDY_FILE
        if not path.is_file():
            return None
        from ptlab.study.spec import StudyError, load_study  # here: a reader that never writes does not pay for it

        try:
            return StudyLabel.of(load_study(path, check_data=False))
        except StudyError as err:
            print(f"{path} does not validate, so {RESULTS} and {CURVES} are written without the study's "
                  f"name and factors: {str(err).splitlines()[0]}", file=sys.stderr)
            return None

    def rows(self) -> pl.DataFrame:
        """Every row of results.parquet: trials and ensembles."""
        return self._read(self.results_path)

    def results(self) -> pl.DataFrame:
        """One row per trial."""
        rows = self.rows()
        return rows.filter(~is_ensemble(rows))

    def curves(self) -> pl.DataFrame:
        return self._read(self.curves_path)

    def _declared(self, path: Path) -> dict[str, pl.DataType]:
        return curves_dtypes() if path == self.curves_path else results_dtypes()

    def _read(self, path: Path) -> pl.DataFrame:
        """The file in the schema's types, whichever ptlab version wrote it."""
        try:
            return conform(pl.read_parquet(path), self._declared(path))
        except FileNotFoundError:
            problem = "missing"
        except (pl.exceptions.PolarsError, OSError) as err:
            problem = f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        outcomes = self._outcomes()
        # missing is also how a file starts: rebuilt only when some recorded outcome has rows for it
        needed = any(o.curve for o in outcomes) if path == self.curves_path else bool(outcomes)
        if not needed and problem == "missing":
            return pl.DataFrame()
        if not outcomes:
            print(f"{path} is {problem}, and no trial folder holds an {OUTCOME} to rebuild it from", file=sys.stderr)
            return pl.DataFrame()
        self.rebuild(f"{path} is {problem}", outcomes)
        return pl.read_parquet(path) if path.is_file() else pl.DataFrame()

    def _outcomes(self) -> list[TrialOutcome]:
        outcomes = []
        for path in sorted(self.folder.glob(f"trials/*/{OUTCOME}")):
            try:
                outcomes.append(TrialOutcome(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as err:
                print(f"{path}: skipped, unreadable ({err})", file=sys.stderr)
        return outcomes

    def _curve_frame(self, outcome: TrialOutcome) -> pl.DataFrame | None:
        if not outcome.curve:
            return None
        return curves_frame(outcome.curve_rows(self.label.columns if self.label else ()))

    def rebuild(self, why: str, outcomes: list[TrialOutcome]) -> None:
        """Write both Parquet files afresh from the trials' recorded outcomes."""
        ensembles = json.loads((self.folder / ENSEMBLES).read_text()) if (self.folder / ENSEMBLES).is_file() else []
        self._write(self.curves_path, [self._curve_frame(o) for o in outcomes])
        rows = [results_frame([o.row() for o in outcomes])]
        if ensembles:
            rows.append(self._ensemble_frame(ensembles))
        self._write(self.results_path, rows)
        print(f"{why}; rebuilt {RESULTS} and {CURVES} from {len(outcomes)} trial folders", file=sys.stderr)

    def keys(self) -> set[str]:
        df = self.results()
        return set(df[KEY].to_list()) if df.height else set()

    def add(self, outcome: TrialOutcome) -> None:
        # read first: a missing file is rebuilt from the outcomes recorded before this one
        curves, rows = self.curves(), self.rows()
        folder = self.folder / TRIALS_DIR / outcome.key
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / OUTCOME, json.dumps(asdict(outcome), default=str).encode())
        self._replace(self.curves_path, curves, outcome.key, self._curve_frame(outcome))
        self._replace(self.results_path, rows, outcome.key, results_frame([outcome.row()]))

    def set_ensembles(self, rows: list[dict[str, Any]]) -> None:
        """Replace every ensemble row by `rows`, each keyed by its own trial_id (`ens-...`)."""
        stored = self.rows()
        if not rows and not stored.filter(is_ensemble(stored)).height:
            return  # nothing to replace: a study without ensembles keeps its file as the trials left it
        atomic_write(self.folder / ENSEMBLES, json.dumps(rows, default=str).encode())
        new = self._ensemble_frame(rows) if rows else None
        self._write(self.results_path, [stored.filter(~is_ensemble(stored)), new])

    @staticmethod
    def _ensemble_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
        return results_frame(rows).with_columns(pl.col(TRIAL_ID).alias(KEY))

    def _replace(self, path: Path, old: pl.DataFrame, key: str, new: pl.DataFrame | None) -> None:
        if old.height:
            old = old.filter(pl.col(KEY) != key)
        self._write(path, [old, new])

    def _write(self, path: Path, frames: list[pl.DataFrame | None]) -> None:
        frames = [f for f in frames if f is not None and f.height]
        if not frames:
            return
        # Metrics differ between methods and statuses: missing columns become nulls.
        merged = concat(frames, self._declared(path))
        label = self.label
        if label is not None or STUDY not in merged.columns:
            merged = merged.with_columns(pl.lit(label.name if label else None, pl.String).alias(STUDY))
        merged = merged.select(STUDY, pl.exclude(STUDY))
        buffer = io.BytesIO()
        merged.write_parquet(buffer, metadata=label.metadata() if label else None)
        atomic_write(path, buffer.getvalue())
