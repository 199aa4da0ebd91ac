import math

import numpy as np
import pytest
import torch

from ptlab.config import TrialConfig
from ptlab.losses import entropy, ueo_objective
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.ueo import PUBLISHED_RECIPE, UeoTrainer, norm_parameters, shift_metrics
from ptlab.world.pretrain import build_model


def _h(p):
    return -sum(x * math.log(x + 1e-5) for x in p)


def test_objective_against_a_hand_computed_batch():
    p1, p2 = [0.8, 0.2], [0.5, 0.5]
    logits = torch.log(torch.tensor([p1, p2]))
    w = [0.8, 0.5]
    conditional = (w[0] * _h(p1) + w[1] * _h(p2)) / (w[0] + w[1])
    marginal = [(p1[k] / w[0] + p2[k] / w[1]) / (1 / w[0] + 1 / w[1]) for k in range(2)]  # [2/3.25, 1.25/3.25]
    expected = conditional - 0.7 * _h(marginal)
    got = ueo_objective(logits, torch.tensor(w), lam=0.7)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_uniform_weights_are_information_maximisation():
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)) * 3
    p = logits.softmax(1)
    information_maximisation = entropy(p).mean() - entropy(p.mean(0))
    assert ueo_objective(logits).item() == pytest.approx(information_maximisation.item(), rel=1e-6)
    assert ueo_objective(logits, torch.full((16,), 0.3)).item() == pytest.approx(information_maximisation.item(), rel=1e-6)
    assert ueo_objective(logits, lam=0.0).item() == pytest.approx(entropy(p).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="positive weights"):
        ueo_objective(logits, torch.zeros(16))


def test_mcm_auroc_and_known_class_accuracy_on_a_known_case():
    # MCM scores: known A 0.96, known B 1/3, unknown C 1/2, unknown D 1/3. Known
    # above unknown: (A, C) and (A, D) yes, (B, C) no, (B, D) a tie, half: AUROC 62.5.
    cosines = torch.tensor([[math.log(48), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1e9], [0.0, 0.0, 0.0]])
    labels = np.array([0, 1, -1, -1])  # B's tie goes to class 0: one of the two known samples right
    metrics = shift_metrics(cosines, labels)
    assert metrics["auroc"] == pytest.approx(62.5)
    assert metrics["test_acc"] == pytest.approx(50.0)
    assert metrics["test_macro_acc"] == pytest.approx(50.0)
    assert "auroc" not in shift_metrics(cosines[:2], labels[:2])


def _released_norm_names(visual) -> set[str]:
    """The released code's rule: train the image encoder's parameters whose names hold "bn" or "ln"."""
    return {name for name, _ in visual.named_parameters() if "bn" in name or "ln" in name}


@pytest.mark.parametrize("source", ["tiny-rn", "tiny-vit", "RN50:random"])
def test_default_norm_parameters_are_the_released_list(source):
    from ptlab.models.backbone import load_backbone

    visual = build_model(source, 0).visual if source.startswith("tiny") else load_backbone(source).model.visual
    default = norm_parameters(visual)
    assert set(default) == _released_norm_names(visual)
    if source != "tiny-vit":
        assert len(norm_parameters(visual, include_downsample_bn=True)) == len(default) + 8  # 4 downsample BNs
    from ptlab.methods.ueo import Objective

    assert not Objective.from_config(TrialConfig(method="ueo")).include_downsample_bn


def test_norm_parameters_of_both_encoders():
    rn = build_model("tiny-rn", 0).visual
    every = norm_parameters(rn, include_downsample_bn=True)
    released = norm_parameters(rn)
    assert {n for n in every if "downsample" in n} == {f"layer{i}.0.downsample.1.{p}" for i in range(1, 5) for p in ("weight", "bias")}
    assert set(released) == {n for n in every if "downsample" not in n}
    vit = norm_parameters(build_model("tiny-vit", 0).visual)
    assert set(vit) == {f"{m}.{p}" for m in ["ln_pre", "ln_post"] + [f"transformer.resblocks.{i}.ln_{j}" for i in range(4) for j in (1, 2)]
                        for p in ("weight", "bias")}


def _cfg(backbone, **kw):
    recipe = {k: v for k, v in PUBLISHED_RECIPE.items() if k.startswith("train.")}
    cfg = TrialConfig(method="ueo", backbone=backbone, dataset="world:sizes", shots=4, ctx_init="a photo of a",
                      data={"scenario": "open_partial"}).with_updates(recipe)
    return cfg.with_updates({"train.epochs": 1, "train.batch_size": 4, **kw})


@pytest.mark.parametrize("include_downsample_bn", [True, False])
def test_a_step_moves_only_the_context_and_norm_affines(feature_cache, random_tiny_clip, include_downsample_bn):
    # A random CLIP predicts near-uniformly and its gradients are tiny: a large step makes every move visible.
    cfg = _cfg(random_tiny_clip, **{"train.lr": 1e3, "method_options.include_downsample_bn": include_downsample_bn})
    trainer = UeoTrainer(cfg, TrialContext(cache_dir=feature_cache))
    model = trainer.backbone.model
    with torch.no_grad():  # open_clip zero-initialises bn3, which would leave bn1 and bn2 without gradient
        for name, param in norm_parameters(model.visual, include_downsample_bn=True).items():
            if "bn3.weight" in name:
                param.fill_(1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx_before = trainer.learner.ctx.detach().clone()
    trainer.step(np.arange(4))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    intended = {f"visual.{n}" for n in norm_parameters(model.visual, include_downsample_bn)}
    assert changed == intended
    assert any("downsample" in n for n in changed) == include_downsample_bn
    assert not any("running" in k or "num_batches" in k for k in changed)  # BatchNorm statistics stay frozen
    assert not torch.equal(trainer.learner.ctx, ctx_before)
    assert not model.training


def test_trial_records_the_protocol_and_resumes(feature_cache, random_tiny_clip):
    cfg = _cfg(random_tiny_clip, **{"train.epochs": 2})
    saved, seen = {}, []
    ctx = TrialContext(cache_dir=feature_cache, save_checkpoint=lambda e, s: saved.__setitem__(e, s),
                       report=lambda e, m: seen.append(e))
    full = run_trial(cfg, ctx)
    assert seen == [1, 2]
    assert {"test_acc", "test_macro_acc", "auroc", "train_loss", "weight_auroc"} <= set(full.metrics)
    assert full.details["classes"]["unknown_present"] == ["large"]
    assert full.metrics["train_size"] == 8  # open-partial on 3 sizes: small and large present, 4 shots each
    resumed = run_trial(cfg, TrialContext(cache_dir=feature_cache, resume_state=saved[1]))
    assert resumed.metrics == full.metrics
    zero_shot = run_trial(cfg.with_updates({"method": "zeroshot_mcm"}), TrialContext(cache_dir=feature_cache))
    assert zero_shot.metrics["auroc"] == pytest.approx(full.details["initial"]["auroc"])


def test_configurations_that_cannot_run_say_why(feature_cache, random_tiny_clip):
    ctx = TrialContext(cache_dir=feature_cache)
    with pytest.raises(ValueError, match="train.views: 0"):
        run_trial(_cfg(random_tiny_clip, **{"train.views": 8}), ctx)
    with pytest.raises(ValueError, match="ctx_init"):
        run_trial(_cfg(random_tiny_clip, ctx_init=""), ctx)
    with pytest.raises(ValueError, match="lambda"):
        run_trial(_cfg(random_tiny_clip, method="entropy_min", **{"method_options.lambda": 2}), ctx)
    with pytest.raises(ValueError, match="weights"):
        run_trial(_cfg(random_tiny_clip, **{"method_options.weights": "soft"}), ctx)


def test_weight_modes(feature_cache, random_tiny_clip):
    ctx = TrialContext(cache_dir=feature_cache)
    known = UeoTrainer(_cfg(random_tiny_clip, **{"method_options.weights": "oracle"}), ctx)
    is_known = known.data.pool_known != -1
    assert is_known.any() and not is_known.all()
    assert torch.equal(known.weights, torch.from_numpy(np.where(is_known, 1.001, 0.001).astype(np.float32)))
    mcm = UeoTrainer(_cfg(random_tiny_clip), ctx).weights
    n_known = len(known.data.shift.known)
    assert bool(((mcm >= 1 / n_known) & (mcm <= 1)).all()) and mcm.std() > 0
    entropy_min = UeoTrainer(_cfg(random_tiny_clip, method="entropy_min"), ctx)
    assert torch.equal(entropy_min.weights, torch.ones(len(mcm))) and entropy_min.options.lam == 0


def test_transductive_protocol_adapts_and_tests_on_the_whole_dataset(feature_cache, random_tiny_clip):
    ctx = TrialContext(cache_dir=feature_cache)
    cfg = _cfg(random_tiny_clip, shots=0)
    inductive = UeoTrainer(cfg, ctx)
    transductive = UeoTrainer(cfg.with_updates({"method_options.protocol": "transductive"}), ctx)
    bundle = inductive.data.bundle
    sizes = {name: len(split) for name, split in bundle.splits.items()}
    assert len(transductive.test_split) == sum(sizes.values()) and transductive.train_split is transductive.test_split
    labels = np.concatenate([bundle.splits[n].labels for n in ("train", "val", "test") if n in bundle.splits])
    assert np.array_equal(transductive.test_split.labels, labels)
    # the unlabelled data: every image of the present classes, in every split
    present = np.isin(labels, transductive.data.shift.present)
    assert np.array_equal(transductive.data.pool, np.flatnonzero(present))
    assert len(inductive.data.pool) == np.isin(bundle.split("train").labels, inductive.data.shift.present).sum()
    # an image loads from the split it came from
    last = len(transductive.test_split) - 1
    test = bundle.split("test")
    assert np.array_equal(np.asarray(transductive.test_split.images.load(last)), np.asarray(test.images.load(len(test) - 1)))
    with pytest.raises(ValueError, match="protocol"):
        UeoTrainer(cfg.with_updates({"method_options.protocol": "online"}), ctx)
