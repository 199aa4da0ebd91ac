from pathlib import Path

import pytest

from ptlab.methods import METHODS
from ptlab.study.spec import load_study

STUDIES = sorted((Path(__file__).resolve().parent.parent / "studies").glob("ptnl_*.yaml"))


def test_every_world_study_has_its_real_data_twin():
    names = {p.stem for p in STUDIES}
    worlds = {n.removesuffix("_world") for n in names if n.endswith("_world")}
    assert len(worlds) == 6
    assert {n.removesuffix("_real") for n in names if n.endswith("_real")} == worlds


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_ptnl_studies_validate(path):
    spec = load_study(path)
    for trial in spec.trials():
        assert trial.config.method in METHODS
