"""`ptlab study status`: a study's stored results and its driver's last progress snapshot, read without Ray or torch.

Only the files are read (study.yaml, results.parquet through polars,
progress.json), so the command answers in about a second while a study runs
or after it ended; the running driver's side is ptlab.study.progress.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from ptlab.methods.base import STATUS_COMPLETED
from ptlab.study.layout import PROGRESS, STUDY_FILE
from ptlab.study.schema import CELL_ID, KEY, PHASE, STATUS
from ptlab.study.store import ResultStore

STALE_S = 30.0  # a heartbeat this old means no driver is running the study


def clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def render_status(s: dict[str, Any]):
    """A rich table of one progress snapshot."""
    from rich.table import Table

    table = Table(title=f"study {s['name']} — {s['state']}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(s["counts"].items())) or "none yet"
    table.add_row("trials", f"{s['done']}/{s['planned']} finished ({counts})")
    table.add_row("cells", f"{s['cells_done']}/{s['cells']} done")
    if s.get("selection"):
        rule = "ORACLE: selected on test, not a fair result" if s["selection"] == "oracle" else "selected on validation"
        phase = {"search": "per-cell searches", "rerun": "re-runs of the selected configurations"}.get(s.get("phase"), "-")
        table.add_row("tuned grid", f"{phase}; {rule}")
    table.add_row("running", str(len(s["running"])))
    best = s.get("best")
    table.add_row(f"best {s['metric']}", f"{best['value']:.2f} (trial {best['trial']})" if best else "-")
    table.add_row("elapsed", clock(s["elapsed_s"]))
    table.add_row("ETA", clock(s.get("eta_s")) if s["state"] == "running" else "-")
    if s.get("dashboard_url") and s["state"] == "running":
        table.add_row("dashboard", s["dashboard_url"])
    return table


def cells_done(df, kind, seeds: int) -> int:
    """Cells with every seed's result (kind: a StudyKind): a search's samples are its cells; a tuned grid's results are its re-runs."""
    import polars as pl

    if not df.height:
        return 0
    if not kind.has_cells:
        return df.height
    if kind.reruns:
        df = df.filter(pl.col(PHASE) == "rerun") if PHASE in df.columns else df.clear()
    return int((df.group_by(CELL_ID).len()["len"] >= seeds).sum()) if df.height else 0


def _driver_alive(progress: dict[str, Any]) -> bool:
    if time.time() - float(progress.get("heartbeat", 0)) > STALE_S:
        return False
    if progress.get("host") == socket.gethostname() and progress.get("pid"):
        try:
            os.kill(int(progress["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, someone else's
            pass
    return True


def study_status(study_dir: Path) -> dict[str, Any]:
    """What `ptlab study status` shows: stored results, and the driver's last snapshot if any."""
    from ptlab.study.layout import SELECTION_FILE
    from ptlab.study.spec import load_study

    spec = load_study(study_dir / STUDY_FILE)
    progress = read_json(study_dir / PROGRESS)
    df = ResultStore(study_dir).results()
    counts = dict(zip(*df[STATUS].value_counts().to_dict(as_series=False).values(), strict=True)) if df.height else {}
    kind = spec.kind
    metric = spec.search.metric if kind.searches else "test_acc"
    best = None
    if df.height and metric in df.columns:
        ok = df.filter((df[STATUS] == STATUS_COMPLETED) & df[metric].is_not_null())
        if ok.height:
            row = ok.sort(metric, descending=(not kind.searches or spec.search.mode == "max")).row(0, named=True)
            best = {"value": row[metric], "trial": row[KEY]}
    state = progress.get("state", "not started")
    if state == "running" and not _driver_alive(progress):
        state = "interrupted"
    phase = ("rerun" if (study_dir / SELECTION_FILE).is_file() else "search") if kind.reruns else ""
    return {
        "state": state,
        "name": spec.name,
        "planned": spec.n_planned(),
        "done": sum(counts.values()),
        "counts": counts,
        "cells_done": cells_done(df, kind, len(spec.seeds)),
        "cells": spec.n_cells(),
        "phase": phase,
        "selection": spec.selection if kind.reruns else None,
        "running": progress.get("running", []) if state == "running" else [],
        "best": best,
        "metric": metric,
        "elapsed_s": progress.get("elapsed_s", 0.0),
        "eta_s": progress.get("eta_s"),
        "dashboard_url": progress.get("dashboard_url"),
    }
