"""A study on two Ray nodes whose disks differ, on this one machine.

The head node shares the test's file system; the second node runs in its own
mount namespace with private tmpfs over the study folders and over its node
folder (PTLAB_NODE_DIR), so whatever it writes there never reaches the driver,
as on a second machine without a shared file system. The study storage is an
S3-compatible server on 127.0.0.1 (moto). Both nodes get the storage's endpoint
and credentials from their own environment, as nodes of a real cluster do.

Needs root (mount namespaces): skipped, with the reason, where `unshare -m` fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from processes import free_port, kill_session

from ptlab.study.cluster import LOOPBACK_ONLY_ENV

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_AUTH_MODE", "token")
RAY = str(Path(sys.executable).parent / "ray")
PTLAB = str(Path(sys.executable).parent / "ptlab")


def _can_unshare() -> bool:
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server):
    if not _can_unshare():
        pytest.skip("needs a private mount namespace (`unshare -m`, as root) for the second node's own disk")
    root = tmp_path_factory.mktemp("two-nodes")
    studies, node_dir = root / "studies", root / "node"
    studies.mkdir()
    node_dir.mkdir()
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PTLAB_NODE_DIR": str(node_dir)}
    # a local cluster started earlier in this process pinned Ray to one node (ptlab.study.cluster._bind_to_loopback)
    env.pop(LOOPBACK_ONLY_ENV, None)
    head_log = open(root / "head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
         "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--disable-usage-stats"],
        stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    second_log = open(root / "second.log", "w")
    second = None
    try:
        _wait_started(root / "head.log", head)
        script = (f"mount -t tmpfs tmpfs {studies} && mount -t tmpfs tmpfs {node_dir} && exec {RAY} start "
                  f"--address=127.0.0.1:{port} --block --num-cpus=1 --num-gpus=0 --node-ip-address=127.0.0.1 "
                  "--disable-usage-stats")
        second = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                  stdout=second_log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        _wait_started(root / "second.log", second)
        yield {"address": f"127.0.0.1:{port}", "studies": studies, "node_dir": node_dir, "second": second,
               "env": env}
    finally:
        for process in (second, head):
            if process is not None:
                kill_session(process.pid)
                process.wait(timeout=60)
        head_log.close()
        second_log.close()


def _wait_started(log: Path, process: subprocess.Popen) -> None:
    """Until `ray start` says its node runs (it prints that once the node has joined)."""
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"a Ray node did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _study(folder: Path, backbone: str, epochs: int) -> Path:
    spec = {
        "name": "two_nodes", "method": "coop", "backbone": backbone, "dataset": "world:shapes", "shots": 4,
        "noise_type": "symmetric", "train": {"epochs": epochs, "views": 1, "batch_size": 8},
        "factors": {"noise_rate": [0.0, 0.25]}, "seeds": [1, 2], "runner": "inline", "retries": 1,
        "resources": {"cpu": 1},
    }
    path = folder / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _on_second_node(two_nodes: dict, uri: str) -> Path:
    """The trial folders a study with storage `uri` keeps on the second node's private disk, seen from outside it."""
    from ptlab.study.storage import StudyStorage, node_dir

    # where TrialFiles.on_node puts them, below PTLAB_NODE_DIR
    relative = StudyStorage(uri).node_folder("trials").relative_to(node_dir())
    return Path(f"/proc/{two_nodes['second'].pid}/root") / str(two_nodes["node_dir"]).lstrip("/") / relative


def _ptlab(args: list[str], env: dict, **options) -> subprocess.Popen:
    return subprocess.Popen([PTLAB, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **options)


def test_a_study_whose_trials_a_node_could_not_hand_back_is_refused_before_it_runs(two_nodes, random_tiny_clip,
                                                                                   tmp_path):
    out = two_nodes["studies"] / "no-storage"
    run = _ptlab(["study", "run", str(_study(tmp_path, random_tiny_clip, 2)), "--address", two_nodes["address"],
                  "--out", str(out)], two_nodes["env"])
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 2, output
    assert "this driver does not find it there" in output and "--storage s3://" in output, output
    assert re.search(r"node \S+ \(\S+, id [0-9a-f]{12}\) wrote \S+/no-storage/\.probe/", output), output
    assert not (out / "results.parquet").exists() and not (out / "tune").exists()


def test_a_search_of_train_jobs_streams_its_epochs_from_the_storage_for_asha(two_nodes, random_tiny_clip, tmp_path):
    """Ray Train runner: a trial's Tune function and its Train worker may be on different nodes; ASHA reads
    the epochs the worker wrote to the storage, and what it stops is pruned in results and in Optuna."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ptlab.study.storage import StudyStorage

    path = _study(tmp_path, random_tiny_clip, 4)
    spec = yaml.safe_load(path.read_text())
    spec.update(name="two_nodes_search", runner="train", factors={}, seeds=[1], noise_rate=0.25,
                search={"space": {"lr": {"log_uniform": [1.0e-4, 10.0]}}, "samples": 4, "metric": "train_loss",
                        "mode": "min", "asha": {"grace_period": 1, "reduction_factor": 2}})
    path.write_text(yaml.safe_dump(spec))
    uri = f"s3://ptlab/studies/search-{time.time_ns()}"
    out = two_nodes["studies"] / "search"
    run = _ptlab(["study", "run", str(path), "--address", two_nodes["address"], "--out", str(out), "--storage", uri],
                 two_nodes["env"])
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output

    rows = pl.read_parquet(out / "results.parquet")
    assert rows.height == 4 and rows["tune_trial_id"].n_unique() == 4
    assert "failed" not in set(rows["status"]), rows.select("status", "error")
    assert (rows.filter(pl.col("status") == "pruned")["epochs_done"] < 4).all()
    curves = pl.read_parquet(out / "curves.parquet")
    assert set(curves["tune_trial_id"]) == set(rows["tune_trial_id"])
    # the second node trained some of them, on its own disk
    assert {p.name for p in _on_second_node(two_nodes, uri).iterdir()} & set(rows["tune_trial_id"])

    storage = StudyStorage(uri)
    journal = tmp_path / "journal.log"
    journal.write_bytes(storage.read_bytes("journal.log"))
    trials = optuna.load_study(study_name="two_nodes_search", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    states = {t.user_attrs["tune_trial_id"]: t.state for t in trials}
    for key, status in zip(rows["tune_trial_id"], rows["status"], strict=True):
        assert (states[key] == optuna.trial.TrialState.PRUNED) == (status == "pruned"), (key, status)
    # ASHA judged every trial at its rungs (epochs 1 and 2) on values relayed from the storage
    reached = dict(zip(rows["tune_trial_id"], rows["epochs_done"], strict=True))
    for trial in trials:
        rungs = {epoch for epoch in (1, 2) if epoch <= reached[trial.user_attrs["tune_trial_id"]]}
        assert rungs <= set(trial.intermediate_values), (trial.number, trial.intermediate_values)


def test_with_object_storage_every_trial_lands_even_when_a_node_is_lost(two_nodes, random_tiny_clip, tmp_path):
    from ptlab.study.storage import StudyStorage

    uri = f"s3://ptlab/studies/two-nodes-{time.time_ns()}"
    out = two_nodes["studies"] / "with-storage"
    run = _ptlab(["study", "run", str(_study(tmp_path, random_tiny_clip, 40)), "--address", two_nodes["address"],
                  "--out", str(out), "--storage", uri], two_nodes["env"])
    second = two_nodes["second"]
    its_trials = _on_second_node(two_nodes, uri)
    deadline, lost = time.monotonic() + 300, []
    while time.monotonic() < deadline and run.poll() is None:
        running = [p.parent for p in its_trials.glob("*/checkpoint.pt") if not (p.parent / "record.json").exists()]
        if running:
            lost = [p.name for p in its_trials.iterdir()]
            kill_session(second.pid)  # the machine goes: raylet, agents, workers at once
            break
        time.sleep(0.2)
    output, _ = run.communicate(timeout=600)
    assert lost, f"no trial reached a checkpoint on the second node before the study ended:\n{output}"
    assert run.returncode == 0, output

    rows = pl.read_parquet(out / "results.parquet")
    assert rows.height == 4 and rows["tune_trial_id"].n_unique() == 4, rows
    # ran to the end (random weights sit at chance: flagged, not failed or pruned)
    assert not set(rows["status"]) & {"failed", "pruned"}, rows.select("status", "error")
    assert set(lost) <= set(rows["tune_trial_id"])
    # the trial the lost node was running is retried elsewhere from its last checkpoint
    retried = rows.filter(pl.col("tune_trial_id").is_in(lost) & (pl.col("attempts") >= 2))
    assert retried.height >= 1, rows.select("tune_trial_id", "attempts")
    assert (retried["epochs_done"] == 40).all()

    storage = StudyStorage(uri)
    stored = pl.read_parquet(storage.read_bytes("results.parquet"))
    assert sorted(stored["tune_trial_id"]) == sorted(rows["tune_trial_id"])
    for key in rows["tune_trial_id"]:
        assert storage.read_bytes(f"trials/{key}/record.json") is not None

    # the report from the storage alone, in another folder
    report = subprocess.run([PTLAB, "report", uri, "--into", str(tmp_path / "from-storage")], env=two_nodes["env"],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "from-storage" / "report" / "index.html").is_file()
    assert storage.read_bytes("report/index.html") is not None


def test_a_study_continues_from_its_storage_after_its_drivers_machine_is_gone(two_nodes, random_tiny_clip, tmp_path):
    import shutil

    from ptlab.study.storage import StudyStorage

    uri = f"s3://ptlab/studies/moved-{time.time_ns()}"
    storage = StudyStorage(uri)
    first = tmp_path / "first-machine"
    run = _ptlab(["study", "run", str(_study(tmp_path, random_tiny_clip, 10)), "--address", two_nodes["address"],
                  "--out", str(first), "--storage", uri], two_nodes["env"], start_new_session=True)
    deadline, done = time.monotonic() + 300, []
    while time.monotonic() < deadline and run.poll() is None:
        # a trial has ended and the driver has published the study, Tune's state included
        done = [name.split("/")[0] for name in storage.files_under("trials") if name.endswith("/record.json")]
        tune_state = [name for name in storage.files_under("tune") if name.startswith("experiment_state-")]
        if done and storage.read_bytes("results.parquet") and tune_state:
            os.killpg(run.pid, signal.SIGKILL)
            break
        time.sleep(0.3)
    run.communicate(timeout=60)
    assert done, "no trial ended before the study did"
    finished_before = set(pl.read_parquet(storage.read_bytes("results.parquet"))["tune_trial_id"])
    shutil.rmtree(first)  # the machine is gone; only the storage is left

    second = tmp_path / "second-machine"
    resumed = _ptlab(["study", "resume", uri, "--address", two_nodes["address"], "--out", str(second)],
                     two_nodes["env"])
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    rows = pl.read_parquet(second / "results.parquet")
    assert rows.height == 4 and rows["tune_trial_id"].n_unique() == 4, rows
    assert not set(rows["status"]) & {"failed", "pruned"}, rows.select("status", "error")
    # what had finished is kept, not trained again
    kept = rows.filter(pl.col("tune_trial_id").is_in(list(finished_before)))
    assert kept.height == len(finished_before) and (kept["attempts"] == 1).all()
    assert sorted(pl.read_parquet(storage.read_bytes("results.parquet"))["tune_trial_id"]) == sorted(rows["tune_trial_id"])
