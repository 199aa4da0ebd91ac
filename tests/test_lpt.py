"""Deep visual prompts, LPT's prompt pool and A-GCL loss, and the lpt / vpt recipes end to end."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
from torchvision.transforms import InterpolationMode

from ptlab.config import TrialConfig
from ptlab.losses import agcl_loss
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.lpt import PixelFeed, stage1_key
from ptlab.methods.registry import PromptOptions
from ptlab.models.backbone import BackboneError, load_backbone
from ptlab.models.vpt import PromptedViT, PromptPool, TimmTower, load_vision_tower

TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A random 3-block ViT CLIP (width 32, 16 patches) as a ptlab checkpoint: fast enough to train in a test."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-vit") / "vit.pt"
    torch.save({"model_cfg": TINY_VIT, "state_dict": open_clip.CLIP(**TINY_VIT).state_dict()}, path)
    return f"ckpt:{path}"


def _block_widths(tower) -> list[int]:
    """Sequence length each block sees in the next forward."""
    seen: list[int] = []
    for block in tower.blocks:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    return seen


def test_zero_length_prompts_reproduce_the_frozen_features_exactly(tiny_vit):
    tower = load_vision_tower(tiny_vit)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    frozen = load_backbone(tiny_vit).model.encode_image(pixels)
    empty = [torch.zeros(3, 0, tower.width)] * tower.depth
    assert torch.equal(tower(pixels, empty), frozen)
    assert torch.equal(tower(pixels), frozen)


def test_prompt_tokens_are_appended_before_and_dropped_after_every_block(tiny_vit):
    tower = load_vision_tower(tiny_vit)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    prompts = [torch.randn(2, 5, tower.width, requires_grad=True) for _ in range(tower.depth)]
    widths = _block_widths(tower)
    features = tower(pixels, prompts)
    assert widths == [16 + 1 + 5] * 3  # 16 patches + class token + 5 prompts at every block
    assert features.shape == (2, tower.feature_dim)
    assert not torch.allclose(features, tower(pixels))
    features.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)


def test_the_pool_adds_averaged_group_prompts_in_the_last_blocks_only(tiny_vit):
    tower = load_vision_tower(tiny_vit)
    model = PromptedViT(tower, 4, 2, torch.Generator().manual_seed(0), pool_size=3, top_k=2, split_block=1)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    widths = _block_widths(tower)
    cosine, key_loss = model(pixels, use_pool=True)
    # block 0 once with 2 shared prompts; blocks 1-2 for the query (shared), then with 2 shared + 2 group
    assert widths == [19] + [19, 19] + [21, 21]
    assert cosine.shape == (2, 4) and float(cosine.detach().abs().max()) <= 1 + 1e-6
    # the same as the two passes written out: query = the stage-1 feature, then group prompts in blocks >= K
    with torch.no_grad():
        shared = [p.expand(2, -1, -1) for p in model.shared]
        group, expected_key_loss, _ = model.pool.select(tower(pixels, shared))
        prompts = shared[:1] + [torch.cat([shared[i], group[:, i - 1]], dim=1) for i in (1, 2)]
        # close, not equal: attention takes another kernel when nothing needs a gradient
        torch.testing.assert_close(cosine.detach(), model.classifier(tower(pixels, prompts)))
    torch.testing.assert_close(key_loss.detach(), expected_key_loss)


def test_top_k_selection_averages_the_chosen_prompts_and_scores_their_keys():
    pool = PromptPool(3, blocks=1, length=1, width=1, key_dim=3, top_k=2, generator=torch.Generator())
    with torch.no_grad():
        pool.keys.copy_(torch.eye(3) * torch.tensor([[2.0], [1.0], [3.0]]))  # scale must not matter
        pool.prompts.copy_(torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1))
    query = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.1, 1.0]])
    prompts, key_loss, chosen = pool.select(query)
    assert chosen.tolist() == [[0, 1], [2, 1]]
    assert prompts.flatten().tolist() == [5.0, 15.0]
    cos = [1 / math.sqrt(1.25), 0.5 / math.sqrt(1.25), 1 / math.sqrt(1.01), 0.1 / math.sqrt(1.01)]
    assert float(key_loss.detach()) == pytest.approx(1 - sum(cos) / 4, abs=1e-6)
    key_loss.backward()
    assert pool.keys.grad.abs().sum() > 0


def test_resnet_backbones_are_refused_with_a_clear_error(random_tiny_clip):
    with pytest.raises(BackboneError, match="ModifiedResNet image encoder; deep visual prompts need a ViT"):
        load_vision_tower(random_tiny_clip)


def test_timm_vit_adapter_reproduces_timm_features_and_takes_prompts():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    tower = TimmTower(vit, "timm:test").requires_grad_(False)
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(tower(pixels, [torch.zeros(2, 0, 32)] * 2), vit(pixels))
    widths = _block_widths(tower)
    assert tower(pixels, [torch.ones(2, 4, 32)] * 2).shape == (2, 32)
    assert widths == [17 + 4] * 2


def test_timm_sources_load_random_weights_and_name_unknown_models():
    tower = load_vision_tower("timm:vit_tiny_patch16_224:random")
    assert (tower.depth, tower.width, tower.image_size) == (12, 192, 224)
    with pytest.raises(BackboneError, match="timm has no model"):
        load_vision_tower("timm:vit_nonexistent_model")
    with pytest.raises(BackboneError, match="no pretrained weights 'vit_tiny_patch16_224.bogus'; tagged weights: vit_tiny"):
        load_vision_tower("timm:vit_tiny_patch16_224.bogus")


def test_studies_accept_timm_backbones_by_name_alone():
    from ptlab.study.spec import backbone_problem

    assert backbone_problem("timm:vit_base_patch16_224.augreg_in21k") is None
    assert "timm has no model" in backbone_problem("timm:vit_nonexistent_model")


def test_agcl_matches_a_hand_computed_batch():
    cosine = torch.tensor([[0.5, 0.2, -0.1], [0.0, 0.3, 0.1]])
    noise = torch.tensor([[0.3, -0.6, 1.0], [-0.2, 0.9, -0.3]])
    counts = torch.tensor([100.0, 10.0, 1.0])
    # m = [0, ln 10, ln 100] -> m / max m = [0, 0.5, 1]; clouded cosines minus 0.5 |noise| m / max m:
    #   [0.5, 0.2 - 0.15, -0.1 - 0.5] and [0, 0.3 - 0.225, 0.1 - 0.15]; targets 0 and 2 lose the margin 0.1;
    #   times s = 20: z = [8, 1, -12] and [0, 1.5, -3].
    z = torch.tensor([[8.0, 1.0, -12.0], [0.0, 1.5, -3.0]])
    log_p = z - z.exp().sum(1, keepdim=True).log()
    p = log_p.exp()
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    weight = onehot * 1.0 + (1 - onehot) * p**4  # gamma+ = 0, gamma- = 4
    q = 0.9 * onehot + 0.1 / 3
    expected = -(q * weight * log_p).sum(1)
    got = agcl_loss(cosine, torch.tensor([0, 2]), counts, noise=noise, reduction="none")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, torch.tensor([8.50704e-4, 4.399508]), rtol=1e-4, atol=1e-7)


def test_agcl_without_cloud_margin_focusing_or_smoothing_is_scaled_cross_entropy():
    cosine = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    targets = torch.tensor([0, 1, 2, 3, 0])
    plain = agcl_loss(cosine, targets, torch.tensor([50, 20, 5, 1]), noise_mul=0.0, margin=0.0, gamma_neg=0.0,
                      smoothing=0.0, scale=7.0)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(7.0 * cosine, targets))


def test_agcl_gradient_stays_finite_for_a_confident_target():
    cosine = torch.tensor([[1.0, -1.0, -1.0]], requires_grad=True)
    loss = agcl_loss(cosine, torch.tensor([0]), torch.tensor([5, 5, 5]), noise=torch.zeros(1, 3), gamma_pos=0.5,
                     gamma_neg=8.0, scale=40.0)
    loss.backward()
    assert torch.isfinite(cosine.grad).all()


def _config(tiny_vit, method, **options) -> TrialConfig:
    return TrialConfig(
        method=method, backbone=tiny_vit, dataset="lt:world:shapes", shots=0, data={"imbalance": 10},
        train={"epochs": 1, "batch_size": 64, "lr": 0.05, "warmup_epochs": 0}, method_options=options,
    )


def test_stage1_key_ignores_stage2_settings_only(tiny_vit):
    cfg = _config(tiny_vit, "lpt")
    key = stage1_key(cfg, cfg.options)
    for same in ({"pool_size": 5}, {"top_k": 1}, {"sampling": "instance"}, {"eta": 0.1}, {"workers": 2}):
        other = cfg.with_updates({"method_options": same})
        assert stage1_key(other, other.options) == key
    for different in ({"prompt_len": 3}, {"agcl": False}, {"stage1_epochs": 3}):
        other = cfg.with_updates({"method_options": different})
        assert stage1_key(other, other.options) != key
    other = cfg.with_updates({"train.epochs": 4})  # stage 1 runs train.epochs unless stage1_epochs is set
    assert stage1_key(other, other.options) != key
    pinned = cfg.with_updates({"method_options": {"stage1_epochs": 1}})
    assert stage1_key(pinned.with_updates({"train.epochs": 4}), pinned.options) == stage1_key(pinned, pinned.options)


def test_vpt_and_lpt_train_report_shot_groups_and_share_stage1(tiny_vit, tmp_path):
    ctx = TrialContext(cache_dir=tmp_path)
    vpt = run_trial(_config(tiny_vit, "vpt", prompt_len=2, sampling="dual"), ctx)
    assert vpt.status in ("completed", "flagged_collapse")
    counts = np.array(vpt.details["train_class_counts"])
    assert counts[0] == 64 and counts[-1] == 6  # lt:world:shapes at imbalance 10
    assert (vpt.metrics["medium_classes"], vpt.metrics["few_classes"]) == (5.0, 5.0)
    assert math.isnan(vpt.metrics["many_acc"]) and 0 <= vpt.metrics["few_acc"] <= 100

    first = run_trial(_config(tiny_vit, "lpt", prompt_len=2, pool_size=4), ctx)
    second = run_trial(_config(tiny_vit, "lpt", prompt_len=2, pool_size=4, top_k=1, sampling="class_balanced"), ctx)
    assert not first.details["stage1_reused"] and second.details["stage1_reused"]
    assert first.metrics["stage1_test_acc"] == second.metrics["stage1_test_acc"]
    assert [c["stage"] for c in second.curves] == [1, 2] and [c["epoch"] for c in second.curves] == [1, 2]
    assert "key_loss" in second.curves[-1] and math.isfinite(second.metrics["test_acc"])


def test_bad_options_and_confusion_noise_are_refused(tiny_vit, tmp_path):
    with pytest.raises(ValueError, match="method vpt takes: .*prompt_len"):
        run_trial(_config(tiny_vit, "vpt", pool_size=3), TrialContext(cache_dir=tmp_path))
    noisy = _config(tiny_vit, "vpt").with_updates({"noise_type": "confusion", "noise_rate": 0.25})
    with pytest.raises(ValueError, match="confusion noise"):
        run_trial(noisy, TrialContext(cache_dir=tmp_path))


def test_lpt_resumed_in_stage2_ends_as_the_uninterrupted_run(tiny_vit, tmp_path):
    cfg = _config(tiny_vit, "lpt", prompt_len=2, pool_size=4, stage1_epochs=1, reuse_stage1=False)
    cfg = cfg.with_updates({"train.epochs": 2})
    saved: dict[int, dict] = {}
    whole = run_trial(cfg, TrialContext(cache_dir=tmp_path, save_checkpoint=lambda e, s: saved.__setitem__(e, s)))
    assert sorted(saved) == [1, 2, 3] and saved[2]["stage"] == 2
    resumed = run_trial(cfg, TrialContext(cache_dir=tmp_path, resume_state=saved[2]))
    assert resumed.curves == whole.curves
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]
    assert resumed.metrics["stage1_test_acc"] == whole.metrics["stage1_test_acc"]


class _Tower224:
    """What the pixel feed reads of a tower: LPT's 224 input, its 0.5 / 0.5 normalisation, CLIP's resampling."""

    image_size, mean, std = 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    interpolation, resize_mode = "bicubic", "shortest"


def _reference_release_eval(image):
    """LPT's evaluation view, written out with PIL: 256 x 256 bilinear (aspect not kept), centre 224."""
    from PIL import Image

    square = image.resize((256, 256), Image.BILINEAR)
    array = np.asarray(square.crop((16, 16, 240, 240)), dtype=np.float32) / 255
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


def test_release_transforms_resize_256_square_and_crop_224_bilinear():
    from PIL import Image

    rng = np.random.default_rng(0)
    # a smooth 300 x 200 image: bilinear resampling differs from bicubic by far more than PIL from tensors
    ramp = np.linspace(0, 1, 300)[None, :, None] * np.linspace(0, 1, 200)[:, None, None]
    pixels = (255 * np.clip(ramp * rng.uniform(0.5, 1.0, (1, 1, 3)) + rng.normal(0, 0.08, (200, 300, 3)), 0, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    release = PixelFeed(_Tower224(), (0.08, 1.0), PromptOptions(), torch.device("cpu"))
    clip = PixelFeed(_Tower224(), (0.08, 1.0), PromptOptions(transforms="clip"), torch.device("cpu"))
    reference = _reference_release_eval(image)
    out = release.eval_tf(image)
    assert out.shape == (3, 224, 224)
    assert (out - reference).abs().mean() < 0.01  # PIL and tensor bilinear agree to rounding
    # ptlab's CLIP view keeps the aspect ratio (shorter side 224): another crop of the image altogether
    assert (clip.eval_tf(image) - reference).abs().mean() > 0.05
    train = release.train_tf.transforms[1]
    assert train.interpolation == InterpolationMode.BILINEAR and train.size == (224, 224)
    assert clip.train_tf.transforms[1].interpolation == InterpolationMode.BICUBIC


def test_feature_dropout_drops_a_tenth_of_the_feature_in_training_only(tiny_vit):
    tower = load_vision_tower(tiny_vit)
    model = PromptedViT(tower, 4, 2, torch.Generator().manual_seed(0), feature_dropout=0.1)
    features = torch.ones(64, 500)
    model.train()
    dropped = model.dropout(features, torch.Generator().manual_seed(1))
    zero = (dropped == 0).float().mean()
    assert 0.09 < float(zero) < 0.11
    assert torch.allclose(dropped[dropped != 0], torch.full_like(dropped[dropped != 0], 1 / 0.9))
    again = model.dropout(features, torch.Generator().manual_seed(1))
    assert torch.equal(dropped, again)  # the mask is a function of the generator
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    trained, _ = model(pixels, dropout_generator=torch.Generator().manual_seed(3))
    model.eval()
    evaluated, _ = model(pixels)
    assert not torch.allclose(trained, evaluated)
    plain = PromptedViT(tower, 4, 2, torch.Generator().manual_seed(0))
    plain.train()
    assert torch.equal(plain(pixels)[0], evaluated)  # no dropout: the training forward is the evaluation one
    release = PromptOptions()
    assert (release.feature_dropout, release.transforms, release.few_at_most) == (0.1, "release", 20)
