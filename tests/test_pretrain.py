from dataclasses import replace

import pytest
import torch

from ptlab.models.backbone import WORLD_BACKBONES, load_backbone
from ptlab.world.pretrain import PretrainConfig, pretrain, save


@pytest.mark.parametrize("backbone", ["tiny-rn", "tiny-vit"])
def test_twenty_step_pretraining_is_deterministic_and_loadable(tmp_path, backbone):
    cfg = PretrainConfig(backbone=backbone, steps=20, batch_size=16, pool_size=300, threads=1)
    first, record = pretrain(cfg, log=lambda m: None)
    second, _ = pretrain(cfg, log=lambda m: None)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert record["final_loss"] < 6.0
    folder = save(first, backbone, record, tmp_path / backbone)
    loaded = load_backbone(f"local-dir:{folder}")
    shipped = loaded.model.state_dict()
    for name, value in first.state_dict().items():
        if name == "token_embedding.weight" or not value.is_floating_point():
            continue
        # weights ship in half precision: exactly the fp16 rounding of the trained ones
        assert torch.equal(shipped[name], value.half().float()), name


def test_training_moves_loss_down():
    cfg = PretrainConfig(backbone="tiny-rn", steps=40, batch_size=32, pool_size=500, threads=1)
    losses = []
    pretrain(cfg, log=losses.append)
    first = float(losses[1].split("loss")[1].split()[0])
    last = float(losses[-1].split("loss")[1].split()[0])
    assert last < first


def test_world_backbones_are_registered():
    assert set(WORLD_BACKBONES) == {"tiny-vit", "tiny-rn"}


def test_world_card_remeasures_and_keeps_the_training_record(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    import ptlab.card as card
    from ptlab.cli import app

    folder = tmp_path / "tiny-rn"
    folder.mkdir()
    record = {"config": {"steps": 20}, "wall_time_s": 1.5}
    card.write_card("tiny-rn", record, {"zero_shot_test_acc": {"shapes": 1.0}}, folder)
    measured = {
        "zero_shot_test_acc": {"shapes@pixel": 40.0},
        "prompt_tuning": {"shapes@pixel": {"zero_shot": 40.0, "coop_16_shot": {"1": 56.0}, "coop_mean": 56.0, "gain": 16.0}},
    }
    sources = []
    monkeypatch.setattr(card, "measure", lambda source, cache: sources.append(source) or measured)
    result = CliRunner().invoke(app, ["world", "card", "--backbone", "tiny-rn", "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    assert sources == [f"local-dir:{folder}"]
    assert "headroom (zero-shot <= 50, gain >= 15): shapes@pixel" in result.output
    written = json.loads((folder / "model_card.json").read_text())
    assert written["config"] == record["config"] and written["wall_time_s"] == 1.5
    assert written["zero_shot_test_acc"] == measured["zero_shot_test_acc"]
    assert written["prompt_tuning"] == measured["prompt_tuning"]

    missing = CliRunner().invoke(app, ["world", "card", "--dir", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere" in missing.output and "ptlab world pretrain" in missing.output


def test_lit_pretraining_locks_the_image_tower_and_resumes_identically(tmp_path):
    from dataclasses import replace

    from ptlab.world.pretrain import SHIPPED_RECIPES

    cfg = replace(SHIPPED_RECIPES["tiny-rn"], image_steps=12, steps=12, batch_size=16, pool_size=300)
    model, record = pretrain(cfg, log=lambda m: None, checkpoint_dir=tmp_path, checkpoint_every=5)
    stages = record["stages"]
    assert stages["image_tower"]["steps"] == 12 and stages["text_tower"]["steps"] == 12
    # The text stage must leave the image tower exactly as stage 1 finished it.
    stage_one = torch.load(tmp_path / "tiny-rn-image-tower.pt", weights_only=True)["visual"]
    for name, value in model.visual.state_dict().items():
        assert torch.equal(value, stage_one[name]), name
    assert not any(p.requires_grad for p in model.visual.parameters())
    # A rerun resumes stage 1 from its saved result and stage 2 from step 10: bit-identical.
    logs = []
    again, _ = pretrain(cfg, log=logs.append, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert any("image tower from" in m for m in logs) and any("at step 10" in m for m in logs)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_lit_captions_grade_how_often_a_class_name_is_used():
    import numpy as np

    from ptlab.world.captions import CAPTION_SCHEMES, PARAPHRASES, caption
    from ptlab.world.pretrain import pool_attributes
    from ptlab.world.render import SHAPES

    pool = pool_attributes(PretrainConfig(pool_size=4000, seed=3))
    rng = np.random.default_rng(0)
    by_name = np.zeros(len(SHAPES))
    mentions = np.zeros(len(SHAPES))
    for i in range(len(pool)):
        text, claims = caption(pool, i, rng, CAPTION_SCHEMES["lit"])
        if claims[0] < 0:
            continue
        name = SHAPES[claims[0]]
        words = [name, *PARAPHRASES["shape"][name]]
        assert any(w in text for w in words), (text, name)
        mentions[claims[0]] += 1
        by_name[claims[0]] += name in text
    rate = by_name / mentions
    assert 0.2 < rate[SHAPES.index("circle")] < 0.4 and rate[SHAPES.index("moon")] == 0


def test_world_pretrain_cli_runs_the_chosen_recipe(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ptlab import cli
    from ptlab.world import pretrain as pretrain_module

    class Stop(Exception):
        pass

    seen = []

    def pretrain_spy(cfg, log, checkpoint_dir):
        seen.append((cfg, checkpoint_dir))
        raise Stop

    monkeypatch.setattr(pretrain_module, "pretrain", pretrain_spy)
    run = CliRunner().invoke(cli.app, ["world", "pretrain", "--steps", "7", "--out", str(tmp_path),
                                       "--checkpoint-dir", str(tmp_path / "state")])
    assert isinstance(run.exception, Stop), run.output
    # the shipped weights' recipe by default: LiT, an image stage before the caption steps
    assert seen[-1] == (replace(pretrain_module.SHIPPED_RECIPES["tiny-rn"], steps=7), tmp_path / "state")
    assert seen[-1][0].image_steps > 0 and seen[-1][0].captions == "lit"
    run = CliRunner().invoke(cli.app, ["world", "pretrain", "--recipe", "joint", "--backbone", "tiny-vit"])
    assert isinstance(run.exception, Stop), run.output
    assert seen[-1] == (pretrain_module.JOINT_RECIPES["tiny-vit"], None) and seen[-1][0].image_steps == 0
    unknown = CliRunner().invoke(cli.app, ["world", "pretrain", "--recipe", "liT"])
    assert unknown.exit_code == 2 and "expected one of shipped, joint" in unknown.output
