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

results.parquet also holds the rows of a study's seed ensembles
(ptlab.methods.ensemble), which alone have an `ensemble_size`. They are
derived from the trials' rows and always replaced as a whole, so computing
them again (after a resume) never duplicates them either.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from ptlab.config import flatten_config
from ptlab.files import atomic_write
from ptlab.study.layout import CURVES, ENSEMBLES, OUTCOME, RESULTS, TRIALS_DIR

KEY = "tune_trial_id"
# Set on ensemble rows only: what tells them from trial rows, here and in reports.
ENSEMBLE_SIZE = "ensemble_size"
# Set on a tuned grid's rows only: "search" trials pick each cell's configuration, "rerun" rows are its result.
PHASE = "phase"
PROVENANCE_COLUMNS = {
    "ptlab": "ptlab_version",
    "torch": "torch_version",
    "open_clip": "open_clip_version",
    "ray": "ray_version",
    "python": "python_version",
    "git_commit": "git_commit",
}


def is_ensemble(rows: pl.DataFrame) -> pl.Expr:
    """Which rows of a results table are seed ensembles: only they carry an ensemble_size."""
    return pl.col(ENSEMBLE_SIZE).is_not_null() if ENSEMBLE_SIZE in rows.columns else pl.lit(False)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


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
        config_columns = flatten_config(self.config)
        row: dict[str, Any] = {
            "trial_id": self.trial_id,
            "cell_id": self.cell_id,
            KEY: self.key,
            "status": self.status,
            "error": self.error,
            **({PHASE: self.phase} if self.phase else {}),
            **config_columns,
            "config_json": json.dumps(self.config, sort_keys=True),
        }
        for name, value in self.metrics.items():
            number = _number(value)
            if number is None or name in ("epoch", "epochs_done"):
                continue
            # a metric named like a config column must not overwrite it
            row[f"metric.{name}" if name in config_columns else name] = float(number)
        row["epochs_done"] = int(self.metrics.get("epochs_done", self.curve[-1]["epoch"] if self.curve else 0))
        finished = self.timings.get("finished_at")
        row.update(
            wall_s=_number(self.timings.get("wall_s")),
            recipe_s=_number(self.timings.get("recipe_s")),
            attempts=_number(self.timings.get("attempts")),
            finished_at=datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds") if finished else None,
        )
        for source, column in PROVENANCE_COLUMNS.items():
            row[column] = self.provenance.get(source, "")
        return row

    def curve_rows(self) -> list[dict[str, Any]]:
        rows = []
        for point in self.curve:
            values = {k: float(v) for k, v in point.items() if _number(v) is not None and k != "epoch"}
            rows.append({"trial_id": self.trial_id, KEY: self.key, "epoch": int(point["epoch"]), **values})
        return rows


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS

    @property
    def curves_path(self) -> Path:
        return self.folder / CURVES

    def rows(self) -> pl.DataFrame:
        """Every row of results.parquet: trials and ensembles."""
        return self._read(self.results_path)

    def results(self) -> pl.DataFrame:
        """One row per trial."""
        rows = self.rows()
        return rows.filter(~is_ensemble(rows))

    def curves(self) -> pl.DataFrame:
        return self._read(self.curves_path)

    def _read(self, path: Path) -> pl.DataFrame:
        try:
            return pl.read_parquet(path)
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

    def rebuild(self, why: str, outcomes: list[TrialOutcome]) -> None:
        """Write both Parquet files afresh from the trials' recorded outcomes."""
        ensembles = json.loads((self.folder / ENSEMBLES).read_text()) if (self.folder / ENSEMBLES).is_file() else []
        curves = [pl.DataFrame(o.curve_rows()) for o in outcomes if o.curve]
        self._write(self.curves_path, curves)
        rows = [pl.DataFrame([o.row()]) for o in outcomes]
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
        curve = pl.DataFrame(outcome.curve_rows()) if outcome.curve else None
        self._replace(self.curves_path, curves, outcome.key, curve)
        self._replace(self.results_path, rows, outcome.key, pl.DataFrame([outcome.row()]))

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
        return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("trial_id").alias(KEY))

    def _replace(self, path: Path, old: pl.DataFrame, key: str, new: pl.DataFrame | None) -> None:
        if old.height:
            old = old.filter(pl.col(KEY) != key)
        self._write(path, [old, new])

    def _write(self, path: Path, frames: list[pl.DataFrame | None]) -> None:
        frames = [f for f in frames if f is not None and f.height]
        if not frames:
            return
        # Metrics differ between methods and statuses: missing columns become nulls.
        merged = pl.concat(frames, how="diagonal_relaxed")
        buffer = io.BytesIO()
        merged.write_parquet(buffer)
        atomic_write(path, buffer.getvalue())

