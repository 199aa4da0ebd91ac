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
