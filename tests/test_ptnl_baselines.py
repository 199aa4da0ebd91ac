import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ptlab.config import TrainConfig, TrialConfig
from ptlab.data.templates import resolve_templates
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.classifier import build_head
from ptlab.methods.linear_probe import COARSE_LOG10_C, fit_logistic_regression, search_log10_c
from ptlab.methods.supervision import prepare_supervised
from ptlab.methods.tenc_ft import TextEncoderClassifier
from ptlab.methods.zeroshot import zero_shot_logits
from ptlab.models.text import class_text_features


def _cfg(backbone, method, **kw):
    base = dict(method=method, backbone=backbone, dataset="world:shapes", shots=4, n_ctx=4,
                noise_type="symmetric", noise_rate=0.25, train=TrainConfig(epochs=2, views=2))
    base.update(kw)
    return TrialConfig(**base)


def test_logistic_regression_optimum():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=gen)
    # Vanishing C: weights vanish and the unpenalised bias matches the class frequencies.
    tiny = fit_logistic_regression(x, y, 3, c=1e-9)
    assert tiny.weight.abs().max() < 1e-6
    freq = torch.bincount(y, minlength=3).double() / 60
    assert torch.allclose(torch.softmax(tiny.bias, 0), freq, atol=2e-4)
    # Any C: the gradient of mean CE + ||W||^2 / (2CN) vanishes at the solution.
    fit = fit_logistic_regression(x, y, 3, c=0.5)
    w = fit.weight.clone().requires_grad_(True)
    b = fit.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(x @ w.T + b, y) + (w**2).sum() / (2 * 0.5 * 60)
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_c_search_refines_around_the_peak_and_prefers_smaller_c_on_ties():
    best, tried = search_log10_c(lambda c: -abs(np.log10(c) - 1.3), steps=8)
    assert set(COARSE_LOG10_C) <= set(tried)
    assert best == pytest.approx(1.3, abs=2 / 2**8)
    flat, _ = search_log10_c(lambda c: 50.0, steps=2)
    assert flat == -7.0  # the coarse peak's tie goes to 1e-6, refined one decade further down


def test_linear_probe_trial_is_deterministic(feature_cache, random_tiny_clip):
    cfg = _cfg(random_tiny_clip, "linear_probe", method_options={"search_steps": 2})
    record = run_trial(cfg, TrialContext(cache_dir=feature_cache))
    again = run_trial(cfg, TrialContext(cache_dir=feature_cache))
    same = lambda m: {k: v for k, v in m.items() if k != "images_encoded"}  # noqa: E731  (the second run reads the cache)
    assert same(record.metrics) == same(again.metrics)
    assert {"test_acc", "val_acc", "lp_log10_c", "train_acc_noisy", "train_acc_true"} <= set(record.metrics)
    tried = [np.log10(c) for c, _ in record.details["c_search"]]
    assert set(COARSE_LOG10_C) <= {round(t, 9) for t in tried} and len(tried) <= len(COARSE_LOG10_C) + 2 + 2
    assert record.metrics["val_acc"] == max(acc for _, acc in record.details["c_search"])


def _zero_shot(setup):
    text = class_text_features(setup.backbone, setup.classnames, resolve_templates("single", setup.bundle.template))
    return zero_shot_logits(setup.test_features, text, setup.backbone)


def test_text_initialised_heads_start_as_zero_shot_clip(feature_cache, random_tiny_clip):
    cfg = _cfg(random_tiny_clip, "classifier_c")
    setup = prepare_supervised(cfg, TrialContext(cache_dir=feature_cache))
    expected = _zero_shot(setup)
    with torch.no_grad():
        assert torch.allclose(build_head(cfg, setup)(setup.test_features), expected, atol=1e-3)
        prompts = [setup.bundle.template.format(c) for c in setup.classnames]
        assert torch.allclose(TextEncoderClassifier(setup.backbone, prompts)(setup.test_features), expected, atol=1e-3)
        random_head = build_head(cfg.with_updates({"method": "classifier_r"}), setup)
    assert torch.allclose(random_head.weight.norm(dim=-1), torch.ones(setup.n_classes))
    assert not torch.allclose(random_head(setup.test_features), expected, atol=1.0)


@pytest.mark.parametrize("method", ["classifier_r", "classifier_c", "tenc_ft"])
def test_trained_baselines_learn_only_their_own_weights(feature_cache, random_tiny_clip, method):
    saved = {}
    cfg = _cfg(random_tiny_clip, method, train=TrainConfig(epochs=1, views=2, warmup_epochs=0, lr=0.05))
    record = run_trial(cfg, TrialContext(cache_dir=feature_cache, save_checkpoint=lambda e, s: saved.update(s)))
    assert np.isfinite(record.metrics["train_loss"])
    names = set(saved["classifier"])
    if method == "tenc_ft":
        assert {"tower.token_embedding.weight", "tower.positional_embedding", "tower.ln_final.weight"} <= names
        assert any(n.startswith("tower.transformer.") for n in names)
    else:
        assert names == {"weight", "bias"}
