from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ptlab.config import TrainConfig, TrialConfig
from ptlab.data.noise import NoisyLabels
from ptlab.losses import cross_entropy
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.gradient_ratio import GradientRatioProbe, gradient_norm_ratio


def _two_class_model(p_first: float) -> torch.nn.Module:
    """Softmax (p_first, 1 - p_first) for every input; only the bias trains, so frozen weights must not count."""
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([np.log(p_first), np.log(1 - p_first)]))
    model.weight.requires_grad_(False)
    return model


def test_ratio_by_hand():
    # CE gradient wrt the logits is p - onehot(y); for the bias it is the mean of that:
    # clean (label 0) -> (-0.1, 0.1), noisy (label 1) -> (0.9, -0.9): ratio 0.9 / 0.1 = 9.
    model = _two_class_model(0.9)
    x = torch.randn(5, 3)
    clean = (x, torch.zeros(5, dtype=torch.long))
    noisy = (x, torch.ones(5, dtype=torch.long))
    out = gradient_norm_ratio(model, cross_entropy, clean, noisy)
    assert out["grad_norm_clean"] == pytest.approx(0.1 * np.sqrt(2), rel=1e-5)
    assert out["grad_norm_noisy"] == pytest.approx(0.9 * np.sqrt(2), rel=1e-5)
    assert out["grad_ratio"] == pytest.approx(9.0, rel=1e-5)
    assert model.bias.grad is None  # the probe leaves the training gradients alone


def test_probe_separates_clean_from_mislabelled_samples():
    # 200 samples, true class 0 throughout; the model is sure of class 0, so every
    # correctly labelled sample has a small gradient and every mislabelled one a large one.
    true = np.zeros(200, dtype=np.int64)
    given = true.copy()
    wrong = np.arange(0, 200, 5)  # 40 mislabelled
    given[wrong] = 1
    features = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    setup = SimpleNamespace(
        train=NoisyLabels(np.arange(200), given, true),
        train_batch=lambda positions, rng: features[torch.from_numpy(np.asarray(positions))],
    )
    probe = GradientRatioProbe(setup, seed=1)
    assert probe.size == 40  # equal groups, capped by the smaller one
    assert len(probe.clean) == 40 and not np.isin(probe.clean, wrong).any()
    assert np.isin(probe.noisy, wrong).all()
    out = probe.measure(_two_class_model(0.9), cross_entropy, epoch=0, device=torch.device("cpu"))
    assert out["grad_ratio"] == pytest.approx(9.0, rel=1e-5)


def _cfg(backbone, method, **kw):
    base = dict(method=method, backbone=backbone, dataset="world:shapes", shots=4, n_ctx=4,
                noise_type="symmetric", noise_rate=0.25, train=TrainConfig(epochs=2, views=2))
    base.update(kw)
    return TrialConfig(**base)


@pytest.mark.parametrize("method", ["coop", "classifier_r"])
def test_measuring_changes_no_training_result(feature_cache, random_tiny_clip, method):
    plain = run_trial(_cfg(random_tiny_clip, method), TrialContext(cache_dir=feature_cache))
    measured = run_trial(_cfg(random_tiny_clip, method, method_options={"grad_ratio": True}),
                         TrialContext(cache_dir=feature_cache))
    assert [c["epoch"] for c in measured.curves if "grad_ratio" in c] == [1, 2]
    assert all(np.isfinite(c["grad_ratio"]) and c["grad_ratio"] > 0 for c in measured.curves)
    assert measured.metrics["grad_ratio"] == measured.curves[-1]["grad_ratio"]
    for key in ("test_acc", "train_loss", "val_acc"):
        assert measured.metrics[key] == plain.metrics[key]
    assert "grad_ratio" not in plain.metrics


def test_no_mislabelled_sample_means_no_ratio(feature_cache, random_tiny_clip):
    cfg = _cfg(random_tiny_clip, "coop", noise_type="none", noise_rate=0.0, method_options={"grad_ratio": True},
               train=TrainConfig(epochs=1, views=2))
    record = run_trial(cfg, TrialContext(cache_dir=feature_cache))
    assert "grad_ratio" not in record.metrics
