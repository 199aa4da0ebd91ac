"""The report file: self-contained, marked partial when it is, reachable from the command line,
and clean in a real browser."""

import os
from pathlib import Path

import polars as pl
import pytest
import report_fixtures as fx
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from ptlab.report import cli
from ptlab.report.aggregate import load_study
from ptlab.report.dashboard import SHIPPED, load_dashboard
from ptlab.report.html import build_report
from ptlab.study.schema import read_label

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory) -> Path:
    return build_report(fx.noise_grid(tmp_path_factory.mktemp("grid") / "grid"))


def test_report_is_one_self_contained_file(grid_report):
    page = grid_report.read_text()
    assert grid_report == grid_report.parent.parent / "report" / "index.html"
    bundle = get_plotlyjs()
    assert page.count(bundle) == 1
    # Outside plotly.js itself, nothing refers to the network or to another file but the tables.
    rest = page.replace(bundle, "")
    assert "http" not in rest and "<script src" not in rest
    # Every figure of robustness.yaml, none skipped.
    assert page.count('class="plotly-graph-div"') == 5 and 'id="not-applicable"' not in page


def test_report_shows_summary_exclusions_spec_and_tables(grid_report):
    page = grid_report.read_text()
    assert 'data-report-state="complete"' in page and "all 60 planned trials" in page
    assert '<td class="best">82.00 ± 2.48</td>' in page and "<td>80.00 ± 2.48</td>" in page
    assert "seed 2 failed; seed 3 flagged_nan" in page and "RuntimeError: CUDA out of memory" in page
    assert "Robustness to label noise</h2>" in page
    assert "planned_trials: 60" in page
    assert {p.name for p in grid_report.parent.iterdir()} == {
        "index.html", "cells.csv", "robustness.csv", "summary.md", "summary.tex"
    }


def test_a_folder_written_before_the_typed_schema_reports_in_todays_types(grid_report):
    folder = grid_report.parent.parent
    raw = pl.read_parquet(folder / "results.parquet")
    # the fixture is a folder of an earlier version: no label, no study column, lists as text, curves without keys
    assert read_label(folder / "results.parquet") is None and "study" not in raw.columns
    assert raw.schema["train.crop_scale"] == pl.String
    assert "tune_trial_id" not in pl.read_parquet(folder / "curves.parquet").columns
    study = load_study(folder)
    assert study.trials.height == 60 and study.trials.schema["train.crop_scale"] == pl.List(pl.Float64)
    assert not study.curves.is_empty() and 'id="not-applicable"' not in grid_report.read_text()


def test_summary_holds_factors_primary_metrics_and_n_and_details_the_rest(grid_report):
    page = grid_report.read_text()
    summary = page[page.index('id="summary"'):page.index('id="figures"')]
    head = summary[summary.index("<thead>"):summary.index("</thead>")]
    columns = [c.split("</th>")[0] for c in head.split("<th>")[1:]]
    assert columns == ["noise_type", "noise_rate", "loss", "n_ctx", "n", "test_acc", "test_macro_acc",
                       "excluded (not in the mean)"]
    # The zero-shot reference is the first row.
    assert '<tr class="reference"><td>zero-shot CLIP</td>' in summary and "<td>45.00</td>" in summary
    details = page[page.index('id="details"'):page.index('id="overview"')]
    # Timings are means alone: every trial ran 30 s.
    assert "<th>val_acc</th><th>grad_ratio</th>" in details and "<td>1.50 ± 0.00</td>" in details
    assert "<th>wall_s</th>" in details and "<td>30.00</td>" in details and "30.00 ±" not in details
    assert page.count("Student t") == 1  # the method is stated once


def test_figures_with_nothing_to_draw_are_listed_once_at_the_bottom(tmp_path):
    rows = [
        fx.trial_row({"noise_type": "symmetric", "noise_rate": rate, "loss": loss, "seed": seed}, {"test_acc": 70.0 - 20 * rate + seed})
        for rate in (0.0, 0.5) for loss in ("ce", "gce") for seed in (1, 2, 3)
    ]
    page = build_report(fx.write_study(tmp_path / "s", {"name": "s", "planned_trials": 12}, rows)).read_text()
    assert "Not shown" not in page and page.count('id="not-applicable"') == 1
    missing = page[page.index('id="not-applicable"'):page.index('id="spec"')]
    assert "Robustness surface: y: n_ctx / gce_q / shots / train.lr / train.epochs / backbone does not vary" in missing
    assert "Noisy/clean gradient-norm ratio vs noise rate: no values for grad_ratio" in missing
    assert "summary column test_macro_acc: no values in these results" in missing
    assert "Not in these results" not in page
    # Drawn: the test-accuracy curve (headline), the heatmap; the learning curves need curves.parquet.
    assert page.count('class="plotly-graph-div"') == 2


def test_study_whose_every_trial_failed_reports_the_failures(tmp_path):
    # a trial that fails before its recipe starts has no timings either
    rows = [
        fx.trial_row({"noise_type": "symmetric", "noise_rate": rate, "seed": seed}, {"test_acc": 0.0}, status="failed", error="CUDA out of memory")
        | {"wall_s": None, "recipe_s": None}
        for rate in (0.0, 0.5) for seed in (1, 2)
    ]
    page = build_report(fx.write_study(tmp_path / "s", {"name": "s", "planned_trials": 4}, rows)).read_text()
    assert "4 failed" in page and "CUDA out of memory" in page
    assert "compute time" not in page


def test_banner_reads_the_status_that_study_status_reads(tmp_path):
    import json
    import os
    import socket
    import time

    folder = fx.noise_grid(tmp_path / "grid", keep=30)
    progress = {"state": "running", "running": ["t1", "t2"], "eta_s": 300.0, "heartbeat": time.time(),
                "pid": os.getpid(), "host": socket.gethostname(), "elapsed_s": 60.0}
    (folder / "progress.json").write_text(json.dumps(progress))
    page = build_report(folder).read_text()
    assert "Running: 30 of 60 planned trials have results, 2 running, ETA 5m00s" in page
    (folder / "progress.json").write_text(json.dumps(progress | {"heartbeat": time.time() - 3600}))
    page = build_report(folder).read_text()
    assert "Partial report: 30 of 60 planned trials have results. The study was interrupted" in page
    assert f"ptlab study resume {folder}" in page


def test_partial_study_is_marked_partial(tmp_path):
    page = build_report(fx.noise_grid(tmp_path / "grid", keep=30)).read_text()
    assert 'data-report-state="partial"' in page
    assert "Partial report: 30 of 60 planned trials have results" in page


def test_study_without_plan_or_results(tmp_path):
    folder = fx.write_study(tmp_path / "empty", {"name": "empty", "method": "coop", "planned_trials": 8}, [])
    page = build_report(folder).read_text()
    assert "no trial has finished yet" in page and 'data-report-state="partial"' in page
    rows = [fx.trial_row({"seed": s}, {"test_acc": 70.0 + s}) for s in (1, 2)]
    unplanned = fx.write_study(tmp_path / "unplanned", {"name": "unplanned", "method": "coop"}, rows)
    assert "completeness unknown" in build_report(unplanned).read_text()


def test_cli_builds_with_a_dashboard_override(tmp_path):
    folder = fx.lpt_study(tmp_path / "lpt")
    result = CliRunner().invoke(cli.app, [str(folder), "--dashboard", str(SHIPPED / "search.yaml")])
    assert result.exit_code == 0, result.output
    page = (folder / "report" / "index.html").read_text()
    assert str(folder / "report" / "index.html") in result.output
    assert "Hyperparameter search" in page and "no Optuna storage (optuna.db or journal.log)" in page


def test_cli_reports_a_bad_dashboard(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nfigures: []\n")
    result = CliRunner().invoke(cli.app, [str(fx.upl_study(tmp_path / "upl")), "--dashboard", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: invalid dashboard" in result.output and "field figures" in result.output


def test_cli_open_hands_the_file_to_the_browser(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(cli.webbrowser, "open", opened.append)
    folder = fx.upl_study(tmp_path / "upl")
    assert CliRunner().invoke(cli.app, [str(folder), "--open"]).exit_code == 0
    assert opened == [(folder / "report" / "index.html").resolve().as_uri()]


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the browser tests leave one screenshot per dashboard for review: $PTLAB_SCREENSHOTS, else the test's tmp folder."""
    folder = Path(os.environ.get("PTLAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Per plot div: traces it was given, and how many of them plotly drew (SVG trace groups, or GL scenes of 3D plots).
DRAWN = """[...document.querySelectorAll('.js-plotly-plot')].map(d => ({
    id: d.id, traces: d.data.length,
    drawn: d.querySelectorAll('g.trace, g.barlayer .point, g.hm image, .gl-container canvas').length}))"""


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
@pytest.mark.parametrize("board", sorted(p.stem for p in SHIPPED.glob("*.yaml")))
def test_shipped_dashboard_in_headless_chromium(board, tmp_path):
    """Each shipped dashboard on the fixture made for it: no console error, every declared figure drawn, none empty."""
    from playwright.sync_api import sync_playwright

    folder = fx.DASHBOARD_FIXTURES[board](tmp_path / board)
    page_path = build_report(folder, SHIPPED / f"{board}.yaml")
    declared = len(load_dashboard(SHIPPED / f"{board}.yaml").figures)
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_path.as_uri())
            # Plotly marks a div js-plotly-plot once it has drawn into it.
            page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot').length === {declared}", timeout=60_000
            )
            plots = page.evaluate(DRAWN)
            assert page.locator("#status").inner_text().startswith("Complete")
            assert page.locator("#not-applicable").count() == 0
            page.screenshot(path=str(screenshot_dir(tmp_path) / f"{board}.png"))
        finally:
            browser.close()
    assert problems == []
    assert len(plots) == declared
    empty = [p["id"] for p in plots if not p["traces"] or not p["drawn"]]
    assert empty == []


def test_a_tuned_cell_that_repeats_another_shows_its_selection_and_reruns(tmp_path):
    """Confusion noise at rate 0 was not searched: it has the clean cell's selection and re-runs, and its own row."""
    import json

    import polars as pl

    from ptlab.config import TrialConfig
    from ptlab.report.aggregate import load_study
    from ptlab.report.tuned import tuned_cells
    from ptlab.study.space import cell_id, cell_label

    factors = {"noise_type": ["symmetric", "confusion"], "noise_rate": [0.0, 0.5]}
    distinct = [{"noise_type": "symmetric", "noise_rate": 0.0}, {"noise_type": "symmetric", "noise_rate": 0.5},
                {"noise_type": "confusion", "noise_rate": 0.5}]
    lr = {0: 0.01, 1: 0.02, 2: 0.03}
    rows, chosen = [], {}
    for i, cell in enumerate(distinct):
        for seed in (1, 2):
            row = fx.trial_row({**cell, "train.lr": lr[i], "seed": seed}, {"test_acc": 70.0 + 5 * i + seed})
            rows.append(row | {"phase": "rerun", "cell_id": cell_id(TrialConfig().with_updates(cell))})
        chosen[cell_label(cell)] = {"cell": cell, "params": {"train.lr": lr[i]}, "trial": f"t{i}", "value": 60.0 + i,
                                    "samples": 4, "pruned": 1, "failed": 0}
    clean = cell_label(distinct[0])
    repeat = {"noise_type": "confusion", "noise_rate": 0.0}
    chosen[cell_label(repeat)] = {**chosen[clean], "cell": repeat, "same_as": clean}
    spec = {"name": "tuned", "method": "coop", "factors": factors, "seeds": [1, 2], "planned_trials": 18,
            "search": {"space": {"train.lr": {"log_uniform": [1e-4, 1e-1]}}, "samples": 4, "metric": "val_acc"}}
    folder = fx.write_study(tmp_path / "tuned", spec, rows)
    selection = {"selection": "val", "metric": "val_acc", "mode": "max", "cells": chosen}
    (folder / "selection.json").write_text(json.dumps(selection))
    cells = tuned_cells(load_study(folder), selection).sort("noise_type", "noise_rate")
    assert cells.height == 4
    at_zero = cells.filter(pl.col("noise_rate") == 0.0)
    assert at_zero["tuned test_acc"].to_list() == [71.5, 71.5] and at_zero["tuned seeds"].to_list() == [2, 2]
    assert at_zero["selected train.lr"].to_list() == [0.01, 0.01]
    assert "Tuned grid" in build_report(folder).read_text()
