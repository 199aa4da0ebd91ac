"""Studies end to end on a Ray cluster the test starts with `ray start --head` and joins with --address.

Trials are tiny CoOp runs (2-3 epochs, 2 shots) on a randomly initialised
tiny CLIP: these tests check scheduling, storage and bookkeeping, not
learning, so every trained trial sits at chance level and is flagged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from processes import free_port, kill_session

from ptlab.study.spec import validate_study

pytestmark = pytest.mark.ray

# Ray sends its token to an explicitly named cluster only when told to, as a user
# joining one must (the token itself is ~/.ray/auth_token). Ray reads this once,
# when first imported, so it is set while tests are collected, before any import.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU head node started like a user would, joined through the study layer's `connect`.

    The node is pinned to loopback: on a CI runner whose own address is
    firewalled, Ray would otherwise advertise (and redirect the join to) it.
    """
    import ray

    from ptlab.study.cluster import connect

    port, dashboard = free_port(), free_port()
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                connection = connect(address=f"127.0.0.1:{port}")
                break
            except (ConnectionError, RuntimeError):
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(2)
        assert connection.cpus == 2 and not connection.started_here
        yield connection
    finally:
        ray.shutdown()
        kill_session(head.pid)  # the head runs in its own session: the processes it started, at once
        head.wait(timeout=60)
        log.close()


def study(backbone: str, **fields) -> dict:
    spec = {
        "name": "t",
        "method": "coop",
        "backbone": backbone,
        "dataset": "world:shapes",
        "shots": 2,
        "noise_type": "symmetric",
        "train": {"epochs": 2, "views": 1, "batch_size": 8},
        "runner": "inline",
        "retries": 1,
        **fields,
    }
    for factor in set(spec.get("factors", {})) - {"method"}:  # a field is either fixed or a factor
        spec.pop(factor, None)
    return spec


def run(spec_fields: dict, study_dir: Path, connection) -> bool:
    from ptlab.study.tuner import run_study

    return run_study(validate_study(spec_fields), study_dir, connection)


def cpus_free(expected: float, within_s: float = 60) -> bool:
    import ray

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= expected:
            return True
        time.sleep(1)
    return False


def live_placement_groups() -> list:
    from ray.util import placement_group_table

    return [pg for pg in placement_group_table().values() if pg["state"] not in ("REMOVED",)]


def test_grid_inline_end_to_end_with_a_trial_that_keeps_failing(cluster, random_tiny_clip, tmp_path):
    # a file that is there passes validation; that it holds no checkpoint shows when a trial loads it
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    spec = study(random_tiny_clip, name="grid_inline", seeds=[1, 2],
                 factors={"backbone": [random_tiny_clip, f"ckpt:{damaged}"], "noise_rate": [0.0]})
    assert run(spec, tmp_path, cluster)

    df = pl.read_parquet(tmp_path / "results.parquet")
    assert df.height == 4 and df["tune_trial_id"].n_unique() == 4 and df["trial_id"].n_unique() == 4
    failed = df.filter(pl.col("status") == "failed")
    assert failed.height == 2 and set(failed["backbone"]) == {f"ckpt:{damaged}"}
    assert all(f"{damaged} is corrupt or not a ptlab checkpoint" in e for e in failed["error"])
    assert failed["attempts"].to_list() == [2, 2]  # tried, retried once, then recorded
    trained = df.filter(pl.col("status") != "failed")
    # random weights predict one class: chance level, flagged rather than averaged in
    assert set(trained["status"]) == {"flagged_collapse"} and trained["cell_id"].n_unique() == 1
    assert trained["epochs_done"].to_list() == [2, 2] and trained["test_acc"].is_not_null().all()
    assert (trained["wall_s"] >= trained["recipe_s"]).all()
    for column in ("ptlab_version", "torch_version", "open_clip_version", "ray_version", "git_commit"):
        assert (df[column].str.len_chars() > 0).all(), column
    configs = [json.loads(c) for c in df["config_json"]]
    assert {c["seed"] for c in configs} == {1, 2}

    curves = pl.read_parquet(tmp_path / "curves.parquet")
    assert curves.height == 4 and set(curves["epoch"]) == {1, 2}
    assert set(curves["tune_trial_id"]) == set(trained["tune_trial_id"])
    stored = yaml.safe_load((tmp_path / "study.yaml").read_text())
    assert stored["planned_trials"] == 4 and stored["name"] == "grid_inline"
    assert (tmp_path / "features").is_dir()
    # the study's progress as Ray metrics: what a Prometheus scrape of the node's metrics port carries
    gauges = scraped_gauges("ray_ptlab_study_trials", {"done": 4.0, "failed": 2.0}, study="grid_inline")
    assert gauges["done"] == 4.0 and gauges["planned"] == 4.0 and gauges["failed"] == 2.0
    assert gauges["flagged_collapse"] == 2.0 and gauges["running"] == 0.0


def test_cells_that_compute_the_same_thing_run_one_trial_that_counts_for_each(cluster, random_tiny_clip, tmp_path):
    from ptlab.report.aggregate import cell_summary, load_study
    from ptlab.report.html import build_report
    from ptlab.study.status import study_status

    # at noise rate 0 neither noise type flips a label: one clean trial for both cells
    spec = study(random_tiny_clip, name="grid_repeats", seeds=[1],
                 factors={"noise_type": ["symmetric", "confusion"], "noise_rate": [0.0]})
    assert run(spec, tmp_path, cluster)
    df = pl.read_parquet(tmp_path / "results.parquet")
    assert df.height == 1 and df["noise_type"].item() == "symmetric"
    assert yaml.safe_load((tmp_path / "study.yaml").read_text())["planned_trials"] == 1
    status = study_status(tmp_path)
    assert (status["done"], status["planned"], status["cells_done"], status["cells"]) == (1, 1, 1, 1)
    study_results = load_study(tmp_path)
    assert study_results.trials.height == 1 and not study_results.partial
    cells = cell_summary(study_results.rows, study_results.keys, study_results.metrics)
    assert sorted(cells["noise_type"].to_list()) == ["confusion", "symmetric"]
    assert cells["n_seeds"].to_list() + cells["n_excluded"].to_list() == [0, 0, 1, 1]  # chance level: flagged
    assert "all 1 planned trials" in build_report(tmp_path).read_text()


def scraped_gauges(name: str, expected: dict[str, float], study: str, timeout_s: float = 60) -> dict[str, float]:
    """The gauge `name` of `study` by its state tag, read from the head node's Prometheus endpoint.

    Waits (Ray exports recorded values every few seconds) until the values in `expected` are there.
    """
    import re
    import urllib.request

    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    pattern = re.compile(rf'^{name}{{(?P<tags>[^}}]*)}} (?P<value>\S+)$')
    deadline, found = time.time() + timeout_s, {}
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        found = {}
        for line in text.splitlines():
            match = pattern.match(line)
            if match and f'study="{study}"' in match["tags"]:
                state = re.search(r'state="([^"]*)"', match["tags"])[1]
                found[state] = float(match["value"])
        if all(found.get(k) == v for k, v in expected.items()):
            return found
        time.sleep(1)
    raise AssertionError(f"{name} of study {study} never showed {expected} on port {port}; last seen {found}")


def test_upl_grid_stores_its_seed_ensemble_once(cluster, tmp_path):
    """The ensemble row holds the accuracy of the members' averaged saved logits; a resume replaces it, never adds one.

    The shipped tiny CLIP, not a random one: members at chance level would be flagged and left out of ensembles.
    """
    from ptlab.report.html import build_report
    from ptlab.study.status import study_status
    from ptlab.study.store import ResultStore
    from ptlab.study.tuner import run_study

    spec = study("world:tiny-rn", name="upl_ensemble", method="upl", noise_type="none", shots=4, n_ctx=4,
                 train={"epochs": 2, "views": 1, "batch_size": 8, "augment": False}, seeds=[1, 2],
                 ensemble={"upl": 2})
    assert run(spec, tmp_path, cluster)

    df = pl.read_parquet(tmp_path / "results.parquet")
    trials = df.filter(pl.col("ensemble_size").is_null()).sort("seed")
    assert trials.height == 2 and set(trials["status"]) == {"completed"}
    (row,) = df.filter(pl.col("ensemble_size").is_not_null()).to_dicts()
    assert row["method"] == "upl_ensemble" and row["ensemble_size"] == 2 and row["ensemble_seeds"] == [1, 2]
    assert row["ensemble_members"] == trials["trial_id"].to_list() and row["seed"] is None
    assert row["loss"] == "ce" and row["method_options"] == trials["method_options"][0]

    members = []
    for key in trials["tune_trial_id"]:
        with np.load(tmp_path / "trials" / key / "artifacts" / "test_logits.npz") as saved:
            members.append((saved["logits"], saved["labels"]))
    labels = members[0][1]
    for (logits, _), acc in zip(members, trials["test_acc"], strict=True):
        assert 100 * np.mean(logits.argmax(1) == labels) == pytest.approx(acc)  # the logits the trial was scored on
    mean = np.mean([logits.astype(np.float64) for logits, _ in members], axis=0)
    assert row["test_acc"] == pytest.approx(100 * np.mean(mean.argmax(1) == labels))
    assert row["member_test_acc"] == pytest.approx(trials["test_acc"].mean())

    # spoil the stored ensemble: the resume must compute it afresh and replace it, not add another
    ResultStore(tmp_path).set_ensembles([{**row, "test_acc": -1.0}])
    stored = validate_study(yaml.safe_load((tmp_path / "study.yaml").read_text()))
    assert stored.ensemble == {"upl": [2]}
    assert run_study(stored, tmp_path, cluster, resume=True)
    again = pl.read_parquet(tmp_path / "results.parquet")
    assert again.height == 3 and again.filter(pl.col("ensemble_size").is_not_null())["test_acc"].to_list() == [row["test_acc"]]
    # the ensemble is no trial: progress counts two, and the report shows it as a cell of its own
    assert study_status(tmp_path)["done"] == 2
    assert "<td>upl_ensemble</td>" in build_report(tmp_path).read_text()


def test_grid_on_ray_train_jobs(cluster, random_tiny_clip, tmp_path):
    spec = study(random_tiny_clip, name="grid_train", runner="train", seeds=[1], factors={"noise_rate": [0.0, 0.5]})
    assert run(spec, tmp_path, cluster)
    df = pl.read_parquet(tmp_path / "results.parquet")
    assert df.height == 2 and set(df["status"]) == {"flagged_collapse"}
    assert df["epochs_done"].to_list() == [2, 2]
    # each trial ran as its own Train run inside the trial folder
    for key in df["tune_trial_id"]:
        assert (tmp_path / "trials" / key / "grid_train").is_dir()
    overhead = (df["wall_s"] - df["recipe_s"]).to_list()
    print(f"train runner overhead per trial (s): {overhead}")
    assert cpus_free(cluster.cpus)


def test_search_asha_prunes_into_optuna_and_frees_every_cpu(cluster, random_tiny_clip, tmp_path):
    spec = study(
        random_tiny_clip, name="search", runner="train", max_concurrent=1, seeds=[1],
        train={"epochs": 3, "views": 1, "batch_size": 8},
        search={
            "space": {"lr": {"log_uniform": [1.0e-4, 10.0]}},
            "samples": 3,
            "metric": "train_loss",
            "mode": "min",
            "asha": {"grace_period": 1, "reduction_factor": 2},
        },
    )
    assert run(spec, tmp_path, cluster)

    df = pl.read_parquet(tmp_path / "results.parquet")
    assert df.height == 3 and df["tune_trial_id"].n_unique() == 3
    pruned = df.filter(pl.col("status") == "pruned")
    assert pruned.height >= 1
    assert (pruned["epochs_done"] < 3).all()

    loaded = optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))))
    states = {t.user_attrs["tune_trial_id"]: t.state for t in loaded.trials}
    assert len(loaded.trials) == 3 and len(states) == 3
    for key, status in zip(df["tune_trial_id"], df["status"], strict=True):
        expected = optuna.trial.TrialState.PRUNED if status == "pruned" else optuna.trial.TrialState.COMPLETE
        assert states[key] == expected, (key, status, states[key])
    for trial in loaded.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.intermediate_values and max(trial.intermediate_values) < 3

    # ASHA stopped Train runs mid-flight: their workers and placement groups must be gone
    assert cpus_free(cluster.cpus), "CPUs still held after the study"
    assert not live_placement_groups()
