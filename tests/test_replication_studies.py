"""The real-data replication studies: they validate, say what they replicate, and use the released semantics."""

from pathlib import Path

import pytest

from ptlab.study.spec import load_study

FOLDER = Path(__file__).resolve().parent.parent / "studies"
REAL = sorted(FOLDER.glob("*_real.yaml")) + [FOLDER / "ueo_officehome.yaml", FOLDER / "lpt_places_lt.yaml"]
PTNL = [p for p in REAL if p.stem.startswith(("ptnl_", "noise_grid", "context_length"))]


@pytest.fixture(autouse=True)
def office_home_on_this_machine(tmp_path, monkeypatch):
    """Validation refuses a folder: dataset that is not there, so give the Office-Home study its four domain folders."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for domain in ("Art", "Clipart", "Product", "Real World"):
        (tmp_path / "data" / "OfficeHome" / domain).mkdir(parents=True)


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_real_studies_validate_and_name_what_they_replicate(path):
    spec = load_study(path)
    assert spec.trials()
    header = path.read_text().split("\nname:")[0]
    assert header.startswith("# Replicates:") and "Published" in header and "differently" in header


@pytest.mark.parametrize("path", PTNL, ids=lambda p: p.stem)
def test_ptnl_replications_use_the_released_noise_and_gce_q(path):
    for trial in load_study(path).trials():
        cfg = trial.config
        if cfg.noise_rate > 0 or cfg.noise_type != "none":
            # confusion noise has no released code; every other noisy trial uses the release's mechanism
            assert cfg.noise_type in ("ptnl", "confusion"), path.stem
        if cfg.loss == "gce":
            assert cfg.gce_q == 0.5, path.stem  # PTNL's released trainer hard-codes q = 0.5


def test_ueo_office_home_uses_the_released_transductive_protocol():
    trials = load_study(FOLDER / "ueo_officehome.yaml").trials()
    assert {t.config.method_options.get("protocol") for t in trials} == {"transductive"}
    assert not any(t.config.method_options.get("include_downsample_bn") for t in trials)
