"""Figures hold the numbers of the cells they draw, and say why when they cannot be drawn."""

from dataclasses import replace

import plotly.graph_objects as go
import polars as pl
import pytest
import report_fixtures as fx

from ptlab.report import dashboard as dash
from ptlab.report.aggregate import cell_summary, load_study
from ptlab.report.figures import render


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return load_study(fx.noise_grid(tmp_path_factory.mktemp("grid") / "grid"))


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    return load_study(fx.search_study(tmp_path_factory.mktemp("search") / "search"))


def draw(spec, study):
    return render(spec, study, cell_summary(study.trials, study.keys, study.metrics))


def test_surface_per_loss_holds_the_cell_means(grid):
    spec = dash.Surface(kind="surface", x="noise_rate", y=["gce_q", "n_ctx"], z="test_acc", facet="loss")
    item = draw(spec, grid)
    surfaces = [t for t in item.figure.data if isinstance(t, go.Surface)]
    # loss on the facet, noise_type folded in: no surface averages over noise types.
    assert len(surfaces) == 4
    titles = [a.text for a in item.figure.layout.annotations]
    assert titles == [f"loss={loss}, noise_type={nt}" for loss in ("ce", "gce") for nt in ("pair", "symmetric")]
    ce_symmetric = surfaces[titles.index("loss=ce, noise_type=symmetric")]
    assert list(ce_symmetric.x) == [0.0, 0.25, 0.5] and list(ce_symmetric.y) == [4, 16]
    expected = [[fx.grid_accuracy("symmetric", rate, "ce", n_ctx, 2) for rate in (0.0, 0.25, 0.5)] for n_ctx in (4, 16)]
    # The cell whose seeds 2 and 3 broke keeps only seed 1: 80 + 2 - 30 - 1.
    expected[1][2] = 51.0
    assert [v for row in ce_symmetric.z for v in row] == pytest.approx([v for row in expected for v in row])


def test_surface_of_a_partial_study_has_holes(tmp_path):
    study = load_study(fx.noise_grid(tmp_path / "partial", keep=40))
    item = draw(dash.Surface(kind="surface", y="n_ctx", facet="loss"), study)
    holes = sum(v is None for t in item.figure.data for row in t.z for v in row)
    assert item.figure is not None and holes > 0


def test_curve_bands_and_folded_factors(grid):
    item = draw(dash.Curve(kind="curve", y="test_acc", color="loss", facet="noise_type"), grid)
    lines = [t for t in item.figure.data if t.mode == "lines+markers"]
    assert {t.name for t in lines} == {f"loss={loss}, n_ctx={n}" for loss in ("ce", "gce") for n in (4, 16)}
    assert len(lines) == 8  # four series in each of two noise-type panels
    bands = [t for t in item.figure.data if t.fill == "tonexty"]
    assert len(bands) == 8
    gce16 = next(t for t in lines if t.name == "loss=gce, n_ctx=16" and t.xaxis == "x")
    upper = next(t for t in bands if t.legendgroup == "loss=gce, n_ctx=16" and t.xaxis == "x")
    half_width = 4.302653 * 1.0 / 3**0.5  # seeds at -1, 0, +1: std 1
    assert [u - m for u, m in zip(upper.y, gce16.y, strict=True)] == pytest.approx([half_width] * 3, rel=1e-5)


def test_heatmap_writes_mean_and_ci_in_cells(grid):
    item = draw(dash.Heatmap(kind="heatmap", y="loss", facet="noise_type"), grid)
    texts = [v for t in item.figure.data for row in t.text for v in row]
    assert "80.0±2.5" in texts and "51.0" in texts


def test_missing_columns_give_notes(grid):
    flat = draw(dash.Curve(kind="curve", x="shots"), grid)
    assert flat.figure is None and flat.note == "x: shots does not vary in this study"
    absent = draw(dash.Bars(kind="bars", ys=["many_acc"]), grid)
    assert absent.note == "no values for many_acc in results.parquet"
    text_axis = draw(dash.Surface(kind="surface", y="loss"), grid)
    assert "numeric axes" in text_axis.note
    assert "optuna.db" in draw(dash.ParamImportance(kind="param_importance"), grid).note


def test_learning_curves_mark_where_asha_stopped(search):
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc"), search)
    stops = next(t for t in item.figure.data if t.name == "stopped by ASHA")
    pruned = search.trials.filter(search.trials["status"] == "pruned")
    assert list(stops.x) == [2] * pruned.height
    assert sorted(stops.customdata) == sorted(pruned["trial_id"].to_list())
    lines = [t for t in item.figure.data if t.mode == "lines"]
    assert len(lines) == search.trials.height


def test_learning_curves_show_running_trials(tmp_path):
    folder = fx.noise_grid(tmp_path / "g", keep=6)
    curves = pl.read_parquet(folder / "curves.parquet")
    running = pl.DataFrame(fx.curve_rows("still-running", {"val_acc": 50.0, "train_loss": 1.0}, 3))
    pl.concat([curves, running.select(curves.columns).cast(curves.schema)]).write_parquet(folder / "curves.parquet")
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc"), load_study(folder))
    assert {"status=completed", "status=running"} <= {t.name for t in item.figure.data}


def test_optuna_figures_read_the_study_storage(search):
    importance = draw(dash.ParamImportance(kind="param_importance"), search)
    assert set(importance.figure.data[0].y) == {"lr", "gce_q"}
    parallel = draw(dash.ParallelCoordinates(kind="parallel_coordinates"), search)
    # Optuna draws one line per complete trial through objective, gce_q and lr; pruned ones stay out.
    lines = [t for t in parallel.figure.data if t.mode == "lines"]
    assert len(lines) == search.trials.filter(search.trials["status"] == "completed").height
    assert all(len(t.x) == 3 for t in lines)


def test_optuna_storage_with_another_study_name(search):
    renamed = replace(search, spec={**search.spec, "name": "other"})
    item = draw(dash.ParamImportance(kind="param_importance"), renamed)
    assert item.note == "optuna.db holds no Optuna study named other (it holds: search)"


def test_a_study_with_only_pruned_trials_draws_its_curves(tmp_path):
    row = fx.trial_row({"gce_q": 0.5, "seed": 1}, {"val_acc": 40.0}, "pruned")
    folder = fx.write_study(tmp_path / "s", {"name": "s"}, [row], fx.curve_rows(row["trial_id"], {"val_acc": 40.0}, 2))
    study = load_study(folder)
    assert draw(dash.Curve(kind="curve"), study).note == "no trial has completed yet (only pruned ones)"
    assert draw(dash.LearningCurves(kind="learning_curves"), study).figure is not None


def test_accuracy_bands_are_drawn_within_0_and_100_but_hover_keeps_the_interval(grid):
    spread = pl.when(pl.col("seed") == 1).then(99.0).when(pl.col("seed") == 2).then(1.0).otherwise(50.0)
    study = replace(grid, trials=grid.trials.with_columns(spread.alias("test_acc")))
    item = draw(dash.Curve(kind="curve", y="test_acc", color="loss", facet="noise_type"), study)
    band_edges = [v for t in item.figure.data if t.hoverinfo == "skip" for v in t.y if v is not None]
    assert band_edges and min(band_edges) == 0.0 and max(band_edges) == 100.0
    intervals = [ci for t in item.figure.data if t.mode == "lines+markers" for ci, _ in t.customdata if ci is not None]
    assert max(intervals) > 100  # t-interval of 99, 1, 50 with 3 seeds: about 122
