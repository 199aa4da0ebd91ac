import pytest
import torch

from ptlab.models.backbone import BackboneError, load_backbone


@pytest.fixture(scope="module")
def rn50():
    return load_backbone("RN50:random")


@pytest.fixture(scope="module")
def vitb32():
    return load_backbone("ViT-B-32:random")


def test_unknown_model_lists_close_matches():
    with pytest.raises(BackboneError, match="ViT-B-32"):
        load_backbone("ViT-B-23:openai")


def test_missing_scheme_explains_sources():
    with pytest.raises(BackboneError, match="world:NAME"):
        load_backbone("RN50")


def test_unknown_tag_lists_tags():
    with pytest.raises(BackboneError, match="openai"):
        load_backbone("RN50:not-a-tag")


def test_offline_weights_message_names_model_place_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PTLAB_CLIP_CACHE", str(tmp_path))
    monkeypatch.setenv("PTLAB_OFFLINE", "1")
    with pytest.raises(BackboneError) as err:
        load_backbone("ViT-B-32:openai")
    text = str(err.value)
    assert "ViT-B-32:openai" in text and str(tmp_path) in text and "PTLAB_CLIP_CACHE" in text


def test_corrupt_checkpoint_names_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="broken.pt"):
        load_backbone(f"ckpt:{bad}")
    with pytest.raises(BackboneError, match="broken.pt"):
        load_backbone(f"RN50:{bad}")


def test_missing_local_dir_and_unknown_world(tmp_path):
    with pytest.raises(BackboneError, match="open_clip_config.json"):
        load_backbone(f"local-dir:{tmp_path}")
    with pytest.raises(BackboneError, match="world:tiny-vit"):
        load_backbone("world:huge")


def test_ckpt_roundtrip(tmp_path, random_tiny_clip):
    bb = load_backbone(random_tiny_clip)
    path = tmp_path / "model.pt"
    torch.save({"model_cfg": bb.model_cfg, "state_dict": bb.model.state_dict()}, path)
    again = load_backbone(f"ckpt:{path}")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(bb.model.encode_image(x), again.model.encode_image(x))
    assert not any(p.requires_grad for p in again.model.parameters())


@pytest.mark.parametrize("name", ["rn50", "vitb32"])
def test_zero_shot_on_random_open_clip_models(name, request):
    from ptlab.models.text import class_text_features

    bb = request.getfixturevalue(name)
    text = class_text_features(bb, ["cat", "dog", "sailing boat"], ["a photo of a {}."])
    images = torch.randn(4, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(bb.model.encode_image(images), dim=-1)
    pred = (feats @ text.T).argmax(-1)
    assert pred.shape == (4,) and text.shape == (3, bb.model_cfg["embed_dim"])
