from dataclasses import replace

import pytest
import torch

from ptlab.models.backbone import (
    BACKBONE_SCHEMES,
    CLIP_MEAN,
    CLIP_PREPROCESSING,
    CLIP_STD,
    BackboneError,
    Preprocessing,
    backbone_problem,
    clip_text_problem,
    describe_backbone,
    load_backbone,
    parse_backbone,
    register_backbone,
)
from ptlab.study.spec import StudyError, load_study


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


# --- one registry: parsing, validation and loading share it ---------------------------------


@pytest.mark.parametrize(("source", "scheme", "name", "weights"), [
    ("world:tiny-rn", "world", "tiny-rn", ""),
    ("ViT-B-32:openai", "open_clip", "ViT-B-32", "openai"),
    ("RN50:random", "open_clip", "RN50", "random"),
    ("RN50:/weights/rn50.pt", "open_clip", "RN50", "/weights/rn50.pt"),
    ("local-dir:/models/clip", "local-dir", "/models/clip", ""),
    ("ckpt:/runs/model.pt", "ckpt", "/runs/model.pt", ""),
    ("timm:vit_base_patch16_224.augreg_in21k", "timm", "vit_base_patch16_224.augreg_in21k", ""),
    ("timm:vit_tiny_patch16_224:random", "timm", "vit_tiny_patch16_224", "random"),
])
def test_each_scheme_parses_its_sources(source, scheme, name, weights):
    src = parse_backbone(source)
    assert (src.scheme, src.name, src.weights) == (scheme, name, weights)
    assert (src.weights_file is not None) == weights.startswith("/")


def test_every_scheme_is_registered_once_with_its_parts():
    assert set(BACKBONE_SCHEMES) == {"world", "open_clip", "local-dir", "ckpt", "timm"}
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(BACKBONE_SCHEMES["world"])


@pytest.mark.parametrize("source", ["wrld:tiny-rn", "tiny-rn", "world:huge", "RN50:not-a-tag", "RN50:/no/such.pt",
                                    "timm:vit_nonexistent_model", "local-dir:/no/such/folder", "ckpt:/no/such.pt"])
def test_validation_and_loading_refuse_a_source_with_one_message(source, tmp_path):
    problem = backbone_problem(source, files=True)
    assert problem and source in problem
    with pytest.raises(BackboneError) as err:
        load_backbone(source)
    assert str(err.value) == problem
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\nmethod: zeroshot\nbackbone: '{source}'\ndataset: world:shapes\nrunner: inline\n")
    with pytest.raises(StudyError) as caught:
        load_study(study)
    assert f"{study}:3: field backbone: {problem}" in str(caught.value).splitlines()


# --- tokenizer and preprocessing are open_clip's for the model ---------------------------------


def test_random_clip_model_gets_clips_tokenizer_and_preprocessing_as_open_clip_attaches_them(rn50):
    from open_clip.tokenizer import SimpleTokenizer

    assert rn50.kind == "clip" and type(rn50.tokenizer) is SimpleTokenizer
    assert (rn50.mean, rn50.std, rn50.interpolation, rn50.resize_mode) == (CLIP_MEAN, CLIP_STD, "bicubic", "shortest")
    attached = rn50.model.visual.preprocess_cfg  # what open_clip.create_model set on the model it built
    assert (tuple(attached["mean"]), tuple(attached["std"])) == (rn50.mean, rn50.std)
    assert (attached["interpolation"], attached["resize_mode"]) == (rn50.interpolation, rn50.resize_mode)


def test_world_backbones_keep_clips_tokenizer_and_preprocessing():
    from open_clip.tokenizer import SimpleTokenizer

    bb = load_backbone("world:tiny-rn")
    assert type(bb.tokenizer) is SimpleTokenizer and bb.tokenizer.context_length == bb.context_length == 32
    assert bb.preprocessing == CLIP_PREPROCESSING


@pytest.mark.parametrize(("source", "mean", "std", "interpolation", "resize_mode", "kind"), [
    ("ViT-B-32:openai", CLIP_MEAN, CLIP_STD, "bicubic", "shortest", "clip"),
    ("ViT-L-14:laion2b_s32b_b82k", (0.5,) * 3, (0.5,) * 3, "bicubic", "shortest", "clip"),  # Inception's
    ("ViT-H-14:dfn5b", CLIP_MEAN, CLIP_STD, "bicubic", "squash", "clip"),
    ("ViT-L-14-CLIPA:datacomp1b", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", "squash", "image"),
    ("ViT-B-16-SigLIP:webli", (0.5,) * 3, (0.5,) * 3, "bicubic", "squash", "image"),
    ("ViT-L-14:random", CLIP_MEAN, CLIP_STD, "bicubic", "shortest", "clip"),  # no tag: open_clip's defaults
])
def test_a_pretrained_tag_brings_its_own_preprocessing(source, mean, std, interpolation, resize_mode, kind):
    """Resolved from open_clip's model and pretrained configs, without weights (none can be downloaded here)."""
    info = describe_backbone(source)
    assert info.preprocessing == Preprocessing(mean, std, interpolation, resize_mode)
    assert info.kind == kind and (info.text_problem is None) == (kind == "clip")


def test_squashing_bilinear_preprocessing_reaches_the_transforms_and_the_feature_cache(random_tiny_clip, tmp_path):
    from torchvision.transforms import v2 as T

    from ptlab.data.features import FeatureCache, eval_transform, train_transform
    from ptlab.data.sources import load_dataset

    clip = load_backbone(random_tiny_clip)
    other = replace(clip, preprocessing=Preprocessing((0.5,) * 3, (0.5,) * 3, "bilinear", "squash"))
    resize = eval_transform(other).transforms[1]
    assert resize.size == [clip.image_size, clip.image_size] and resize.interpolation == T.InterpolationMode.BILINEAR
    assert eval_transform(clip).transforms[1].size == [clip.image_size]  # shorter side, aspect kept
    assert train_transform(other, (0.5, 1.0)).transforms[1].interpolation == T.InterpolationMode.BILINEAR
    assert eval_transform(other).transforms[-1].mean == [0.5] * 3
    split = load_dataset("world:shapes").split("test")
    squash_only = replace(clip, preprocessing=replace(CLIP_PREPROCESSING, resize_mode="squash"))
    paths = {FeatureCache(tmp_path, bb).path(split, view) for bb in (clip, other, squash_only) for view in (0, 1)}
    assert len(paths) == 6


def _local_dir_with_text_cfg(folder, source_folder, **text_cfg):
    """A copy of a local-dir CLIP whose config names other text options (open_clip builds the same CLIP class)."""
    import json
    import shutil

    shutil.copytree(source_folder, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"].update(text_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{folder}"


def test_a_backbone_with_another_tokenizer_loads_for_images_but_refuses_to_tokenise(random_tiny_clip, tmp_path):
    source = _local_dir_with_text_cfg(tmp_path / "hf-tok", random_tiny_clip.removeprefix("local-dir:"),
                                      hf_tokenizer_name="someone/their-tokenizer")
    info = describe_backbone(source)
    assert info.kind == "image" and "Hugging Face tokenizer 'someone/their-tokenizer'" in info.text_problem
    bb = load_backbone(source)  # no tokenizer is fetched: the images need none
    assert bb.kind == "image" and bb.model.encode_image(torch.zeros(1, 3, 32, 32)).shape[0] == 1
    with pytest.raises(BackboneError, match="someone/their-tokenizer.*methods that encode text need CLIP's tokenizer"):
        bb.tokenize(["a photo of a circle."])


@pytest.mark.parametrize(("text_cfg", "words"), [
    ({"pool_type": "last"}, "not pooled at the EOT"),
    ({"no_causal_mask": True}, "not pooled at the EOT"),
    ({"hf_model_name": "bert-base-uncased"}, "Hugging Face model 'bert-base-uncased'"),
])
def test_text_towers_other_than_clips_are_image_only(text_cfg, words):
    problem = clip_text_problem({"text_cfg": text_cfg}, "X:y")
    assert words in problem and "not CLIP's token layout" in problem
    assert clip_text_problem({"text_cfg": {}}, "X:y", "ViT-B-16-SigLIP").startswith("backbone 'X:y': open_clip tokenises SigLIP")
    assert clip_text_problem({"text_cfg": {"context_length": 77}}, "RN50:openai", "RN50") is None


def test_methods_that_encode_text_refuse_image_only_backbones_and_name_those_that_take_them():
    from ptlab.study.guards import backbone_method_problem

    problem = backbone_method_problem("coop", "timm:vit_tiny_patch16_224")
    assert "timm image encoder" in problem and "zeroshot" in problem and "(vpt, lpt)" in problem
    assert backbone_method_problem("vpt", "timm:vit_tiny_patch16_224") is None
    assert backbone_method_problem("lpt", "ViT-B-16-SigLIP:webli") is None
    assert backbone_method_problem("zeroshot", "ViT-L-14:laion2b_s32b_b82k") is None
    assert backbone_method_problem("coop", "world:tiny-rn") is None
