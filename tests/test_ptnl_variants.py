import pytest
import torch

from ptlab.config import TrainConfig, TrialConfig
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.supervision import prepare_supervised
from ptlab.methods.variants import prompt_classifier
from ptlab.methods.zeroshot import zero_shot_logits
from ptlab.models.text import class_text_features


def _cfg(backbone, method, **kw):
    base = dict(method=method, backbone=backbone, dataset="world:shapes", shots=2, n_ctx=2,
                noise_type="symmetric", noise_rate=0.5, train=TrainConfig(epochs=1, views=2))
    base.update(kw)
    return TrialConfig(**base)


def _trained_names(cfg, cache):
    saved = {}
    run_trial(cfg, TrialContext(cache_dir=cache, save_checkpoint=lambda e, s: saved.update(s)))
    return set(saved["classifier"])


@pytest.mark.parametrize(
    ("method", "learned"),
    [("coop", {"learner.ctx"}), ("full_prompt", {"learner.ctx", "learner.class_embeddings"}),
     ("cls_tuning", {"learner.class_embeddings"})],
)
def test_each_variant_learns_its_own_part_of_the_prompt(feature_cache, random_tiny_clip, method, learned):
    assert _trained_names(_cfg(random_tiny_clip, method), feature_cache) == learned


def _fixed_prompt_logits(setup, template):
    text = class_text_features(setup.backbone, setup.classnames, [template])
    return zero_shot_logits(setup.test_features, text, setup.backbone)


def test_fixed_prompts_are_the_hand_written_ones(feature_cache, random_tiny_clip):
    ctx = TrialContext(cache_dir=feature_cache)
    cfg = _cfg(random_tiny_clip, "cls_tuning")
    setup = prepare_supervised(cfg, ctx, augment=False)
    with torch.no_grad():
        cls_start = prompt_classifier(cfg, setup)(setup.test_features)
        ctx0 = prompt_classifier(cfg.with_updates({"method": "ctx0"}), setup)(setup.test_features)
        full = prompt_classifier(cfg.with_updates({"method": "full_prompt", "n_ctx": 3}), setup)
    # CLS tuning starts from "a photo of a {}.", Ctx-0 is "{}.", whatever n_ctx says
    assert torch.allclose(cls_start, _fixed_prompt_logits(setup, "a photo of a {}."), atol=1e-3)
    assert torch.allclose(ctx0, _fixed_prompt_logits(setup, "{}."), atol=1e-3)
    assert full.learner.ctx.shape[0] == 3


def test_ctx0_is_zero_shot_on_class_names(feature_cache, random_tiny_clip):
    ctx = TrialContext(cache_dir=feature_cache)
    record = run_trial(_cfg(random_tiny_clip, "ctx0"), ctx)
    zero = run_trial(_cfg(random_tiny_clip, "zeroshot", template="{}."), ctx)
    assert record.metrics["test_acc"] == zero.metrics["test_acc"]
    assert record.details["per_class_acc"] == zero.details["per_class_acc"]
    assert record.metrics["epochs_done"] == 0
