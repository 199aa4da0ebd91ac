"""Tuned grids: per-cell Optuna searches with ASHA, selection on validation, re-runs of the selection for every seed.

The first tests need no Ray: the study kind, the selection rule on stored
rows, `--set` and `--version`. The rest run tiny tuned grids (2 cells x 4
samples x 2 seeds of a 3-epoch CoOp on the shipped tiny CLIP) on a Ray
cluster, with each runner, and kill the driver in each phase.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import polars as pl
import pytest
import test_study_ray
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from ptlab import __version__
from ptlab.cli import app
from ptlab.config import TrialConfig
from ptlab.study.spec import StudyError, load_study, study_warnings, validate_study

cluster = test_study_ray.cluster  # the 2-CPU head node the study tests join

TUNED = {
    "name": "tiny_tuned", "method": "coop", "backbone": "world:tiny-rn", "dataset": "world:shapes", "shots": 2,
    "n_ctx": 4, "noise_type": "symmetric", "train": {"epochs": 3, "views": 1, "batch_size": 8, "augment": False},
    "factors": {"noise_rate": [0.0, 0.5]}, "seeds": [1, 2], "runner": "inline",
    "search": {"space": {"lr": {"log_uniform": [1.0e-4, 1.0]}}, "samples": 4, "metric": "val_acc",
               "asha": {"grace_period": 1, "reduction_factor": 2}},
}


def tuned(**fields) -> dict:
    return json.loads(json.dumps({**TUNED, **fields}))


# --- the study kind ------------------------------------------------------------------


def test_factors_and_search_make_a_tuned_grid_with_searches_then_reruns():
    spec = validate_study(tuned())
    assert spec.kind.name == "tuned_grid" and spec.kind.searches and spec.kind.reruns and spec.kind.has_cells
    assert spec.n_cells() == 2 and spec.n_planned() == 2 * 4 + 2 * 2
    assert spec.selection == "val" and spec.selection_metric == "val_acc"
    search = validate_study({k: v for k, v in tuned(seeds=[1]).items() if k != "factors"})
    grid = validate_study({k: v for k, v in tuned().items() if k != "search"})
    assert (search.kind.name, search.kind.has_cells, search.kind.reruns) == ("search", False, False)
    assert (grid.kind.name, grid.kind.searches) == ("grid", False)
    stored = yaml.safe_load(spec.to_yaml())
    assert stored["selection"] == "val" and validate_study(stored).content_hash() == spec.content_hash()
    # the selection rule changes which trials run: part of the hash
    assert validate_study(tuned(selection="oracle")).content_hash() != spec.content_hash()


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"selection": "best"}, "selection", ["'best'", "'val' or 'oracle'"]),
    ({"search": {**TUNED["search"], "metric": "test_acc"}}, "search.metric", ["test metric", "selection: oracle"]),
    ({"search": {**TUNED["search"], "metric": "train_loss", "mode": "min"}, "selection": "oracle"}, "selection",
     ["'test_train_loss'", "selection: val"]),
])
def test_tuned_grid_problems_name_the_field(fields, field, words):
    with pytest.raises(StudyError) as err:
        validate_study(tuned(**fields))
    line = next(line for line in str(err.value).splitlines() if f"field {field}:" in line)
    assert all(w in line for w in words), line


def test_selection_belongs_to_tuned_grids():
    grid = {k: v for k, v in tuned(selection="val").items() if k != "search"}
    with pytest.raises(StudyError, match="field selection: a grid study selects nothing"):
        validate_study(grid)


def test_too_small_a_validation_set_is_warned_about():
    small = study_warnings(validate_study(tuned()))  # 2 shots: 2 images a class, 20 in all
    assert len(small) == 1 and "20 validation images" in small[0] and "data.val_shots" in small[0]
    assert study_warnings(validate_study(tuned(data={"val_shots": 40}))) == []  # 400 images


# --- selection on stored rows --------------------------------------------------------


def store_search_rows(study_dir: Path, spec, rows: list[tuple[float, str, float | None, float | None]]) -> None:
    """Search rows of the first cell: (lr, status, val_acc, test_acc) each."""
    from ptlab.study.store import ResultStore, TrialOutcome
    from ptlab.study.tuner import SEARCH_PHASE, trial_plan

    plan = trial_plan(spec, study_dir, SEARCH_PHASE)
    for i, (lr, status, val, test) in enumerate(rows):
        for cell in spec.cells():
            cfg = spec.base.with_updates({**cell, "train.lr": lr})
            metrics = {k: v for k, v in (("val_acc", val), ("test_acc", test)) if v is not None}
            ResultStore(study_dir).add(TrialOutcome(
                key=f"{cell_label(cell)}_{i:05d}", trial_id=cfg.trial_id, cell_id=plan.cell_id(cfg), status=status,
                config=cfg.model_dump(mode="json"), metrics={**metrics, "epochs_done": 3}, curve=[], phase=SEARCH_PHASE))


def cell_label(cell):
    from ptlab.study.space import cell_label

    return cell_label(cell)


def test_selection_reads_validation_only_and_passes_over_pruned_and_failed_trials(tmp_path):
    """Test accuracy would pick lr 0.1; validation picks 0.01; a pruned trial's higher val_acc never counts."""
    from ptlab.study.tuner import select_configs

    spec = validate_study(tuned())
    store_search_rows(tmp_path, spec, [
        (0.1, "completed", 70.0, 90.0),
        (0.01, "completed", 80.0, 60.0),
        (0.5, "pruned", 95.0, None),
        (0.05, "failed", None, None),
    ])
    selected = select_configs(spec, tmp_path)
    assert selected["selection"] == "val" and selected["metric"] == "val_acc"
    for cell in selected["cells"].values():
        assert cell["params"] == {"train.lr": 0.01} and cell["value"] == 80.0
        assert (cell["samples"], cell["pruned"], cell["failed"]) == (4, 1, 1)
    oracle = select_configs(validate_study(tuned(selection="oracle")), tmp_path)
    assert oracle["metric"] == "test_acc" and {c["params"]["train.lr"] for c in oracle["cells"].values()} == {0.1}


def test_a_cell_without_a_finished_search_trial_stops_the_study_with_a_reason(tmp_path):
    from ptlab.study.tuner import select_configs

    spec = validate_study(tuned())
    store_search_rows(tmp_path, spec, [(0.1, "pruned", 70.0, None), (0.2, "failed", None, None)])
    with pytest.raises(RuntimeError, match="no configuration to select in 2 cells: noise_rate=0.0 \\(2 search trials"):
        select_configs(spec, tmp_path)


def test_a_cell_that_computes_what_another_does_is_searched_and_rerun_once_and_selected_under_both_labels(tmp_path):
    from ptlab.study.tuner import rerun_configs, select_configs

    noise_grid = {k: v for k, v in tuned().items() if k != "noise_type"}
    spec = validate_study({**noise_grid, "factors": {"noise_type": ["symmetric", "confusion"], "noise_rate": [0.0, 0.5]}})
    # at noise_rate 0 no label is flipped: confusion's clean cell is symmetric's
    assert [cell_label(c) for c in spec.cells()] == [
        "noise_type=symmetric,noise_rate=0.0", "noise_type=symmetric,noise_rate=0.5", "noise_type=confusion,noise_rate=0.5"]
    assert spec.n_cells() == 3 and spec.n_planned() == 3 * (4 + 2)
    store_search_rows(tmp_path, spec, [(0.1, "completed", 70.0, 90.0), (0.01, "completed", 80.0, 60.0)])
    selected = select_configs(spec, tmp_path)["cells"]
    assert len(selected) == 4
    clean, repeat = selected["noise_type=symmetric,noise_rate=0.0"], selected["noise_type=confusion,noise_rate=0.0"]
    assert repeat == {**clean, "cell": {"noise_type": "confusion", "noise_rate": 0.0},
                      "same_as": "noise_type=symmetric,noise_rate=0.0"}
    reruns = rerun_configs(spec, {"cells": selected})
    assert len(reruns) == 3 * 2 == len({c.trial_id for c in reruns})


def test_cells_are_one_only_if_they_are_at_every_probe_of_the_search_space():
    # gce_q is unread by the base loss ce, but not by the gce the search may sample: two cells
    spec = validate_study(tuned(factors={"gce_q": [0.5, 0.7]}, noise_type="none",
                                search={**TUNED["search"], "space": {"lr": {"log_uniform": [1.0e-4, 1.0]},
                                                                     "loss": {"choice": ["ce", "gce"]}}}))
    assert spec.n_cells() == 2 and [len(g) for g in spec.cell_groups()] == [1, 1]


# --- the command line ------------------------------------------------------------------


@pytest.fixture
def study_file(tmp_path) -> Path:
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(TUNED, sort_keys=False))
    return path


def test_set_overrides_change_the_study_as_if_written_there(study_file):
    spec = load_study(study_file, ["train.lr=0.01", "factors.noise_rate=[0, 0.25, 0.5]", "search.samples=6",
                                   "search.space.train.lr={log_uniform: [0.001, 0.1]}", "seeds=[1, 2, 3]"])
    assert spec.base.train.lr == 0.01 and spec.factors["noise_rate"] == [0, 0.25, 0.5]
    assert spec.search.samples == 6 and spec.search.space["train.lr"].bounds == (0.001, 0.1)
    assert spec.n_planned() == 3 * 6 + 3 * 3
    # the study folder keeps the study as it ran: overrides included, and it validates to the same trials
    stored = yaml.safe_load(spec.to_yaml())
    assert stored["train"]["lr"] == 0.01 and stored["search"]["space"] == {"train.lr": {"log_uniform": [0.001, 0.1]}}
    assert validate_study(stored).content_hash() == spec.content_hash()


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=fast", "(--set train.lr=fast): field train.lr: 'fast': Input should be a valid number"),
    ("train.lrr=0.1", "(--set train.lrr=0.1): field train.lrr: unknown field; did you mean 'lr'?"),
    ("factors.noise_rate=[0, 1.5]", "(--set factors.noise_rate=[0, 1.5]): field factors.noise_rate[1]: 1.5:"),
    ("colour=red", "(--set colour=red): field colour: unknown field"),
    ("search.samples=0", "(--set search.samples=0): field search.samples: 0: Input should be greater than or equal to 1"),
])
def test_set_errors_name_the_file_the_override_and_the_field(study_file, override, message):
    with pytest.raises(StudyError) as err:
        load_study(study_file, [override])
    assert f"{study_file} {message}" in str(err.value), str(err.value)


@pytest.mark.parametrize(("override", "words"), [
    ("train.lr", "write FIELD=VALUE"),
    ("train.lr=[0, 1", "not valid YAML"),
    ("name.first=x", "field name is not a mapping"),
])
def test_malformed_set_says_how_to_write_it(study_file, override, words):
    with pytest.raises(StudyError, match="invalid --set overrides") as err:
        load_study(study_file, [override])
    assert f"--set {override}: " in str(err.value) and words in str(err.value)


def test_cli_set_on_validate_and_dry_run(study_file, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["study", "validate", str(study_file), "--set", "search.samples=6",
                             "--set", "factors.noise_rate=[0, 0.25, 0.5]"])
    assert ok.exit_code == 0, ok.output
    assert "tuned grid" in ok.output and "3 cells x 2 seeds" in ok.output and f"planned trials: {3 * 6 + 3 * 2}" in ok.output
    assert "selection by val_acc on validation" in ok.output
    bad = runner.invoke(app, ["study", "run", str(study_file), "--dry-run", "--set", "train.lr=-1"])
    assert bad.exit_code == 2 and "(--set train.lr=-1): field train.lr: -1: Input should be greater than 0" in bad.output
    oracle = runner.invoke(app, ["study", "validate", str(study_file), "--set", "selection=oracle"])
    assert oracle.exit_code == 0 and "ORACLE selection by test_acc" in oracle.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ptlab {__version__}"


@pytest.mark.parametrize(("epochs", "grace", "factor"), [(3, 1, 2), (50, 5, 3), (10, 1, 3), (28, 3, 3), (9, 2, 2)])
def test_search_trials_send_the_epochs_ashas_rungs_decide_at_and_no_others(epochs, grace, factor):
    from ray.tune.schedulers import ASHAScheduler

    from ptlab.study.tuner import _asha, asha_rungs, trial_plan

    spec = validate_study(tuned(train={**TUNED["train"], "epochs": epochs},
                                search={**TUNED["search"], "asha": {"grace_period": grace, "reduction_factor": factor}}))
    scheduler = _asha(spec)
    assert isinstance(scheduler, ASHAScheduler)
    assert set(asha_rungs(spec)) == {milestone for milestone, _ in scheduler._brackets[0]._rungs}
    search, reruns = trial_plan(spec, Path("s"), "search"), trial_plan(spec, Path("s"), "rerun")
    assert [e for e in range(1, epochs + 1) if search.sends(e)] == sorted(asha_rungs(spec))
    assert not any(reruns.sends(e) for e in range(1, epochs + 1))
    no_asha = validate_study(tuned(search={**TUNED["search"], "asha": None}))
    assert all(trial_plan(no_asha, Path("s"), "search").sends(e) for e in range(1, 4))


# --- on Ray ------------------------------------------------------------------------------


def optuna_studies(study_dir: Path) -> dict[str, optuna.Study]:
    storage = JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def check_tuned_grid(spec, study_dir: Path) -> pl.DataFrame:
    """What every finished tuned grid must hold; returns its results."""
    from ptlab.study.space import cell_label

    df = pl.read_parquet(study_dir / "results.parquet")
    search, reruns = df.filter(pl.col("phase") == "search"), df.filter(pl.col("phase") == "rerun")
    assert df.height == spec.n_planned() and df["tune_trial_id"].n_unique() == df.height
    selection = json.loads((study_dir / "selection.json").read_text())
    assert selection["selection"] == "val" and set(selection["cells"]) == {cell_label(c) for c in spec.cells()}
    studies = optuna_studies(study_dir)
    assert set(studies) == {f"{spec.name}/{label}" for label in selection["cells"]}
    for label, chosen in selection["cells"].items():
        cell = chosen["cell"]
        in_cell = search.filter(pl.col("noise_rate") == cell["noise_rate"])
        assert in_cell.height == spec.search.samples and in_cell["cell_id"].n_unique() == 1
        ended = in_cell.filter(~pl.col("status").is_in(["pruned", "failed"]))
        # the selected configuration is the best of its cell on validation
        assert chosen["value"] == ended["val_acc"].max()
        best = ended.filter(pl.col("val_acc") == ended["val_acc"].max())
        assert chosen["params"]["train.lr"] in best["train.lr"].to_list()
        # re-run for every seed, to the end, never pruned, in the cell of its search
        runs = reruns.filter(pl.col("noise_rate") == cell["noise_rate"])
        assert sorted(runs["seed"]) == spec.seeds and set(runs["train.lr"]) == {chosen["params"]["train.lr"]}
        assert "pruned" not in set(runs["status"]) and (runs["epochs_done"] == spec.base.train.epochs).all()
        assert runs["cell_id"].to_list() == [in_cell["cell_id"][0]] * len(spec.seeds)
        # the Optuna study holds the cell's search, its stopped trials PRUNED at the epoch results say
        trials = {t.user_attrs.get("tune_trial_id"): t for t in studies[f"{spec.name}/{label}"].trials}
        for row in in_cell.iter_rows(named=True):
            trial = trials[row["tune_trial_id"]]
            if row["status"] == "pruned":
                assert trial.state == optuna.trial.TrialState.PRUNED
                assert trial.last_step == row["epochs_done"] < spec.base.train.epochs
                assert trial.intermediate_values[trial.last_step] == row["val_acc"]
            else:
                assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == row["val_acc"]
    assert (search["status"] == "pruned").sum() >= 1
    return df


def dashboard_of(connection) -> str:
    """The joined cluster's dashboard, as its head node published it."""
    from ray.experimental.internal_kv import _internal_kv_get

    url = connection.dashboard_url or _internal_kv_get(b"webui:url", namespace=b"dashboard").decode()
    return url if url.startswith("http") else f"http://{url}"


def train_run_names(dashboard_url: str) -> set[str]:
    """Names of the Train runs the dashboard's REST API lists (Ray Train v2), read with the cluster's token."""
    import urllib.request

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{dashboard_url}/api/train/v2/runs/v1", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return {run["name"] for run in json.loads(response.read())["train_runs"]}


@pytest.mark.ray
@pytest.mark.parametrize("runner", ["train"])  # inline: end to end through the CLI in the resume test below
def test_tiny_tuned_grid_end_to_end(cluster, runner, tmp_path):
    import threading

    from ptlab.study.status import study_status
    from ptlab.study.tuner import RERUN_PHASE, SEARCH_PHASE, run_study, trial_plan

    spec = validate_study(tuned(name=f"tuned_{runner}", runner=runner))
    dashboard = dashboard_of(cluster)
    seen: set[str] = set()
    running = threading.Event()

    def watch():  # the dashboard's Train view while the study runs
        while not running.wait(2):
            try:
                seen.update(train_run_names(dashboard))
            except OSError:  # not up yet, or answering slowly
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    if runner == "train":
        watcher.start()
    try:
        assert run_study(spec, tmp_path, cluster)
    finally:
        running.set()
    check_tuned_grid(spec, tmp_path)
    status = study_status(tmp_path)
    assert status["done"] == spec.n_planned() and status["cells_done"] == 2 and status["phase"] == "rerun"
    if runner == "train":
        watcher.join(timeout=60)
        df = pl.read_parquet(tmp_path / "results.parquet")
        names = set()
        for row in df.iter_rows(named=True):
            cfg = TrialConfig.model_validate(json.loads(row["config_json"]))
            name = trial_plan(spec, tmp_path, {"search": SEARCH_PHASE, "rerun": RERUN_PHASE}[row["phase"]]).run_name(
                cfg, row["tune_trial_id"])
            names.add(name)
            # each trial ran as its own Train run, in a folder of the trial named like the run
            assert (tmp_path / "trials" / row["tune_trial_id"] / name).is_dir()
        assert "tuned_train/noise_rate=0.5/seed=2" in names and any("/sample=" in n for n in names)
        # listed by name in the dashboard's Train view, some of them while the study ran
        assert seen & names
        assert names <= train_run_names(dashboard)


@pytest.mark.ray
def test_a_tuned_cell_that_repeats_another_is_searched_and_rerun_once_end_to_end(cluster, tmp_path):
    from ptlab.report.aggregate import load_study as load_results
    from ptlab.report.tuned import tuned_cells
    from ptlab.study.status import study_status
    from ptlab.study.tuner import run_study

    fields = {k: v for k, v in tuned(name="tuned_repeats", seeds=[1]).items() if k != "noise_type"}
    spec = validate_study({**fields, "factors": {"noise_type": ["symmetric", "confusion"], "noise_rate": [0.0]},
                           "search": {**TUNED["search"], "samples": 2}})
    assert spec.n_cells() == 1 and spec.n_planned() == 2 + 1
    assert run_study(spec, tmp_path, cluster)
    df = pl.read_parquet(tmp_path / "results.parquet")
    assert df.height == 3 and df.filter(pl.col("phase") == "rerun").height == 1
    clean, repeat = "noise_type=symmetric,noise_rate=0.0", "noise_type=confusion,noise_rate=0.0"
    selection = json.loads((tmp_path / "selection.json").read_text())["cells"]
    assert set(selection) == {clean, repeat} and selection[repeat]["same_as"] == clean
    assert selection[repeat]["params"] == selection[clean]["params"]
    assert set(optuna_studies(tmp_path)) == {f"tuned_repeats/{clean}"}  # searched once
    status = study_status(tmp_path)
    assert (status["done"], status["planned"], status["cells_done"], status["cells"]) == (3, 3, 1, 1)
    study = load_results(tmp_path)
    table = tuned_cells(study, json.loads((tmp_path / "selection.json").read_text()))
    assert table.height == 2 and table["tuned test_acc"].n_unique() == 1 and table["tuned seeds"].to_list() == [1, 1]


@pytest.mark.ray
def test_resume_after_kill_9_in_each_phase_repeats_and_loses_nothing(tmp_path):
    """kill -9 of the whole driver session during the searches, resume; again during the re-runs, resume.

    Also the inline runner's tuned grid end to end: the finished study passes every check of the one above.
    """
    from processes import kill_session
    from test_study_resume import Driver, wait_for

    spec_fields = tuned(name="tuned_resume", shots=4, seeds=[1, 2, 3],
                        train={"epochs": 20, "views": 1, "batch_size": 2, "augment": False},
                        search={**TUNED["search"], "asha": {"grace_period": 2, "reduction_factor": 2}})
    spec = validate_study(spec_fields)
    study_file, study_dir = tmp_path / "tuned.yaml", tmp_path / "run"
    study_file.write_text(yaml.safe_dump(spec_fields))
    trials, selection = study_dir / "trials", study_dir / "selection.json"

    def ended() -> dict[str, int]:
        return {t.name: (t / "record.json").stat().st_mtime_ns for t in trials.glob("*") if (t / "record.json").is_file()}

    def part_way(keys) -> list[str]:
        return [k for k in keys if (trials / k / "checkpoint.pt").is_file() and not (trials / k / "record.json").is_file()]

    def rerun_keys() -> set[str]:
        folder = study_dir / "tune_reruns"
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()

    def kill(driver: Driver) -> dict[str, int]:
        kill_session(driver.proc.pid)
        driver.wait(timeout=30)
        return ended()

    driver = Driver("run", str(study_file), "--out", str(study_dir), "--cpus", "2")
    wait_for(lambda: not selection.exists() and trials.is_dir() and ended() and part_way(p.name for p in trials.iterdir()),
             600, "a search trial ended and another part-way", driver)
    ended_in_search = kill(driver)
    assert not selection.exists()

    driver = Driver("resume", str(study_dir), "--cpus", "2")
    wait_for(lambda: selection.exists() and set(ended()) & rerun_keys() and part_way(rerun_keys()),
             600, "a re-run ended and another part-way", driver)
    chosen = selection.read_bytes()
    ended_in_reruns = kill(driver)

    driver = Driver("resume", str(study_dir), "--cpus", "2")
    assert driver.wait(timeout=900) == 0, driver.output()
    assert selection.read_bytes() == chosen  # selected once, whatever happened after
    df = check_tuned_grid(spec, study_dir)
    reruns_ended = set(ended_in_reruns) & set(df.filter(pl.col("phase") == "rerun")["tune_trial_id"])
    assert reruns_ended
    for key, mtime in ended_in_reruns.items():
        # ended before a kill: kept as it was, never run again
        assert (trials / key / "record.json").stat().st_mtime_ns == mtime
    for key in {*ended_in_search, *reruns_ended}:
        # started once, by the driver that finished it (the others were resumed once)
        assert df.filter(pl.col("tune_trial_id") == key)["attempts"].item() == 1
    for study in optuna_studies(study_dir).values():
        told = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        assert len(told) == spec.search.samples


def test_the_default_study_is_a_tuned_grid_on_ray_train_and_its_fixed_twin_a_grid():
    studies = Path(__file__).resolve().parent.parent / "studies"
    tuned_spec, fixed = load_study(studies / "noise_grid.yaml"), load_study(studies / "noise_grid_fixed.yaml")
    assert tuned_spec.kind.name == "tuned_grid" and tuned_spec.runner == "train" and tuned_spec.selection == "val"
    assert "train.lr" in tuned_spec.search.space and tuned_spec.search.asha and len(tuned_spec.seeds) >= 3
    assert set(tuned_spec.factors) == {"noise_type", "noise_rate", "loss"}
    # no two cells train the same thing: without noise both noise types are one clean cell
    assert 0.0 not in tuned_spec.factors["noise_rate"]
    # the fixed-lr twin: the tuned grid's cells (and the clean one) and seeds, at the base lr
    assert fixed.kind.name == "grid" and fixed.runner == "inline"
    assert set(tuned_spec.factors["noise_rate"]) < set(fixed.factors["noise_rate"])
    assert {k: v for k, v in fixed.factors.items() if k != "noise_rate"} == \
        {k: v for k, v in tuned_spec.factors.items() if k != "noise_rate"}
    assert fixed.seeds == tuned_spec.seeds
    assert fixed.base.with_updates({"train.lr": tuned_spec.base.train.lr}) == fixed.base
    # the default study validates on enough images to rank its configurations
    assert study_warnings(tuned_spec) == []
