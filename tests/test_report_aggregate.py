"""Aggregation numbers against a hand-built results table."""

import math

import polars as pl
import pytest
from report_fixtures import ENSEMBLE_GAIN, trial_row, upl_study, write_study

from ptlab.report.aggregate import (
    best_rows,
    cell_keys,
    cell_summary,
    excluded_trials,
    export_tables,
    is_bookkeeping,
    load_study,
    metric_columns,
    paper_table,
    robustness_summary,
    t_critical,
)

# (loss, noise_rate, seed, status, test_acc); cells are (loss, noise_rate).
TABLE = [
    ("ce", 0.0, 1, "completed", 70.0),
    ("ce", 0.0, 2, "completed", 72.0),
    ("ce", 0.0, 3, "completed", 74.0),
    ("ce", 0.25, 1, "completed", 66.0),
    ("ce", 0.25, 2, "completed", 66.0),
    ("ce", 0.25, 3, "completed", 66.0),
    ("ce", 0.5, 1, "completed", 50.0),
    ("ce", 0.5, 2, "completed", 54.0),
    ("ce", 0.5, 3, "flagged_nan", float("nan")),
    ("ce", 0.5, 4, "failed", None),
    ("gce", 0.0, 1, "completed", 80.0),
    ("gce", 0.0, 2, "pruned", 10.0),
]


def hand_table() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(len(TABLE))],
            "cell_id": [f"{loss}-{rate}" for loss, rate, *_ in TABLE],
            "status": [row[3] for row in TABLE],
            "error": ["" if row[3] == "completed" else f"{row[3]} error" for row in TABLE],
            "method": ["coop"] * len(TABLE),
            "loss": [row[0] for row in TABLE],
            "noise_rate": [row[1] for row in TABLE],
            "seed": [row[2] for row in TABLE],
            "test_acc": [row[4] for row in TABLE],
            "auroc": [None] * len(TABLE),
            "wall_s": [10.0] * len(TABLE),
        },
        schema_overrides={"auroc": pl.Float64},
    )


@pytest.mark.parametrize(
    ("dof", "expected"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)]
)
def test_t_critical_matches_student_tables(dof, expected):
    assert t_critical(dof) == pytest.approx(expected, abs=1e-4)


def test_t_critical_needs_two_seeds():
    with pytest.raises(ValueError, match="two seeds"):
        t_critical(0)


def test_cell_summary_numbers():
    trials = hand_table()
    cells = cell_summary(trials, ["loss", "noise_rate"], ["test_acc"])
    by_cell = {(r["loss"], r["noise_rate"]): r for r in cells.iter_rows(named=True)}
    assert set(by_cell) == {("ce", 0.0), ("ce", 0.25), ("ce", 0.5), ("gce", 0.0)}

    clean = by_cell[("ce", 0.0)]
    assert (clean["n_seeds"], clean["n_excluded"]) == (3, 0)
    assert clean["test_acc_mean"] == pytest.approx(72.0)
    assert clean["test_acc_std"] == pytest.approx(2.0)
    assert clean["test_acc_ci95"] == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-5)

    assert by_cell[("ce", 0.25)]["test_acc_ci95"] == pytest.approx(0.0)

    # The NaN of the diverged seed and the failed seed stay out of the mean.
    noisy = by_cell[("ce", 0.5)]
    assert (noisy["n_seeds"], noisy["n_excluded"]) == (2, 2)
    assert noisy["excluded"] == "seed 3 flagged_nan; seed 4 failed"
    assert noisy["test_acc_mean"] == pytest.approx(52.0)
    # Two seeds: a spread, but no interval (t = 12.7 would make it wider than the data).
    assert noisy["test_acc_std"] == pytest.approx(math.sqrt(8))
    assert noisy["test_acc_ci95"] is None

    # A pruned trial is no seed of its cell; one seed has no spread.
    single = by_cell[("gce", 0.0)]
    assert (single["n_seeds"], single["n_excluded"]) == (1, 0)
    assert single["test_acc_mean"] == pytest.approx(80.0)
    assert single["test_acc_std"] is None and single["test_acc_ci95"] is None


def test_robustness_summary_drop_and_area():
    cells = cell_summary(hand_table(), ["loss", "noise_rate"], ["test_acc"])
    table = robustness_summary(cells, ["loss", "noise_rate"], "test_acc")
    ce = table.filter(pl.col("loss") == "ce").row(0, named=True)
    assert (ce["rate_lo"], ce["rate_hi"], ce["n_rates"]) == (0.0, 0.5, 3)
    assert ce["drop"] == pytest.approx(72.0 - 52.0)
    # Trapezoids: 0.25 * (72 + 66) / 2 + 0.25 * (66 + 52) / 2
    assert ce["auc"] == pytest.approx(32.0)
    assert ce["auc_norm"] == pytest.approx(64.0)
    gce = table.filter(pl.col("loss") == "gce").row(0, named=True)
    assert gce["n_rates"] == 1 and gce["drop"] is None and gce["auc"] is None


def test_robustness_needs_a_noise_factor():
    cells = cell_summary(hand_table(), ["loss"], ["test_acc"])
    assert robustness_summary(cells, ["loss"], "test_acc").is_empty()


def test_cell_keys_are_varying_config_columns_spec_factors_first():
    trials = hand_table().with_columns(
        pl.Series("train.lr", [0.002, 0.01] * 6),
        pl.Series("method_options.scenario", ["open"] * 12),
    )
    # seed varies but is no cell key; test_acc varies but is no config; method and scenario are constant.
    assert cell_keys(trials, ["noise_rate", "loss", "n_ctx"]) == ["noise_rate", "loss", "train.lr"]


def test_metric_columns_keep_method_columns_that_hold_values():
    trials = hand_table().with_columns(pl.lit(61.5).alias("many_acc"), pl.lit(3.0).alias("custom_score"))
    # auroc is all empty: a method that does not compute it.
    assert metric_columns(trials) == ["test_acc", "many_acc", "custom_score", "wall_s"]


def test_excluded_trials_list_status_and_error():
    excluded = excluded_trials(hand_table(), ["loss", "noise_rate"])
    assert excluded.select("seed", "status", "error").rows() == [
        (3, "flagged_nan", "flagged_nan error"),
        (4, "failed", "failed error"),
    ]


def test_paper_table_and_exports(tmp_path):
    rows = [
        trial_row({"loss": loss, "noise_rate": rate, "noise_type": "symmetric", "seed": seed}, {"test_acc": acc})
        for loss, rate, seed, status, acc in TABLE
        if status == "completed"
    ]
    rows.append(
        trial_row(
            {"loss": "ce", "noise_rate": 0.5, "noise_type": "symmetric", "seed": 4}, {"test_acc": 1.0}, "failed", "boom"
        )
    )
    folder = write_study(tmp_path / "s", {"name": "s", "factors": {"loss": ["ce", "gce"]}, "planned_trials": 12}, rows)
    study = load_study(folder)
    assert study.keys == ["loss", "noise_rate"]
    cells = cell_summary(study.trials, study.keys, ["test_acc"])
    table = paper_table(cells, study.keys, ["test_acc"])
    assert table.row(0) == ("ce", "0", "3", "72.00 ± 4.97")
    # Two seeds left: the mean and n, no interval.
    assert table.filter(pl.col("noise_rate") == "0.5").row(0) == ("ce", "0.5", "2 (1 excluded)", "52.00")

    written = export_tables(study, cells, robustness_summary(cells, study.keys), tmp_path / "out", ["test_acc"])
    assert [p.name for p in written] == ["cells.csv", "summary.tex", "robustness.csv", "summary.md"]
    csv = pl.read_csv(tmp_path / "out" / "cells.csv")
    assert csv.filter(pl.col("loss") == "ce").sort("noise_rate")["test_acc_mean"].to_list() == [72.0, 66.0, 52.0]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| loss | noise_rate | n | test_acc |" in md
    assert "| ce | 0 | 3 | 72.00 ± 4.97 |" in md
    # gce at noise 0 (one seed, 80) is the best cell of the column.
    assert "| gce | 0 | 1 | **80.00** |" in md
    tex = (tmp_path / "out" / "summary.tex").read_text()
    assert tex.startswith("\\begin{tabular}{lrrr}\n\\toprule\nloss & noise\\_rate & n & test\\_acc \\\\\n\\midrule\n")
    assert "ce & 0 & 3 & 72.00 $\\pm$ 4.97 \\\\" in tex and "gce & 0 & 1 & \\textbf{80.00} \\\\" in tex
    assert tex.endswith("\\bottomrule\n\\end{tabular}\n")
    assert "| loss | n_rates | rate_lo | rate_hi | test_acc_lo | test_acc_hi | drop | auc | auc_norm |" in md
    assert "| ce | 3 | 0 | 0.5 | 72.00 | 52.00 | 20.00 | 32.00 | 64.00 |" in md


def test_load_study_keeps_the_last_row_of_a_retried_trial_and_tells_partial(tmp_path):
    config = {"loss": "ce", "seed": 1}
    first = trial_row(config, {"test_acc": 10.0}, "failed", "preempted")
    retry = trial_row(config, {"test_acc": 70.0})
    other = trial_row({"loss": "gce", "seed": 1}, {"test_acc": 75.0})
    folder = write_study(tmp_path / "s", {"name": "s", "planned_trials": 4}, [first, retry, other])
    study = load_study(folder)
    assert study.trials.height == 2
    assert study.trials.filter(pl.col("loss") == "ce")["status"].item() == "completed"
    assert study.partial and study.status_counts() == {"completed": 2}


def test_load_study_without_results_yet(tmp_path):
    study = load_study(write_study(tmp_path / "s", {"name": "s", "planned_trials": 4}, []))
    assert study.trials.is_empty() and study.keys == [] and study.metrics == [] and study.partial


def test_load_study_needs_a_study_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study.yaml"):
        load_study(tmp_path)


def test_method_options_stored_as_json_become_columns(tmp_path):
    rows = [
        trial_row(
            {"method": "ueo", "method_options.weights": weights, "method_options.lambda": 0.5, "seed": seed},
            {"test_acc": 70.0 + seed},
        )
        for weights in ("mcm", "uniform")
        for seed in (1, 2)
    ]
    study = load_study(write_study(tmp_path / "s", {"name": "s"}, rows))
    assert "method_options" not in study.trials.columns
    assert study.trials["method_options.lambda"].to_list() == [0.5] * 4
    assert study.keys == ["method_options.weights"]
    cells = cell_summary(study.trials, study.keys, study.metrics)
    assert cells["method_options.weights"].to_list() == ["mcm", "uniform"]


def test_seed_ensembles_are_cells_of_their_own_but_not_trials(tmp_path):
    study = load_study(upl_study(tmp_path / "upl"))
    assert study.trials.height == 6 and study.ensembles.height == 2
    assert not study.partial and study.status_counts() == {"completed": 6}
    assert study.keys == ["method", "ensemble_size"] and "ensemble_size" not in study.metrics
    cells = cell_summary(study.rows, study.keys, study.metrics)
    members = cells.filter(pl.col("method") == "upl")
    ensemble = cells.filter(pl.col("method") == "upl_ensemble")
    assert ensemble["ensemble_size"].item() == 3 and members["ensemble_size"].item() is None
    assert ensemble["test_acc_mean"].item() == pytest.approx(members["test_acc_mean"].item() + ENSEMBLE_GAIN)
    assert ensemble["member_test_acc_mean"].item() == pytest.approx(members["test_acc_mean"].item())


def test_counts_and_timings_get_no_interval():
    trials = hand_table().with_columns(
        pl.Series("images_encoded", [400.0, 420.0, 460.0] * 4),
        pl.Series("noise_realised", [0.21, 0.25, 0.27] * 4),
    )
    assert is_bookkeeping("wall_s", trials["wall_s"]) and is_bookkeeping("images_encoded", trials["images_encoded"])
    # A whole-number accuracy is still a measurement; a realised noise rate is one too.
    assert not is_bookkeeping("test_acc", pl.Series([70.0, 72.0])) and not is_bookkeeping("noise_realised", trials["noise_realised"])
    cells = cell_summary(trials, ["loss", "noise_rate"], ["test_acc", "images_encoded", "noise_realised", "wall_s"])
    clean = cells.filter((pl.col("loss") == "ce") & (pl.col("noise_rate") == 0.0)).row(0, named=True)
    assert clean["images_encoded_mean"] == pytest.approx(426.6667, rel=1e-4)
    assert clean["images_encoded_ci95"] is None and clean["wall_s_ci95"] is None
    assert clean["test_acc_ci95"] is not None and clean["noise_realised_ci95"] is not None


def test_best_rows_follow_each_metrics_direction():
    cells = pl.DataFrame({"test_acc_mean": [70.0, 80.004, 79.996, None], "train_loss_mean": [0.5, 0.2, 0.9, 0.1],
                          "grad_ratio_mean": [1.0, 2.0, 3.0, 4.0]})
    # 80.004 and 79.996 print alike (80.00): both are best; grad_ratio has no better direction.
    assert best_rows(cells, ["test_acc", "train_loss", "grad_ratio"]) == {"test_acc": {1, 2}, "train_loss": {3}}


def test_reference_rows_are_neither_trials_nor_cells(tmp_path):
    from report_fixtures import ZERO_SHOT_ACC, noise_grid

    study = load_study(noise_grid(tmp_path / "grid"))
    assert study.references.height == 1 and study.references["test_acc"].item() == ZERO_SHOT_ACC
    assert "zeroshot" not in study.trials["method"].to_list() and "method" not in study.keys
    assert study.trials.height == 60 and not study.partial
    md = (export_tables(study, cell_summary(study.rows, study.keys, study.metrics), pl.DataFrame(), tmp_path / "o",
                        ["test_acc"]) and (tmp_path / "o" / "summary.md").read_text())
    assert "| zero-shot CLIP |  |  |  | 1 | 45.00 |" in md


def fixed_noise_grid(folder, clean: str = "once"):
    """noise_grid_fixed in small: symmetric vs confusion at rates 0 and 0.5, 3 seeds, each cell's seed ensemble.

    The clean trials are the same for both noise types. As a study stores them (clean="once") they are there
    once, under symmetric; "apart" writes what a ptlab that ran both noise types at rate 0 stored, each under an
    id that hashed its noise type; "resumed" a folder begun by that ptlab, its symmetric clean trials done, and
    resumed by this one, which ran confusion's under the clean trial's id.
    """
    from report_fixtures import ensemble_row

    rows = []
    for noise_type in ("symmetric", "confusion"):
        for rate in (0.0, 0.5):
            cell = []
            for seed in (1, 2, 3):
                acc = 80.0 - rate * (20.0 if noise_type == "symmetric" else 40.0) + seed
                row = trial_row({"noise_type": noise_type, "noise_rate": rate, "seed": seed},
                                {"test_acc": acc, "pseudo_label_acc": 0.0, "zeroshot_acc": 50.0})
                if rate == 0 and (clean == "apart" or clean == "resumed" and noise_type == "symmetric"):
                    row |= {"trial_id": f"{noise_type}{seed}", "cell_id": f"{noise_type}-clean",
                            "tune_trial_id": f"tune-{noise_type}{seed}"}
                elif rate == 0 and noise_type == "confusion" and clean == "once":
                    continue
                cell.append(row)
            rows += cell + ([ensemble_row(cell)] if cell else [])
    spec = {"name": "fixed", "method": "coop", "factors": {"noise_type": ["symmetric", "confusion"],
                                                          "noise_rate": [0.0, 0.5]}, "seeds": [1, 2, 3],
            "planned_trials": 9 if clean == "once" else 12}
    return load_study(write_study(folder, spec, rows))


def test_a_trial_that_is_the_result_of_several_cells_counts_in_each(tmp_path):
    study = fixed_noise_grid(tmp_path / "s")
    # stored once: 9 trials, as planned, and their ensembles
    assert study.trials.height == 9 and not study.partial and study.ensembles.height == 3
    assert study.keys == ["noise_type", "noise_rate", "ensemble_size", "method"]
    cells = cell_summary(study.rows, study.keys, study.metrics)
    trained = cells.filter(pl.col("method") == "coop")
    assert trained.height == 4 and trained["n_seeds"].to_list() == [3] * 4
    clean = trained.filter(pl.col("noise_rate") == 0.0)
    assert clean["noise_type"].sort().to_list() == ["confusion", "symmetric"]
    assert clean["test_acc_mean"].to_list() == [82.0, 82.0]
    confusion = clean.filter(pl.col("noise_type") == "confusion")["cell_id"].item()
    symmetric = clean.filter(pl.col("noise_type") == "symmetric")["cell_id"].item()
    assert confusion == f"{symmetric}/noise_type=confusion"
    # both robustness curves start at the shared clean trial
    robustness = robustness_summary(cells, study.keys).filter(pl.col("method") == "coop").sort("noise_type")
    assert robustness["rate_lo"].to_list() == [0.0, 0.0] and robustness["drop"].to_list() == [20.0, 10.0]
    # the clean cell's seed ensemble counts for both noise types too
    ensembles = cells.filter((pl.col("method") == "coop_ensemble") & (pl.col("noise_rate") == 0.0))
    assert ensembles["noise_type"].sort().to_list() == ["confusion", "symmetric"]
    assert ensembles["test_acc_mean"].to_list() == [82.0 + ENSEMBLE_GAIN] * 2
    # learning curves and tuned tables read trials by cell: the clean trials are in both
    assert study.cell_trials.height == 12 and study.cell_trials["trial_id"].n_unique() == 9


@pytest.mark.parametrize("clean", ["apart", "resumed"])
def test_a_folder_that_ran_each_cell_on_its_own_is_read_as_it_is(tmp_path, clean):
    study = fixed_noise_grid(tmp_path / "s", clean)
    assert study.repeats.is_empty() and study.trials.height == 12
    cells = cell_summary(study.rows, study.keys, study.metrics)
    assert cells.height == 8 and cells.filter(pl.col("method") == "coop")["n_seeds"].to_list() == [3] * 4
    assert cells.select("noise_type", "noise_rate", "method").n_unique() == 8
