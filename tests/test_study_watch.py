"""`ptlab study watch` follows the status that `study status` and the report's banner read, until no driver runs the study."""

import json
import os
import socket
import time

import report_fixtures as fx
from typer.testing import CliRunner

from ptlab.cli import app
from ptlab.study import status as status_module
from ptlab.study.status import study_status


def progress(folder, state: str, **fields) -> None:
    snapshot = {"state": state, "running": ["t9"], "heartbeat": time.time(), "pid": os.getpid(),
                "host": socket.gethostname(), "elapsed_s": 30.0, "eta_s": 90.0} | fields
    (folder / "progress.json").write_text(json.dumps(snapshot))


def test_watch_refreshes_until_the_driver_finishes(tmp_path, monkeypatch):
    folder = fx.noise_grid(tmp_path / "grid", keep=30)
    progress(folder, "running")
    sleeps = []

    def the_driver_moves_on(seconds):
        # what the driver would have written in the meantime: more trials, then the end
        sleeps.append(seconds)
        if len(sleeps) == 2:
            fx.noise_grid(tmp_path / "grid")
            progress(folder, "finished", running=[])

    seen = []

    def spy(study_dir):
        summary = study_status(study_dir)
        seen.append((summary["state"], summary["done"]))
        return summary

    monkeypatch.setattr(time, "sleep", the_driver_moves_on)
    monkeypatch.setattr(status_module, "study_status", spy)
    result = CliRunner().invoke(app, ["study", "watch", str(folder), "--every", "0.5"])
    assert result.exit_code == 0, result.output
    assert sleeps == [0.5, 0.5]
    assert seen == [("running", 30), ("running", 30), ("finished", 60)]
    # Off a terminal, the table is printed again only when it changed.
    assert result.output.count("study grid — running") == 1 and "30/60 finished" in result.output
    assert "study grid — finished" in result.output and "60/60 finished" in result.output


def test_watch_of_an_interrupted_study_says_how_to_resume(tmp_path):
    folder = fx.noise_grid(tmp_path / "grid", keep=30)
    progress(folder, "running", heartbeat=time.time() - 3600)
    result = CliRunner().invoke(app, ["study", "watch", str(folder)])
    assert result.exit_code == 0, result.output
    assert "interrupted" in result.output and f"ptlab study resume {folder}" in result.output


def test_watch_needs_a_study_folder(tmp_path):
    result = CliRunner().invoke(app, ["study", "watch", str(tmp_path)])
    assert result.exit_code == 2 and "not a study folder" in result.output


def test_flags_show_no_value_type_in_help():
    result = CliRunner().invoke(app, ["study", "run", "--help"], env={"COLUMNS": "120"})
    assert "--dry-run" in result.output and "<bool>" not in result.output and "<int>" in result.output
