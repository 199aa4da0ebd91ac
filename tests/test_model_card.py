"""The shipped tiny CLIPs must reproduce their model cards and meet the world's quality bar."""

import pytest

from ptlab.models.backbone import WORLD_ASSETS, WORLD_BACKBONES
from ptlab.world.card import read_card, zero_shot_table

# The card's bar for every shipped backbone (single template, test split).
QUALITY_BAR = {"colors": 95.0, "shapes": 60.0, "color-shapes": 40.0}


@pytest.fixture(scope="module", params=WORLD_BACKBONES)
def card(request):
    if not (WORLD_ASSETS / request.param / "model_card.json").is_file():
        pytest.fail(f"world:{request.param} ships without a model card; run `ptlab world pretrain --backbone {request.param}`")
    return request.param, read_card(request.param)


def test_card_records_the_run(card):
    name, data = card
    assert data["backbone"] == f"world:{name}"
    for key in ("config", "model_cfg", "wall_time_s", "zero_shot_test_acc", "weights_bytes"):
        assert key in data, key


def test_shipped_weights_reproduce_card(card, feature_cache):
    name, data = card
    recorded = data["zero_shot_test_acc"]
    measured = zero_shot_table(f"world:{name}", feature_cache, tasks=tuple(QUALITY_BAR), domains=("photo", "outline"))
    for key, value in measured.items():
        assert abs(value - recorded[key]) <= 1.0, (key, value, recorded[key])


# Shortfalls of the shipped weights, kept visible: strict, so meeting the bar later fails here until removed.
BELOW_BAR = {("tiny-vit", "shapes"): "2000 steps of the 4-layer ViT reach 42% zero-shot on shapes (see model card)"}


@pytest.mark.parametrize("task", sorted(QUALITY_BAR))
def test_quality_bar(card, task, request):
    name, data = card
    if (name, task) in BELOW_BAR:
        request.applymarker(pytest.mark.xfail(strict=True, reason=BELOW_BAR[(name, task)]))
    assert data["zero_shot_test_acc"][task] >= QUALITY_BAR[task], (name, task)
