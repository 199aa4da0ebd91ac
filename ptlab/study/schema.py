"""The results schema: the columns of results.parquet and curves.parquet, their types, and what names a row.

Imports Polars and ptlab.config (pydantic) only, never torch or Ray: reports
and third-party readers use it. Every writer builds its frames with
`results_frame` / `curves_frame`, every reader of the store gets `conform`ed
frames, so a column has one type in every row, every file and every ptlab
version: files written before a column had its type (timestamps as ISO text,
lists as JSON or comma-separated text, counts as floats, columns null in
every row) read back in the current types, and rows of old and new files
concatenate.

Types: counts (`epochs_done`, `attempts`, `ensemble_size`, and the integer
config fields `seed`, `shots`, `n_ctx`, `train.epochs`, `train.batch_size`,
...) are Int64; `finished_at` is a UTC Datetime; `train.crop_scale`,
`ensemble_seeds` and `ensemble_members` are lists; `method_options` and
`config_json` are JSON text (an open mapping has no fixed columns); config
fields take their TrialConfig type whether or not any row sets them; every
other column is a metric, Float64.

Identity. `tune_trial_id` (KEY) names a row: one run of a trial (Ray Tune's
id, and the trial's folder `trials/<tune_trial_id>/`; an ensemble's own
`ens-...` id; a zero-shot reference's `reference-<trial_id>`). The store
replaces a row recorded again under its key, so no key appears twice, and a
trial's curve is joined to its row by it. `trial_id` is what the row
computed, the hash of its config: rows that share it computed the same thing
(a tuned grid's re-run and the search trial it re-runs, a search that drew
one sample twice) and are still two rows. `cell_id` is the hash of the
config without its seed: the cell whose seeds a report folds together.

Each file also carries, as Parquet key-value metadata (`read_label`), the
study it belongs to: its name, kind, factor paths and searched paths. The
same name is in the `study` column of every row, so rows of several studies
concatenated still tell which is which.
"""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import polars as pl
from pydantic import BaseModel

from ptlab.config import TrialConfig, flatten_config

if TYPE_CHECKING:
    from ptlab.study.spec import StudySpec

# identity and record
STUDY = "study"
KEY = "tune_trial_id"
TRIAL_ID = "trial_id"
CELL_ID = "cell_id"
STATUS = "status"  # one of ptlab.methods.base's STATUS_* values
ERROR = "error"
# Set on a tuned grid's rows only: "search" trials pick each cell's configuration, "rerun" rows are its result.
PHASE = "phase"
# the config: one column per TrialConfig field (ptlab.config.flatten_config), and all of it as JSON
METHOD_OPTIONS = "method_options"
CONFIG_JSON = "config_json"
# A metric named like a config column is stored under this prefix, beside the config value it must not overwrite.
METRIC_PREFIX = "metric."
# bookkeeping
EPOCH = "epoch"  # curves.parquet: the epoch a row reports
EPOCHS_DONE = "epochs_done"
WALL_S = "wall_s"
RECIPE_S = "recipe_s"
ATTEMPTS = "attempts"
FINISHED_AT = "finished_at"
TIMINGS = (WALL_S, RECIPE_S, EPOCHS_DONE, ATTEMPTS)
# provenance: the source (ptlab.methods.base.provenance) -> its column
PROVENANCE_COLUMNS = {
    "ptlab": "ptlab_version",
    "torch": "torch_version",
    "open_clip": "open_clip_version",
    "ray": "ray_version",
    "python": "python_version",
    "git_commit": "git_commit",
}
# Set on ensemble rows only (ptlab.methods.ensemble): what tells them from trial rows, here and in reports.
ENSEMBLE_SIZE = "ensemble_size"
ENSEMBLE_SEEDS = "ensemble_seeds"
ENSEMBLE_MEMBERS = "ensemble_members"  # the members' trial_ids
MEMBER_TEST_ACC = "member_test_acc"

UTC_TIME = pl.Datetime("us", "UTC")
METRIC = pl.Float64


def _dtype(annotation: Any) -> pl.DataType:
    """The column type of a TrialConfig field's annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return _dtype(type(args[0]))
    if origin in (Union, types.UnionType):
        [present] = [a for a in args if a is not type(None)]
        return _dtype(present)
    if origin in (tuple, list):
        return pl.List(_dtype(args[0]))
    if annotation is dict or origin is dict:
        return pl.String  # an open mapping, stored as JSON
    return {bool: pl.Boolean, int: pl.Int64, float: pl.Float64, str: pl.String}[annotation]


def _model_dtypes(model: type[BaseModel], prefix: str = "") -> dict[str, pl.DataType]:
    out: dict[str, pl.DataType] = {}
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out.update(_model_dtypes(field.annotation, f"{prefix}{name}."))
        else:
            out[prefix + name] = _dtype(field.annotation)
    return out


@functools.cache
def config_dtypes() -> dict[str, pl.DataType]:
    """Every config column (ptlab.config.config_columns) and its type, read from TrialConfig's annotations."""
    return _model_dtypes(TrialConfig)


def _record_dtypes() -> dict[str, pl.DataType]:
    return {STUDY: pl.String, TRIAL_ID: pl.String, CELL_ID: pl.String, KEY: pl.String}


@functools.cache
def results_dtypes() -> dict[str, pl.DataType]:
    """The declared columns of results.parquet; any other column is a metric (Float64)."""
    return {
        **_record_dtypes(),
        STATUS: pl.String,
        ERROR: pl.String,
        PHASE: pl.String,
        **config_dtypes(),
        CONFIG_JSON: pl.String,
        EPOCHS_DONE: pl.Int64,
        WALL_S: pl.Float64,
        RECIPE_S: pl.Float64,
        ATTEMPTS: pl.Int64,
        FINISHED_AT: UTC_TIME,
        **dict.fromkeys(PROVENANCE_COLUMNS.values(), pl.String),
        ENSEMBLE_SIZE: pl.Int64,
        ENSEMBLE_SEEDS: pl.List(pl.Int64),
        ENSEMBLE_MEMBERS: pl.List(pl.String),
    }


@functools.cache
def curves_dtypes() -> dict[str, pl.DataType]:
    """The declared columns of curves.parquet: a row's trial, its factor values (config columns) and epoch; the rest are metrics."""
    return {**_record_dtypes(), **config_dtypes(), EPOCH: pl.Int64}


def _undeclared(column: str, dtype: pl.DataType) -> pl.DataType:
    if column.startswith(f"{METHOD_OPTIONS}."):  # a factor on a method option (curves): the option's own type
        return pl.String if dtype == pl.Null else dtype
    return METRIC if dtype == pl.Null or dtype.is_numeric() else dtype


def _legacy_list(text: str | None, inner: pl.DataType) -> list | None:
    """A list that files of earlier versions stored as text: JSON (`[0.08, 1.0]`) or comma-separated (`1,2,3`)."""
    if text is None:
        return None
    items = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t]
    return [int(t) if inner == pl.Int64 else float(t) if inner == pl.Float64 else t for t in items]


def _cast(column: str, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    expr = pl.col(column)
    if have == pl.String and isinstance(want, pl.Datetime):
        return expr.str.to_datetime(time_zone="UTC").cast(want)
    if have == pl.String and isinstance(want, pl.List):
        return expr.map_elements(lambda text: _legacy_list(text, want.inner), return_dtype=want)
    return expr.cast(want)


def conform(frame: pl.DataFrame, declared: dict[str, pl.DataType]) -> pl.DataFrame:
    """`frame` with every column in its schema type: declared columns as declared, metrics as Float64, none Null."""
    casts = []
    for column, have in frame.schema.items():
        want = declared.get(column) or _undeclared(column, have)
        if have != want:
            casts.append(_cast(column, have, want).alias(column))
    return frame.with_columns(casts) if casts else frame


def results_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """results.parquet rows (TrialOutcome.row, ensemble rows) as a frame in the schema's types."""
    return conform(pl.DataFrame(list(rows), infer_schema_length=None), results_dtypes())


def curves_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    return conform(pl.DataFrame(list(rows), infer_schema_length=None), curves_dtypes())


def concat(frames: Sequence[pl.DataFrame], declared: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows of several frames (old files, new rows, ensembles) in one: a column missing from some is null there."""
    return pl.concat([conform(f, declared) for f in frames], how="diagonal")


def row_key(frame: pl.DataFrame) -> str:
    """The column that names `frame`'s rows: KEY, or trial_id in tables written before rows had a key."""
    return KEY if KEY in frame.columns else TRIAL_ID


def latest_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per key, the last recorded. A row without a key (a table written before rows had one, or by
    hand) is named by its trial_id, as the store names ensemble rows."""
    if frame.is_empty():
        return frame
    name = pl.coalesce(KEY, TRIAL_ID) if KEY in frame.columns else pl.col(TRIAL_ID)
    return frame.filter(name.is_last_distinct())


def factor_values(config: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A config's (TrialConfig.model_dump) value of each factor path, as the results and curves columns hold it.

    Config fields are their flattened columns; `method_options.<key>` is the
    option as written (null where the trial left it at its default), an open
    mapping or list of them as JSON, as reports spread method_options.
    """
    flat = flatten_config(config)
    options = config.get(METHOD_OPTIONS) or {}
    out = {}
    for path in paths:
        if path in flat:
            out[path] = flat[path]
        else:
            value = options.get(path.removeprefix(f"{METHOD_OPTIONS}."))
            out[path] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
    return out


# --- the study a file belongs to ---------------------------------------------------

_META = "ptlab."


@dataclass(frozen=True)
class StudyLabel:
    """What results.parquet and curves.parquet say of their study, in their metadata and `study` column."""

    name: str
    kind: str  # grid, search or tuned_grid (ptlab.study.spec.StudyKind)
    factors: tuple[str, ...]  # the paths the study crosses into cells
    searched: tuple[str, ...] = ()  # the paths its searches sample

    @classmethod
    def of(cls, spec: StudySpec) -> StudyLabel:
        return cls(spec.name, spec.kind.name, tuple(spec.factors), tuple(spec.search.space) if spec.search else ())

    @property
    def columns(self) -> tuple[str, ...]:
        """What varies between the study's trials by design: its factors, then its searched fields."""
        return self.factors + tuple(p for p in self.searched if p not in self.factors)

    def metadata(self) -> dict[str, str]:
        return {f"{_META}study": self.name, f"{_META}kind": self.kind,
                f"{_META}factors": json.dumps(list(self.factors)), f"{_META}searched": json.dumps(list(self.searched))}


def read_label(path: str | Path) -> StudyLabel | None:
    """The study a results or curves file belongs to, from its metadata; None for files written before it had any.

    Other readers find the same keys (`ptlab.study`, `ptlab.kind`,
    `ptlab.factors`, `ptlab.searched`; lists as JSON) with
    `pyarrow.parquet.read_metadata(path).metadata` or `pl.read_parquet_metadata(path)`.
    """
    meta = pl.read_parquet_metadata(path)
    if f"{_META}study" not in meta:
        return None
    return StudyLabel(meta[f"{_META}study"], meta[f"{_META}kind"], tuple(json.loads(meta[f"{_META}factors"])),
                      tuple(json.loads(meta[f"{_META}searched"])))
