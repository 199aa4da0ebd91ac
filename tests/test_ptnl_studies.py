from pathlib import Path

import pytest

from ptlab.methods import METHODS
from ptlab.study.spec import load_study

FOLDER = Path(__file__).resolve().parent.parent / "studies"
STUDIES = sorted(FOLDER.glob("ptnl_*.yaml")) + [FOLDER / "context_length_real.yaml"]


def test_every_world_study_has_its_real_data_twin():
    names = {p.stem for p in STUDIES}
    worlds = {n.removesuffix("_world") for n in names if n.endswith("_world")}
    assert worlds == {"ptnl_baselines", "ptnl_prompt_design", "ptnl_grad_ratio", "ptnl_upl"}
    assert {n.removesuffix("_real") for n in names if n.endswith("_real")} == worlds | {"context_length"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_ptnl_studies_validate(path):
    spec = load_study(path)
    for trial in spec.trials():
        assert trial.config.method in METHODS
