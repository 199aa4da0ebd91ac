"""Results store: one row per trial, flattened config, and files that survive a kill at any moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import polars as pl

from ptlab.config import TrialConfig
from ptlab.study.space import cell_id
from ptlab.study.store import ResultStore, TrialOutcome
from ptlab.study.trial import TrialFiles


def outcome(key: str, seed: int = 1, status: str = "completed", epochs: int = 3) -> TrialOutcome:
    cfg = TrialConfig(seed=seed, noise_type="symmetric", noise_rate=0.25, method_options={"grad_ratio_samples": 32})
    curve = [{"epoch": e, "train_loss": 2.0 / e, "val_acc": 10.0 * e} for e in range(1, epochs + 1)]
    return TrialOutcome(
        key=key, trial_id=cfg.trial_id, cell_id=cell_id(cfg), status=status, config=cfg.model_dump(mode="json"),
        metrics={"test_acc": 71.5, "val_acc": 30.0, "epochs_done": epochs, "loss": 0.5},
        curve=curve, timings={"wall_s": 12.5, "recipe_s": 10.0, "attempts": 1, "finished_at": 1.7e9},
        provenance={"ptlab": "0.1.0", "torch": "2.x", "open_clip": "3.x", "ray": "2.60.0", "git_commit": "abc"},
    )


def test_row_flattens_config_and_keeps_every_contract_column(tmp_path):
    store = ResultStore(tmp_path)
    store.add(outcome("t1"))
    row = store.results().row(0, named=True)
    for column in ("trial_id", "cell_id", "status", "error", "config_json", "test_acc", "val_acc", "wall_s", "recipe_s",
                   "epochs_done", "ptlab_version", "torch_version", "open_clip_version", "ray_version", "git_commit"):
        assert column in row
    assert row["train.lr"] == 0.002 and row["data.domain"] == "photo" and row["noise_rate"] == 0.25
    assert json.loads(row["method_options"]) == {"grad_ratio_samples": 32}
    assert row["train.crop_scale"] == [0.08, 1.0]
    assert TrialConfig.model_validate(json.loads(row["config_json"])).trial_id == row["trial_id"]
    # a metric named like a config column does not overwrite the config
    assert row["loss"] == "ce" and row["metric.loss"] == 0.5
    assert row["epochs_done"] == 3 and row["finished_at"] == datetime.fromtimestamp(1.7e9, timezone.utc)


def test_cell_id_ignores_the_seed_only():
    a, b = outcome("a", seed=1), outcome("b", seed=2)
    assert a.cell_id == b.cell_id and a.trial_id != b.trial_id
    other = TrialConfig(seed=1, noise_type="symmetric", noise_rate=0.5, method_options={"grad_ratio_samples": 32})
    assert cell_id(other) != a.cell_id


def test_recording_a_trial_again_replaces_it(tmp_path):
    store = ResultStore(tmp_path)
    store.add(outcome("t1"))
    store.add(outcome("t2", seed=2, status="pruned", epochs=1))
    store.add(outcome("t1", epochs=4))
    results, curves = store.results(), store.curves()
    assert sorted(results["tune_trial_id"].to_list()) == ["t1", "t2"]
    assert results.filter(pl.col("tune_trial_id") == "t1")["epochs_done"].item() == 4
    assert curves.group_by("tune_trial_id").len().sort("tune_trial_id")["len"].to_list() == [4, 1]
    assert curves.filter(pl.col("tune_trial_id") == "t1")["epoch"].to_list() == [1, 2, 3, 4]


def test_rows_with_different_metrics_share_one_table(tmp_path):
    store = ResultStore(tmp_path)
    store.add(outcome("t1"))
    failed = outcome("t2")
    failed.status, failed.metrics, failed.curve, failed.error = "failed", {}, [], "RuntimeError: boom"
    store.add(failed)
    df = store.results().sort("tune_trial_id")
    assert df["status"].to_list() == ["completed", "failed"]
    assert df["test_acc"].to_list() == [71.5, None] and df["error"].to_list()[1] == "RuntimeError: boom"


def test_ensemble_rows_sit_beside_trial_rows_and_are_replaced_whole(tmp_path):
    store = ResultStore(tmp_path)
    store.add(outcome("t1"))
    ensemble = {"trial_id": "ens-1", "cell_id": "c-ens2", "method": "upl_ensemble", "status": "completed",
                "ensemble_size": 2, "test_acc": 80.0}
    store.set_ensembles([ensemble])
    store.set_ensembles([{**ensemble, "test_acc": 81.0}])
    store.add(outcome("t2", seed=2))  # a trial recorded later keeps the ensemble row
    assert sorted(store.results()["tune_trial_id"].to_list()) == ["t1", "t2"]
    rows = store.rows().filter(pl.col("ensemble_size").is_not_null())
    assert rows["tune_trial_id"].to_list() == ["ens-1"] and rows["test_acc"].to_list() == [81.0]
    store.set_ensembles([])
    assert store.rows().height == 2


def test_curve_file_keeps_the_latest_report_of_each_epoch(tmp_path):
    files = TrialFiles(tmp_path)
    for epoch, value in [(1, 1.0), (2, 2.0), (2, 2.5), (3, 3.0)]:
        files.append_curve({"epoch": epoch, "val_acc": value})
    with open(files.curve, "a") as f:
        f.write('{"epoch": 4, "val_')  # the line a kill cut short
    assert [(p["epoch"], p["val_acc"]) for p in files.read_curve()] == [(1, 1.0), (2, 2.5), (3, 3.0)]


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_study_store import outcome
from ptlab.study.store import ResultStore
store = ResultStore({folder!r})
for i in range(10_000):
    o = outcome(f"t{{i}}", epochs=200)
    store.add(o)
    print(i + 1, flush=True)
"""


def test_kill_at_any_moment_leaves_readable_files_with_every_finished_trial(tmp_path):
    script = WRITER.format(tests=os.path.dirname(__file__), folder=str(tmp_path))
    for delay in (0.8, 1.3, 2.1):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        finished = 0
        deadline = time.monotonic() + 60
        # wait until it writes, then kill it mid-flight
        while finished == 0 and time.monotonic() < deadline:
            finished = int(proc.stdout.readline() or 0)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait()
        finished = int(rest[-1]) if rest else finished
        store = ResultStore(tmp_path)
        results, curves = store.results(), store.curves()
        assert results.height >= finished
        assert set(results["tune_trial_id"]) <= set(curves["tune_trial_id"])
        assert results["tune_trial_id"].n_unique() == results.height


def test_damaged_or_missing_parquet_is_rebuilt_from_the_trial_folders(tmp_path, capsys):
    store = ResultStore(tmp_path)
    store.add(outcome("t1"))
    failed = outcome("t2", seed=2)
    failed.status, failed.metrics, failed.curve, failed.error = "failed", {}, [], "out of memory: killed"
    store.add(failed)
    store.add(outcome("t3", seed=3, epochs=2))
    store.set_ensembles([{"trial_id": "ens-1", "cell_id": "c-ens2", "method": "upl_ensemble", "status": "completed",
                          "ensemble_size": 2, "test_acc": 80.0}])
    before, curves_before = store.rows().sort("tune_trial_id"), store.curves().sort("tune_trial_id", "epoch")
    capsys.readouterr()

    data = store.results_path.read_bytes()
    store.results_path.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    store.curves_path.unlink()
    again = ResultStore(tmp_path).rows().sort("tune_trial_id")
    assert "is unreadable" in capsys.readouterr().err
    assert again.select(before.columns).equals(before)
    assert ResultStore(tmp_path).curves().sort("tune_trial_id", "epoch").select(curves_before.columns).equals(curves_before)
    assert ResultStore(tmp_path).keys() == {"t1", "t2", "t3"}
    # the rebuilt files are whole again: reading them says nothing more
    ResultStore(tmp_path).rows()
    assert capsys.readouterr().err == ""


def test_cli_status_survives_a_truncated_results_file(tmp_path):
    from typer.testing import CliRunner

    from ptlab.cli import app
    from ptlab.study.spec import validate_study

    spec = validate_study({"name": "s", "method": "coop", "dataset": "world:shapes", "shots": 2,
                           "noise_type": "symmetric", "factors": {"noise_rate": [0.25]}, "seeds": [1, 2, 3]})
    (tmp_path / "study.yaml").write_text(spec.to_yaml())
    store = ResultStore(tmp_path)
    for i, seed in enumerate((1, 2, 3)):
        store.add(outcome(f"t{i}", seed=seed))
    store.results_path.write_bytes(store.results_path.read_bytes()[:100])
    result = CliRunner().invoke(app, ["study", "status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "rebuilt results.parquet and curves.parquet from 3 trial folders" in result.output
    assert "3/3 finished" in result.output


def test_the_report_reads_through_a_missing_results_file(tmp_path):
    from ptlab.report.aggregate import load_study

    (tmp_path / "study.yaml").write_text("name: s\nmethod: coop\nfactors: {}\n")
    store = ResultStore(tmp_path)
    store.add(outcome("t1"))
    store.add(outcome("t2", seed=2))
    store.results_path.unlink()
    assert sorted(load_study(tmp_path).trials["tune_trial_id"].to_list()) == ["t1", "t2"]


def labelled_folder(tmp_path, factors=None):
    """A study folder whose study.yaml the store reads its label from."""
    from ptlab.study.spec import validate_study

    factors = factors or {"noise_rate": [0.25], "method_options.grad_ratio_samples": [32]}
    spec = validate_study({"name": "tiny", "method": "coop", "noise_type": "symmetric", "factors": factors,
                           "seeds": [1, 2, 3]})
    (tmp_path / "study.yaml").write_text(spec.to_yaml())
    return tmp_path


def test_results_and_curves_hold_real_types_the_study_and_its_factors(tmp_path):
    import pyarrow.parquet as pq

    from ptlab.study.schema import StudyLabel, read_label

    store = ResultStore(labelled_folder(tmp_path))
    store.add(outcome("t1"))
    late = outcome("t2", seed=2)
    late.timings = {**late.timings, "attempts": 2.0, "wall_s": 7}  # a float count and an int time: no type drift
    store.add(late)
    bare = outcome("t3", seed=3)
    bare.status, bare.metrics, bare.curve, bare.timings, bare.provenance = "failed", {}, [], {}, {}
    store.add(bare)  # nothing but its config: timings and metrics null, still typed
    store.set_ensembles([{"trial_id": "ens-1", "cell_id": "c-ens2", "method": "coop_ensemble", "status": "completed",
                          "ensemble_size": 2, "ensemble_seeds": [1, 2], "ensemble_members": ["a", "b"], "test_acc": 80.0}])
    results, curves = pl.read_parquet(store.results_path), pl.read_parquet(store.curves_path)
    schema = results.schema
    for count in ("epochs_done", "attempts", "seed", "shots", "n_ctx", "train.epochs", "train.batch_size",
                  "train.views", "data.val_shots", "ensemble_size"):
        assert schema[count] == pl.Int64, count
    assert schema["finished_at"] == pl.Datetime("us", "UTC") and schema["wall_s"] == pl.Float64
    assert schema["train.crop_scale"] == pl.List(pl.Float64) and schema["ensemble_seeds"] == pl.List(pl.Int64)
    assert schema["ensemble_members"] == pl.List(pl.String)
    assert schema["data.root"] == pl.String and schema["template"] == pl.String  # null in every row, typed
    assert pl.Null not in schema.values() and pl.Null not in curves.schema.values()
    assert results.sort("tune_trial_id")["attempts"].to_list() == [None, 1, 2, None]  # ens-1, t1, t2, t3
    assert results["study"].to_list() == ["tiny"] * 4

    label = StudyLabel("tiny", "grid", ("noise_rate", "method_options.grad_ratio_samples"))
    assert read_label(store.results_path) == label == read_label(store.curves_path)
    # what pyarrow, pandas and DuckDB users see
    meta = pq.read_metadata(store.results_path).metadata
    assert json.loads(meta[b"ptlab.factors"]) == ["noise_rate", "method_options.grad_ratio_samples"]
    assert meta[b"ptlab.study"] == b"tiny" and meta[b"ptlab.kind"] == b"grid"

    # each curve row carries its study and its trial's factor values: no join needed to plot by factor
    assert curves.columns[:5] == ["study", "trial_id", "tune_trial_id", "noise_rate", "method_options.grad_ratio_samples"]
    assert curves.schema["noise_rate"] == pl.Float64 and curves.schema["epoch"] == pl.Int64
    assert curves.group_by("tune_trial_id").agg(pl.col("noise_rate").unique(), pl.col("study").unique()).sort(
        "tune_trial_id").rows() == [("t1", [0.25], ["tiny"]), ("t2", [0.25], ["tiny"])]
    assert set(curves["method_options.grad_ratio_samples"]) == {32}

    # a rebuilt file is the same file
    store.results_path.unlink()
    store.curves_path.unlink()
    assert ResultStore(tmp_path).rows().sort("tune_trial_id").equals(results.sort("tune_trial_id"))
    assert read_label(store.results_path) == label
    assert pl.read_parquet(store.curves_path).sort("tune_trial_id", "epoch").equals(curves.sort("tune_trial_id", "epoch"))


def test_files_of_an_earlier_version_read_in_todays_types_and_take_new_rows(tmp_path):
    """results.parquet as ptlab wrote it before the typed schema: ISO text times, lists as text, counts as floats,
    all-null columns, no study column or label; curves without factor values."""
    from ptlab.study.schema import read_label, results_dtypes

    old = outcome("t1").row()
    old.update({"finished_at": "2023-11-14T22:13:20+00:00", "train.crop_scale": "[0.08, 1.0]", "attempts": 1.0})
    ensemble = {"trial_id": "ens-1", "tune_trial_id": "ens-1", "cell_id": "c-ens2", "method": "coop_ensemble",
                "status": "completed", "ensemble_size": 2, "ensemble_seeds": "1,2", "ensemble_members": "a,b",
                "test_acc": 80.0}
    pl.DataFrame([old, ensemble], infer_schema_length=None).write_parquet(tmp_path / "results.parquet")
    pl.DataFrame([{"trial_id": old["trial_id"], "tune_trial_id": "t1", "epoch": e, "val_acc": 1.0 * e} for e in (1, 2)]
                 ).write_parquet(tmp_path / "curves.parquet")
    assert pl.read_parquet(tmp_path / "results.parquet").schema["data.root"] == pl.Null
    assert read_label(tmp_path / "results.parquet") is None

    store = ResultStore(labelled_folder(tmp_path))
    rows = store.rows()
    declared = results_dtypes()
    assert all(rows.schema[c] == declared[c] for c in rows.columns if c in declared)
    ens = rows.filter(pl.col("ensemble_size").is_not_null()).row(0, named=True)
    assert ens["ensemble_seeds"] == [1, 2] and ens["ensemble_members"] == ["a", "b"]
    trial = rows.filter(pl.col("tune_trial_id") == "t1").row(0, named=True)
    assert trial["finished_at"] == datetime.fromtimestamp(1.7e9, timezone.utc) and trial["train.crop_scale"] == [0.08, 1.0]

    store.add(outcome("t2", seed=2))  # a resumed old study: old and new rows in one file
    results, curves = store.rows(), store.curves()
    assert sorted(results["tune_trial_id"].to_list()) == ["ens-1", "t1", "t2"] and set(results["study"]) == {"tiny"}
    assert pl.Null not in results.schema.values() and results.schema["attempts"] == pl.Int64
    assert read_label(store.results_path).name == "tiny"
    # the old trial's curve has no factor values (none were recorded), the new one's has
    by_key = dict(curves.group_by("tune_trial_id").agg(pl.col("noise_rate").first()).iter_rows())
    assert by_key == {"t1": None, "t2": 0.25}


def test_config_types_cover_every_config_column():
    from ptlab.config import config_columns
    from ptlab.study.schema import config_dtypes

    assert set(config_dtypes()) == config_columns()
    assert config_dtypes()["noise_type"] == pl.String and config_dtypes()["csc"] == pl.Boolean
