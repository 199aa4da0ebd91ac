"""How far a study has got: the live terminal view while it runs and `ptlab study status` after.

The running driver keeps `progress.json` in the study folder up to date
(trials running, best so far, elapsed time, a heartbeat), so `status` can
tell a live study from an interrupted one without talking to Ray.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from ptlab.methods.base import STATUS_COMPLETED
from ptlab.study.store import ResultStore
from ptlab.study.trial import FINAL, TrialPlan, atomic_write

PROGRESS = "progress.json"
DRIVER = "driver.json"  # who drives the study in this run: written before Tune starts
HEARTBEAT_S = 2.0
STALE_S = 30.0  # a heartbeat this old means no driver is running the study


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def write_driver(study_dir: Path, dashboard_url: str | None, slots: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "dashboard_url": dashboard_url,
            "slots": slots, "started_at": time.time()}
    atomic_write(study_dir / DRIVER, json.dumps(info).encode())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Progress(tune.Callback):
    """Tune callback behind the live view and progress.json; pickled with the experiment, so setup() builds its state."""

    def __init__(self, plan: TrialPlan, summary: dict[str, Any]):
        self.plan, self.summary = plan, summary

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan, "summary": self.summary}

    # --- Tune hooks -----------------------------------------------------------

    def setup(self, **info) -> None:
        study_dir = Path(self.plan.study_dir)
        self.driver = _read_json(study_dir / DRIVER)
        before = _read_json(study_dir / PROGRESS)
        self.elapsed_before = float(before.get("elapsed_s", 0)) if before.get("run_started") != self.driver.get("started_at") else 0.0
        self.started = time.time()
        self.running: dict[str, float] = {}
        self.durations: list[float] = []
        self.counts = self._stored_counts()
        self.best = before.get("best")
        self.last_write = 0.0
        self.live = None
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self._table(), auto_refresh=False, transient=False)
            self.live.start()
            atexit.register(self._stop_live)
        self._write("running")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(FINAL) and result.get("status") == STATUS_COMPLETED:
            self._consider_best(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.time() - self.last_write >= HEARTBEAT_S:
            self._refresh()

    def on_experiment_end(self, trials, **info) -> None:
        ended = all(t.status in ("TERMINATED", "ERROR") for t in trials)
        finished = ended and sum(self.counts.values()) >= self.summary["planned"]
        self._write("finished" if finished else "interrupted")
        if self.live is not None:
            self.live.update(self._table(), refresh=True)
        self._stop_live()

    # --- state ---------------------------------------------------------------------

    def _stored_counts(self) -> dict[str, int]:
        df = ResultStore(self.plan.study_dir).results()
        return dict(zip(*df["status"].value_counts().to_dict(as_series=False).values(), strict=True)) if df.height else {}

    def _consider_best(self, key: str, result: dict[str, Any]) -> None:
        value = result.get(self.summary["metric"])
        if not isinstance(value, int | float) or not math.isfinite(value):
            return
        better = self.best is None or (value > self.best["value"] if self.summary["mode"] == "max" else value < self.best["value"])
        if better:
            self.best = {"value": float(value), "trial": key}

    def _ended(self, trial) -> None:
        started = self.running.pop(trial.trial_id, None)
        if started is not None:
            self.durations.append(time.time() - started)
        self.counts = self._stored_counts()
        line = self._line(trial.trial_id)
        if self.live is None:
            print(line, flush=True)
        self._refresh()

    def _snapshot(self, state: str) -> dict[str, Any]:
        done = sum(self.counts.values())
        elapsed = self.elapsed_before + time.time() - self.started
        remaining = max(self.summary["planned"] - done, 0)
        slots = max(int(self.driver.get("slots") or 1), 1)
        eta = (sum(self.durations) / len(self.durations)) * math.ceil(remaining / slots) if self.durations else None
        if eta is not None and self.running:
            # the running trials are part-way through already
            eta = max(eta - min(time.time() - t for t in self.running.values()), 0.0)
        return {
            "state": state,
            "name": self.summary["name"],
            "planned": self.summary["planned"],
            "done": done,
            "counts": self.counts,
            "cells_done": self._cells_done(),
            "cells": self.summary["cells"],
            "running": sorted(self.running),
            "best": self.best,
            "metric": self.summary["metric"],
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "heartbeat": time.time(),
            "run_started": self.driver.get("started_at"),
            "pid": self.driver.get("pid"),
            "host": self.driver.get("host"),
            "dashboard_url": self.driver.get("dashboard_url"),
        }

    def _cells_done(self) -> int:
        if self.summary["kind"] == "search":
            return sum(self.counts.values())
        df = ResultStore(self.plan.study_dir).results()
        if not df.height:
            return 0
        per_cell = df.group_by("cell_id").len()
        return int((per_cell["len"] >= self.summary["seeds"]).sum())

    def _write(self, state: str) -> None:
        self.snapshot = self._snapshot(state)
        atomic_write(Path(self.plan.study_dir) / PROGRESS, json.dumps(self.snapshot).encode())
        self.last_write = time.time()

    def _refresh(self) -> None:
        self._write("running")
        if self.live is not None:
            self.live.update(self._table(), refresh=True)

    def _stop_live(self) -> None:
        if self.live is not None and self.live.is_started:
            self.live.stop()

    # --- rendering -------------------------------------------------------------------

    def _line(self, key: str) -> str:
        s = self._snapshot("running")
        best = f"{s['best']['value']:.2f}" if s["best"] else "-"
        return (f"[{s['done']}/{s['planned']}] trial {key} ended | cells {s['cells_done']}/{s['cells']} | "
                f"running {len(s['running'])} | best {s['metric']} {best} | elapsed {_clock(s['elapsed_s'])} | "
                f"ETA {_clock(s['eta_s'])}")

    def _table(self):
        return render_status(getattr(self, "snapshot", None) or self._snapshot("running"))


def render_status(s: dict[str, Any]):
    """A rich table of one progress snapshot."""
    from rich.table import Table

    table = Table(title=f"study {s['name']} — {s['state']}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(s["counts"].items())) or "none yet"
    table.add_row("trials", f"{s['done']}/{s['planned']} finished ({counts})")
    table.add_row("cells", f"{s['cells_done']}/{s['cells']} done")
    table.add_row("running", str(len(s["running"])))
    best = s.get("best")
    table.add_row(f"best {s['metric']}", f"{best['value']:.2f} (trial {best['trial']})" if best else "-")
    table.add_row("elapsed", _clock(s["elapsed_s"]))
    table.add_row("ETA", _clock(s.get("eta_s")) if s["state"] == "running" else "-")
    if s.get("dashboard_url") and s["state"] == "running":
        table.add_row("dashboard", s["dashboard_url"])
    return table


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
    from ptlab.study.spec import load_study

    spec = load_study(study_dir / "study.yaml")
    progress = _read_json(study_dir / PROGRESS)
    df = ResultStore(study_dir).results()
    counts = dict(zip(*df["status"].value_counts().to_dict(as_series=False).values(), strict=True)) if df.height else {}
    metric = spec.search.metric if spec.search else "test_acc"
    best = None
    if df.height and metric in df.columns:
        ok = df.filter((df["status"] == STATUS_COMPLETED) & df[metric].is_not_null())
        if ok.height:
            row = ok.sort(metric, descending=(spec.search is None or spec.search.mode == "max")).row(0, named=True)
            best = {"value": row[metric], "trial": row["tune_trial_id"]}
    state = progress.get("state", "not started")
    if state == "running" and not _driver_alive(progress):
        state = "interrupted"
    cells_done = (int((df.group_by("cell_id").len()["len"] >= len(spec.seeds)).sum()) if df.height else 0) \
        if not spec.search else sum(counts.values())
    return {
        "state": state,
        "name": spec.name,
        "planned": spec.n_planned(),
        "done": sum(counts.values()),
        "counts": counts,
        "cells_done": cells_done,
        "cells": spec.n_cells(),
        "running": progress.get("running", []) if state == "running" else [],
        "best": best,
        "metric": metric,
        "elapsed_s": progress.get("elapsed_s", 0.0),
        "eta_s": progress.get("eta_s"),
        "dashboard_url": progress.get("dashboard_url"),
    }
