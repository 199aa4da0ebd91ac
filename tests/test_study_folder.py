"""The study folder as a user may treat it: planted files, two drivers at once, damaged derived files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from ptlab.study.layout import LOCK_FILE
from ptlab.study.lock import StudyLocked, read_holder, study_lock
from ptlab.study.trial import TrialFiles


class Planted:
    """Unpickling this runs a shell command, as a planted checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    files = TrialFiles(tmp_path / "trials" / "k")
    files.folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"epoch": 3, "payload": Planted(marker)}, files.checkpoint)
    with pytest.raises(RuntimeError, match=r"checkpoint.pt: refused to load.*delete the file"):
        files.load_checkpoint()
    assert not marker.exists()


def test_a_checkpoint_of_tensors_and_plain_values_loads(tmp_path):
    import numpy as np

    files = TrialFiles(tmp_path / "k")
    files.folder.mkdir()
    rng = np.random.default_rng([1, 2])
    files.save_checkpoint({"w": torch.ones(2), "rng": rng.bit_generator.state, "epoch": 2, "curves": [{"a": 1.0}]})
    state = files.load_checkpoint()
    assert state["epoch"] == 2 and state["rng"] == rng.bit_generator.state and torch.equal(state["w"], torch.ones(2))


def test_a_second_driver_is_refused_with_the_holder_named(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    with study_lock(study, "ptlab study run") as lock:
        assert read_holder(study)["pid"] == os.getpid()
        lock.note(cluster_id="abc")
        with pytest.raises(StudyLocked, match=rf"is being run by pid {os.getpid()} on host {socket.gethostname()}"):
            with study_lock(study):
                pass
    # released: the next driver takes it
    with study_lock(study) as again:
        assert again.previous["cluster_id"] == "abc" and again.previous["released"]
        assert not again.previous_holder_died()


def test_another_process_holding_the_lock_refuses_this_one(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from ptlab.study.lock import study_lock
        with study_lock({str(study)!r}, "ptlab study run"):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked, match=f"pid {holder.pid} on host"):
            with study_lock(study):
                pass
    finally:
        holder.kill()
        holder.wait()
    # killed without releasing: the kernel freed the lock, and the next driver knows its holder died
    with study_lock(study) as lock:
        assert lock.previous["pid"] == holder.pid and lock.previous_holder_died()
        assert json.loads((study / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_copied_lock_file_is_no_lock(tmp_path):
    original, copy = tmp_path / "a", tmp_path / "b"
    original.mkdir()
    with study_lock(original):
        copy.mkdir()
        (copy / LOCK_FILE).write_bytes((original / LOCK_FILE).read_bytes())
        with study_lock(copy) as lock:  # the copy's file names a live holder, but nothing holds it
            assert not lock.previous_holder_died()


def test_a_refused_start_leaves_no_folder(tmp_path):
    with study_lock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


# --- relocation: copy and move an interrupted study, resume each where it lies -------------

def _files(folder):
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _interrupted_run(spec, study_dir, connection):
    """Run the study and interrupt it (SIGINT, as Ctrl-C) once its first trial has ended."""
    import signal
    import threading
    import time

    from ptlab.study.tuner import run_study

    def interrupt():
        while not list(study_dir.glob("trials/*/record.json")):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    return run_study(spec, study_dir, connection)


@pytest.mark.ray
def test_copied_and_moved_studies_resume_where_they_lie(random_tiny_clip, tmp_path):
    import shutil

    from ptlab.study.cluster import connect, disconnect
    from ptlab.study.spec import validate_study
    from ptlab.study.store import ResultStore
    from ptlab.study.tuner import run_study

    spec = validate_study({
        "name": "movable", "method": "coop", "backbone": random_tiny_clip, "dataset": "world:shapes", "shots": 2,
        "noise_type": "symmetric", "train": {"epochs": 2, "views": 1, "batch_size": 8},
        "factors": {"noise_rate": [0.0, 0.5]}, "seeds": [1, 2], "runner": "inline", "max_concurrent": 1,
    })
    original, copy, moved = tmp_path / "D", tmp_path / "D2", tmp_path / "D3"
    connection = connect(num_cpus=2)
    try:
        assert not _interrupted_run(spec, original, connection)
        shutil.copytree(original, copy, symlinks=True)
        original.rename(moved)
        before = _files(moved)
        assert run_study(spec, copy, connection, resume=True)
        assert _files(moved) == before, "resuming the copy changed its original"
        assert not original.exists(), "resuming the copy wrote to the original's old path"
        rows = ResultStore(copy).results()
        assert rows.height == 4 and rows["tune_trial_id"].n_unique() == 4 and not {"failed", "pruned"} & set(rows["status"])
    finally:
        disconnect(connection)
    # as a user would, from a fresh driver and cluster: the copy's trials share the moved study's Tune ids
    connection = connect(num_cpus=2)
    try:
        assert run_study(spec, moved, connection, resume=True)
        assert not original.exists()
        rows = ResultStore(moved).results()
        assert rows.height == 4 and not {"failed", "pruned"} & set(rows["status"])
    finally:
        disconnect(connection)


# --- an edited study is refused on resume, naming what changed ------------------------------

STUDY = {"name": "edited", "method": "coop", "dataset": "world:shapes", "shots": 2, "noise_type": "symmetric",
         "factors": {"noise_rate": [0.0, 0.5], "loss": ["ce", "gce"]}, "seeds": [1, 2], "runner": "inline"}


def _edited(**changes):
    import copy

    from ptlab.study.spec import validate_study

    fields = copy.deepcopy(STUDY)
    for key, value in changes.items():
        node, *path = key.split(".")
        if path:
            fields[node][path[0]] = value
        else:
            fields[node] = value
    return validate_study(fields)


def test_resuming_an_edited_study_is_refused_naming_the_change(tmp_path):
    from ptlab.study.cluster import RayConnection
    from ptlab.study.planned import changes, write_planned
    from ptlab.study.tuner import run_study

    write_planned(_edited(), tmp_path)
    assert changes(_edited(), tmp_path) == []
    # ensembles and resources are not part of the plan: changing them changes no trial
    assert changes(_edited(resources={"cpu": 2}), tmp_path) == []
    added = changes(_edited(**{"factors.loss": ["ce", "gce", "mae"]}), tmp_path)
    assert added == ["factors.loss: ['ce', 'gce'] -> ['ce', 'gce', 'mae']"]
    assert changes(_edited(shots=4), tmp_path) == ["shots: 2 -> 4"]
    connection = RayConnection(dashboard_url=None, started_here=False, cpus=2, gpus=0)
    with pytest.raises(RuntimeError, match=r"changed since the study started.*train.lr: 0.002 -> 0.01.*new folder"):
        run_study(_edited(train={"lr": 0.01}), tmp_path, connection, resume=True)
    assert not (tmp_path / "tune").exists()


# --- what a dead driver's local cluster left is ended, and only that ---------------------------

def test_the_next_driver_ends_what_a_dead_one_left_and_only_that(tmp_path):
    from ptlab.study.cli import _clean_up_after_dead_driver
    from ptlab.study.cluster import CLUSTER_MARK

    def sleeper(mark):
        env = {**os.environ, CLUSTER_MARK: mark}
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)

    left, other = sleeper("dead-driver-cluster"), sleeper("another-cluster")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    session = tmp_path / "ray" / "session_2026-01-01_00-00-00_1"
    (session / "logs").mkdir(parents=True)
    (tmp_path / "ray" / "session_latest").symlink_to(session)
    study = tmp_path / "study"
    study.mkdir()
    (study / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started_at": 0,
                                              "cluster_id": "dead-driver-cluster", "session_dir": str(session)}))
    try:
        with study_lock(study) as lock:
            _clean_up_after_dead_driver(lock)
        assert left.wait(timeout=30) is not None
        assert other.poll() is None, "a process of another cluster was ended"
        assert not session.exists() and not (tmp_path / "ray" / "session_latest").is_symlink()
    finally:
        for proc in (left, other):
            proc.kill()
            proc.wait()


def test_a_trial_killed_for_memory_is_recorded_failed_with_that_cause(tmp_path):
    from ptlab.study.tuner import outcome, trial_plan

    spec = _edited()
    plan = trial_plan(spec, tmp_path)
    trial = spec.trials()[0]
    ray_text = ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
                "Memory on the node was 22.5GB / 23.5GB (0.957), which exceeds the memory usage threshold of 0.95.")
    found = outcome(plan, "k0", {"trial": trial.config.model_dump(mode="json")}, {}, ray_text)
    assert found.status == "failed" and found.error.startswith("out of memory: ray.exceptions.OutOfMemoryError")
    other = outcome(plan, "k1", {"trial": trial.config.model_dump(mode="json")}, {}, "ValueError: bad")
    assert other.error == "ValueError: bad"


def test_a_restored_searcher_writes_to_the_journal_of_the_folder_it_was_restored_from(tmp_path):
    import shutil

    from optuna.storages.journal import JournalFileBackend

    from ptlab.study.layout import OPTUNA_JOURNAL, TUNE_DIR
    from ptlab.study.spec import validate_study
    from ptlab.study.tuner import _searcher

    spec = validate_study({"name": "s", "method": "coop", "dataset": "world:shapes", "train": {"epochs": 4},
                           "search": {"space": {"lr": {"log_uniform": [1e-4, 1e-1]}}, "samples": 2}})
    original, copy = tmp_path / "D", tmp_path / "D2"
    (original / TUNE_DIR).mkdir(parents=True)
    searcher = _searcher(spec, original)
    searcher.set_search_properties(None, None, {})
    searcher.suggest("t1")
    searcher.save(str(original / TUNE_DIR / "searcher-state.pkl"))
    shutil.copytree(original, copy)
    before = (original / OPTUNA_JOURNAL).read_bytes()

    restored = _searcher(spec, copy)
    restored.restore(str(copy / TUNE_DIR / "searcher-state.pkl"))
    backend = restored._ot_study._storage._backend
    assert isinstance(backend, JournalFileBackend) and backend._file_path == str(copy / OPTUNA_JOURNAL)
    restored.suggest("t2")
    assert (original / OPTUNA_JOURNAL).read_bytes() == before
    assert len((copy / OPTUNA_JOURNAL).read_bytes()) > len(before)


def test_cli_refuses_to_resume_a_study_another_driver_holds(tmp_path):
    from typer.testing import CliRunner

    from ptlab.cli import app

    (tmp_path / "study.yaml").write_text(_edited().to_yaml())
    with study_lock(tmp_path, "ptlab study run"):
        result = CliRunner().invoke(app, ["study", "resume", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"is being run by pid {os.getpid()} on host {socket.gethostname()}" in result.output
    assert "`ptlab study run`" in result.output and not (tmp_path / "tune").exists()


def test_a_grid_trial_whose_record_never_reached_the_driver_is_failed_not_pruned(tmp_path):
    # what a trial that ran on a node without the study folder looks like to the driver:
    # Tune saw its final result, its folder here holds nothing
    from ptlab.study.tuner import outcome, trial_plan

    spec = _edited()
    assert spec.search is None
    trial = spec.trials()[0]
    found = outcome(trial_plan(spec, tmp_path), "k0", {"trial": trial.config.model_dump(mode="json")},
                    {"final": 1, "epoch": 2, "test_acc": 0.5}, None)
    assert found.status == "failed"
    assert str(tmp_path / "trials" / "k0" / "record.json") in found.error and "every node" in found.error
