"""Shipped dashboards load and render on study fixtures; a broken dashboard names its file, line and field."""

from pathlib import Path

import pytest
import report_fixtures as fx

from ptlab.report.aggregate import cell_summary, load_study
from ptlab.report.dashboard import SHIPPED, DashboardError, choose_dashboard, load_dashboard
from ptlab.report.figures import render

FIXTURES = fx.DASHBOARD_FIXTURES
SHIPPED_NAMES = sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def rendered(board_name: str, folder: Path):
    study = load_study(folder)
    cells = cell_summary(study.rows, study.keys, study.metrics)
    return [render(spec, study, cells) for spec in load_dashboard(SHIPPED / f"{board_name}.yaml").figures]


def trace_names(figure) -> set[str]:
    return {t.name for t in figure.data if t.name}


def test_every_study_kind_has_a_dashboard():
    assert set(FIXTURES) <= set(SHIPPED_NAMES)


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_dashboard_renders_every_figure_on_its_fixture(name, tmp_path):
    items = rendered(name, FIXTURES[name](tmp_path / name))
    assert items
    for item in items:
        assert item.figure is not None, f"{name}.yaml, {item.title}: {item.note}"
        assert item.figure.data, f"{name}.yaml, {item.title}: no traces"


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_dashboard_on_a_foreign_study_explains_what_is_missing(name, tmp_path):
    folder = fx.upl_study(tmp_path / "upl") if name != "upl" else fx.noise_grid(tmp_path / "grid")
    for item in rendered(name, folder):
        assert item.figure is not None or item.note


def test_method_dashboards_draw_their_method_columns(tmp_path):
    ueo = rendered("ueo", fx.ueo_study(tmp_path / "ueo"))
    assert any("auroc" in trace_names(i.figure) for i in ueo)
    lpt = rendered("lpt", fx.lpt_study(tmp_path / "lpt"))
    assert {"many_acc", "medium_acc", "few_acc"} <= trace_names(lpt[0].figure)
    upl_folder = fx.upl_study(tmp_path / "upl")
    upl = rendered("upl", upl_folder)
    xs = sorted(x for trace in upl[0].figure.data for x in trace.x)
    assert xs == sorted(load_study(upl_folder).trials["pseudo_label_acc"].to_list())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "board.yaml"
    path.write_text(text)
    return path


def test_unknown_figure_kind_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "title: t\nfigures:\n  - kind: curve\n  - kind: pie\n")
    with pytest.raises(DashboardError) as err:
        load_dashboard(path)
    message = str(err.value)
    assert str(path) in message and "line 4, field figures[1]" in message and "'curve'" in message


def test_misspelt_field_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "title: t\nfigures:\n  - kind: curve\n    colour: loss\n")
    with pytest.raises(DashboardError, match=r"line 4, field figures\[0\]\.curve\.colour: Extra inputs"):
        load_dashboard(path)


def test_missing_title_and_bad_yaml(tmp_path):
    with pytest.raises(DashboardError, match=r"line 1, field title: Field required"):
        load_dashboard(write(tmp_path, "figures:\n  - kind: curve\n"))
    with pytest.raises(DashboardError, match="not valid YAML"):
        load_dashboard(write(tmp_path, "title: [unclosed\n"))
    with pytest.raises(DashboardError, match="no such dashboard file"):
        load_dashboard(tmp_path / "absent.yaml")


def test_choice_of_dashboard(tmp_path, monkeypatch):
    spec_path = tmp_path / "study.yaml"
    own = write(tmp_path, "title: own\nfigures: [{kind: curve}]\n")
    monkeypatch.chdir(tmp_path)
    assert choose_dashboard({"report": "board.yaml"}, spec_path) == tmp_path / "board.yaml"
    assert choose_dashboard({"report": "dashboards/lpt.yaml"}, spec_path) == SHIPPED / "lpt.yaml"
    assert choose_dashboard({"report": "board.yaml"}, spec_path, SHIPPED / "search.yaml") == SHIPPED / "search.yaml"
    assert choose_dashboard({"method": "ueo"}, spec_path) == SHIPPED / "ueo.yaml"
    assert choose_dashboard({"method": "coop", "search": {"samples": 4}}, spec_path) == SHIPPED / "search.yaml"
    assert choose_dashboard({"method": "coop"}, spec_path) == SHIPPED / "robustness.yaml"
    assert own.is_file()
    with pytest.raises(DashboardError, match=r"study.yaml: field report: dashboard nope.yaml not found"):
        choose_dashboard({"report": "nope.yaml"}, spec_path)
