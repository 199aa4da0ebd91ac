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
    return render(spec, study, cell_summary(study.rows, study.keys, study.metrics))


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


def test_search_learning_curves_are_per_trial_and_mark_where_asha_stopped(search):
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc"), search)
    stops = next(t for t in item.figure.data if t.name == "stopped by ASHA")
    pruned = search.trials.filter(search.trials["status"] == "pruned")
    assert list(stops.x) == [2] * pruned.height
    assert sorted(stops.customdata) == sorted(pruned["trial_id"].to_list())
    lines = [t for t in item.figure.data if t.mode == "lines"]
    assert len(lines) == search.trials.height


def test_learning_curves_are_cell_means_with_bands_one_panel_per_factor_value(grid):
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc", color="loss"), grid)
    titles = [a.text for a in item.figure.layout.annotations]
    # loss is the colour; every other factor gets a panel of its own: 2 noise types x 3 rates x 2 n_ctx.
    assert len(titles) == 12 and "noise_type=pair, noise_rate=0.25, n_ctx=4" in titles
    means = [t for t in item.figure.data if t.mode == "lines" and t.name in ("loss=ce", "loss=gce")]
    assert len(means) == 24
    panel = f"x{titles.index('noise_type=pair, noise_rate=0.25, n_ctx=4') + 1}"
    ce = next(t for t in means if t.name == "loss=ce" and t.xaxis == panel)
    final = fx.grid_accuracy("pair", 0.25, "ce", 4, 2) + 1.0  # val_acc of the seed mean at the last epoch
    assert list(ce.x) == [1, 2, 3, 4, 5] and ce.y[-1] == pytest.approx(final)
    assert list(ce.customdata) == [3] * 5  # n per epoch
    bands = [t for t in item.figure.data if t.fill == "tonexty"]
    # The broken cell (one seed left) has no band; the other 23 have.
    assert len(bands) == 23


def test_learning_curves_with_few_seeds_draw_the_seeds_and_mark_pruned_trials(tmp_path):
    rows, curves = [], []
    for seed, status in ((1, "completed"), (2, "completed"), (3, "pruned")):
        row = fx.trial_row({"loss": "gce", "noise_rate": 0.25, "noise_type": "symmetric", "seed": seed}, {"val_acc": 60.0 + seed}, status)
        rows.append(row)
        curves += fx.curve_rows(row["trial_id"], {"val_acc": 60.0 + seed}, 2 if status == "pruned" else 4)
    rows.append(fx.trial_row({"loss": "ce", "noise_rate": 0.25, "noise_type": "symmetric", "seed": 1}, {"val_acc": 50.0}))
    study = load_study(fx.write_study(tmp_path / "s", {"name": "s", "planned_trials": 4}, rows, curves))
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc", color="loss"), study)
    assert not [t for t in item.figure.data if t.fill == "tonexty"]
    seeds = next(t for t in item.figure.data if t.mode == "markers" and t.legendgroup == "loss=gce")
    assert sorted(seeds.customdata) == [1] * 4 + [2] * 4
    stop = next(t for t in item.figure.data if t.name == "stopped by ASHA")
    assert list(stop.x) == [2]


def test_curves_with_fewer_than_three_seeds_draw_points_not_bands(tmp_path):
    rows = [
        fx.trial_row({"loss": loss, "noise_rate": rate, "noise_type": "symmetric", "seed": seed}, {"test_acc": acc + seed})
        for loss, acc in (("ce", 60.0), ("gce", 70.0))
        for rate in (0.0, 0.5)
        for seed in (1, 2)
    ]
    study = load_study(fx.write_study(tmp_path / "s", {"name": "s", "planned_trials": 8}, rows))
    item = draw(dash.Curve(kind="curve", y="test_acc", color="loss"), study)
    assert not [t for t in item.figure.data if t.fill == "tonexty"]
    points = [t for t in item.figure.data if t.mode == "markers"]
    assert len(points) == 2 and sorted(points[0].y) == [61.0, 61.0, 62.0, 62.0]


def test_accuracy_figures_carry_the_zero_shot_and_clean_label_lines(grid):
    item = draw(dash.Curve(kind="curve", y="test_acc", color="loss", facet="noise_type"), grid)
    zero_shot = [t for t in item.figure.data if t.name == "zero-shot CLIP"]
    assert len(zero_shot) == 2 and all(list(t.y) == [fx.ZERO_SHOT_ACC] * 2 for t in zero_shot)
    assert list(zero_shot[0].x) == [0.0, 0.5] and [t.showlegend for t in zero_shot] == [True, False]
    clean = [t for t in item.figure.data if t.line.dash == "dot" and t.x[0] is not None]
    # one per series and panel, at the series' own noise_rate 0 mean, toggled with its series
    assert len(clean) == 8
    gce16 = next(t for t in clean if t.legendgroup == "loss=gce, n_ctx=16" and t.xaxis == "x")
    assert list(gce16.y) == [fx.grid_accuracy("pair", 0.0, "gce", 16, 2)] * 2
    assert item.figure.layout.yaxis.title.text == "test_acc (%), mean"
    curves = draw(dash.LearningCurves(kind="learning_curves", y="val_acc", color="noise_rate"), grid)
    assert [t for t in curves.figure.data if t.name == "zero-shot CLIP"][0].y[0] == fx.ZERO_SHOT_ACC + 1.0
    # no reference for what zero-shot does not measure, nor for a study without one
    assert not [t for t in draw(dash.Curve(kind="curve", y="grad_ratio"), grid).figure.data if t.name == "zero-shot CLIP"]


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


def test_bars_draw_seeds_where_too_few_for_an_interval_and_the_zero_shot_line(tmp_path):
    rows = [fx.trial_row({"method": m, "seed": seed}, {"test_acc": acc + seed, "val_acc": acc}) for m, acc, seeds in
            (("coop", 70.0, (1, 2)), ("linear_probe", 60.0, (1, 2, 3))) for seed in seeds]
    folder = fx.write_study(tmp_path / "s", {"name": "s", "planned_trials": 5}, rows)
    fx.write_reference(folder, [fx.trial_row({"method": "zeroshot"}, {"test_acc": 55.0})])
    item = draw(dash.Bars(kind="bars", x="method", ys=["val_acc", "test_acc"]), load_study(folder))
    points = [t for t in item.figure.data if isinstance(t, go.Scatter)]
    # coop's two seeds, for each metric; linear_probe has 3 seeds and its interval instead
    assert [sorted(t.y) for t in points] == [[70.0, 70.0], [71.0, 72.0]] and set(points[1].x) == {"method=coop"}
    [line] = item.figure.layout.shapes
    assert (line.y0, line.line.dash) == (55.0, "dash")
    assert item.figure.layout.annotations[0].text == "zero-shot CLIP, test_acc 55.0%"


def _record(folder, spec: dict, trials: list[tuple[str, dict, float]]):
    """A study folder recorded through the store (curves keyed and carrying factor values): (key, config, val_acc)."""
    from ptlab.config import TrialConfig
    from ptlab.study.spec import validate_study
    from ptlab.study.store import ResultStore, TrialOutcome

    folder.mkdir()
    (folder / "study.yaml").write_text(validate_study(spec).to_yaml())
    store = ResultStore(folder)
    for key, config, acc in trials:
        cfg = TrialConfig().with_updates(config)
        curve = [{"epoch": e, "val_acc": acc * e / 4} for e in range(1, 5)]
        store.add(TrialOutcome(key=key, trial_id=cfg.trial_id, cell_id=cfg.with_updates({"seed": 0}).trial_id,
                               status="completed", config=cfg.model_dump(mode="json"),
                               metrics={"val_acc": acc, "test_acc": acc}, curve=curve))
    return load_study(folder)


def test_learning_curves_of_a_recorded_grid_use_the_rows_factor_values(tmp_path):
    spec = {"name": "g", "method": "coop", "noise_type": "symmetric", "factors": {"loss": ["ce", "gce"]},
            "seeds": [1, 2, 3]}
    study = _record(tmp_path / "g", spec, [(f"k{loss}{seed}", {"loss": loss, "noise_type": "symmetric", "seed": seed},
                                            (60.0 if loss == "ce" else 70.0) + seed)
                                           for loss in ("ce", "gce") for seed in (1, 2, 3)])
    assert "loss" in study.curves.columns  # the store wrote the factor into every curve row
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc", color="loss"), study)
    means = {t.name: t for t in item.figure.data if t.mode == "lines" and t.name in ("loss=ce", "loss=gce")}
    assert list(means["loss=gce"].x) == [1, 2, 3, 4] and means["loss=gce"].y[-1] == pytest.approx(72.0)
    assert list(means["loss=ce"].customdata) == [3] * 4  # three seeds per epoch, no curve joined twice


def test_two_rows_of_one_config_are_two_trials_each_with_its_own_curve(tmp_path):
    """A search that drew one sample twice: one trial_id, two keys, two rows (ptlab.study.schema's identity)."""
    spec = {"name": "s", "method": "coop", "search": {"space": {"train.lr": {"log_uniform": [1e-4, 1e-1]}}, "samples": 3}}
    study = _record(tmp_path / "s", spec, [("a", {"train.lr": 0.01}, 60.0), ("b", {"train.lr": 0.01}, 62.0),
                                           ("c", {"train.lr": 0.001}, 50.0)])
    assert study.trials.height == 3 and study.trials["trial_id"].n_unique() == 2
    item = draw(dash.LearningCurves(kind="learning_curves", y="val_acc"), study)
    lines = [t for t in item.figure.data if t.mode == "lines" and t.name != "zero-shot CLIP"]
    assert len(lines) == 3 and all(list(t.x) == [1, 2, 3, 4] for t in lines)
    assert sorted(t.y[-1] for t in lines) == [50.0, 60.0, 62.0]
