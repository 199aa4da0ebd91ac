"""How far a study has got: the live terminal view while it runs and `ptlab study status` after.

The running driver keeps `progress.json` in the study folder up to date
(trials running, best so far, elapsed time, a heartbeat), so `status` can
tell a live study from an interrupted one without talking to Ray; reading
and rendering it is ptlab.study.status, which imports no Ray.
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

from ptlab.files import atomic_write
from ptlab.methods.base import STATUS_COMPLETED
from ptlab.study.layout import DRIVER, PROGRESS
from ptlab.study.schema import STATUS
from ptlab.study.spec import StudyKind
from ptlab.study.status import cells_done, clock, read_json, render_status
from ptlab.study.store import ResultStore
from ptlab.study.trial import FINAL, TrialPlan

HEARTBEAT_S = 2.0


def write_driver(study_dir: Path, dashboard_url: str | None, slots: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "dashboard_url": dashboard_url,
            "slots": slots, "started_at": time.time()}
    atomic_write(study_dir / DRIVER, json.dumps(info).encode())


class Progress(tune.Callback):
    """Tune callback behind the live view and progress.json; pickled with the experiment, so setup() builds its state."""

    def __init__(self, plan: TrialPlan, summary: dict[str, Any]):
        self.plan, self.summary = plan, summary

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan, "summary": self.summary}

    # --- Tune hooks -----------------------------------------------------------

    def setup(self, **info) -> None:
        study_dir = Path(self.plan.study_dir)
        self.driver = read_json(study_dir / DRIVER)
        before = read_json(study_dir / PROGRESS)
        # Earlier drivers' time counts; so does this driver's earlier phase (a tuned grid's searches).
        same_run = before.get("run_started") == self.driver.get("started_at")
        self.elapsed_before = float(before.get("elapsed_before_run" if same_run else "elapsed_s", 0) or 0)
        self.started = float(self.driver.get("started_at") or time.time())
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
        # a tuned grid's searches ending is the start of its re-runs
        between_phases = ended and self.summary.get("phase") == "search"
        self._write("finished" if finished else "running" if between_phases else "interrupted")
        if self.live is not None:
            self.live.update(self._table(), refresh=True)
        self._stop_live()

    # --- state ---------------------------------------------------------------------

    def _stored_counts(self) -> dict[str, int]:
        df = ResultStore(self.plan.study_dir).results()
        return dict(zip(*df[STATUS].value_counts().to_dict(as_series=False).values(), strict=True)) if df.height else {}

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
            "phase": self.summary.get("phase", ""),
            "selection": self.summary.get("selection"),
            "running": sorted(self.running),
            "best": self.best,
            "metric": self.summary["metric"],
            "elapsed_s": round(elapsed, 1),
            "elapsed_before_run": self.elapsed_before,
            "eta_s": None if eta is None else round(eta, 1),
            "heartbeat": time.time(),
            "run_started": self.driver.get("started_at"),
            "pid": self.driver.get("pid"),
            "host": self.driver.get("host"),
            "dashboard_url": self.driver.get("dashboard_url"),
        }

    def _cells_done(self) -> int:
        return cells_done(ResultStore(self.plan.study_dir).results(), StudyKind(self.summary["kind"]), self.summary["seeds"])

    def _write(self, state: str) -> None:
        self.snapshot = self._snapshot(state)
        atomic_write(Path(self.plan.study_dir) / PROGRESS, json.dumps(self.snapshot).encode())
        self.last_write = time.time()
        self._export(self.snapshot)

    def _export(self, s: dict[str, Any]) -> None:
        """The snapshot as Ray metrics, which a Prometheus scrape of the cluster carries."""
        from ray.util.metrics import Gauge

        if getattr(self, "gauges", None) is None:
            self.gauges = (
                Gauge("ptlab_study_trials", "Trials of a ptlab study by state (done, running, and each end status)",
                      tag_keys=("study", "state")),
                Gauge("ptlab_study_best", "Best value so far of a ptlab study's metric", tag_keys=("study", "metric")),
            )
        trials, best = self.gauges
        study = s["name"]
        states = {"done": s["done"], "running": len(s["running"]), "planned": s["planned"], "cells_done": s["cells_done"]}
        for state, n in {**states, **s["counts"]}.items():
            trials.set(n, tags={"study": study, "state": state})
        if s["best"]:
            best.set(s["best"]["value"], tags={"study": study, "metric": s["metric"]})

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
                f"running {len(s['running'])} | best {s['metric']} {best} | elapsed {clock(s['elapsed_s'])} | "
                f"ETA {clock(s['eta_s'])}")

    def _table(self):
        return render_status(getattr(self, "snapshot", None) or self._snapshot("running"))
