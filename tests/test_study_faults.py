"""A small study whose trial processes are killed at random while it runs: each trial is stored exactly once, with its true status.

A killer thread sends SIGKILL to one running trial process (Tune's function
actor, found by the mark every process of ptlab's local cluster carries) every
few seconds, a bounded number of times. Tune retries a killed trial from its
checkpoint until its retries are spent; what the store holds at the end must
match what each trial folder says happened.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from pathlib import Path

import polars as pl
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KILLS = 4
EVERY_S = 4.0


def trial_processes(cluster_id: str) -> list[int]:
    from ptlab.study.cluster import _marked_processes

    found = []
    for pid in _marked_processes(cluster_id):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                found.append(pid)
        except OSError:
            continue
    return found


def test_random_kills_of_trial_processes_leave_each_trial_once_with_its_true_status(random_tiny_clip, tmp_path):
    from ptlab.study.cluster import connect, disconnect
    from ptlab.study.spec import validate_study
    from ptlab.study.store import ResultStore
    from ptlab.study.tuner import run_study

    spec = validate_study({
        "name": "faults", "method": "coop", "backbone": random_tiny_clip, "dataset": "world:shapes", "shots": 2,
        "noise_type": "symmetric", "train": {"epochs": 6, "views": 1, "batch_size": 4},
        "factors": {"noise_rate": [0.0, 0.25, 0.5]}, "seeds": [1, 2], "runner": "inline", "retries": 2,
    })
    study_dir = tmp_path / "run"
    connection = connect(num_cpus=2)
    killed: list[int] = []
    done = threading.Event()
    rng = random.Random(17)

    def killer():
        while len(killed) < KILLS and not done.wait(EVERY_S):
            running = trial_processes(connection.cluster_id)
            if running:
                victim = rng.choice(running)
                try:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert run_study(spec, study_dir, connection)
    finally:
        done.set()
        thread.join(timeout=30)
        disconnect(connection)
    assert killed, "no trial process was killed: the test tested nothing"

    rows = ResultStore(study_dir).results()
    planned = {t.trial_id for t in spec.trials()}
    assert rows.height == len(planned) and set(rows["trial_id"]) == planned
    assert rows["tune_trial_id"].n_unique() == rows.height
    for row in rows.iter_rows(named=True):
        record = study_dir / "trials" / row["tune_trial_id"] / "record.json"
        if record.is_file():  # the recipe returned: its own status, all its epochs
            stored = json.loads(record.read_text())
            assert row["status"] == stored["status"] and row["epochs_done"] == spec.base.train.epochs
        else:  # killed more often than it may be retried
            assert row["status"] == "failed" and row["error"], row
    curves = pl.read_parquet(study_dir / "curves.parquet")
    assert curves.select("tune_trial_id", "epoch").is_unique().all()
    # a trial starts again only after a kill: no run is repeated for nothing
    assert int((rows["attempts"] - 1).sum()) <= len(killed)
