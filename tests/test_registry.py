"""Method registrations: typed options, the trial hash as the method reads it, and CoCoOp's recipe."""

from __future__ import annotations

import importlib

import pytest
import torch
from pydantic import ValidationError

from ptlab.config import TrainConfig, TrialConfig
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.cocoop import ConditionalPromptClassifier
from ptlab.methods.coop import PromptClassifier, prompt_design
from ptlab.methods.registry import METHODS, OPTIONAL_FIELDS, method_of
from ptlab.methods.training import loss_for
from ptlab.models.backbone import load_backbone
from ptlab.models.prompt import PromptDesign, PromptLearner


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registration_names_a_recipe_and_fields_that_exist(name):
    method = METHODS[name]
    assert callable(importlib.import_module(method.recipe).run)
    assert method.uses <= OPTIONAL_FIELDS <= set(TrialConfig.model_fields)
    # its options' defaults make a valid config of that method
    TrialConfig(method=name, method_options=method.options().model_dump(by_alias=True))


def test_an_unknown_method_is_named_with_the_nearest_one():
    with pytest.raises(KeyError, match="did you mean 'cocoop'"):
        method_of("cocop")


def test_an_option_the_method_does_not_take_is_refused_listing_those_it_does():
    with pytest.raises(ValidationError) as caught:
        TrialConfig(method="coop", method_options={"lamda": 1.0})
    message = str(caught.value)
    assert "method_options" in message and "option lamda" in message
    assert "method coop takes: grad_ratio, grad_ratio_samples, learn_context" in message


def test_a_wrongly_typed_option_is_refused():
    with pytest.raises(ValidationError, match="option weights"):
        TrialConfig(method="ueo", method_options={"weights": "softmax"})


def test_options_are_typed_and_keep_their_written_alias():
    cfg = TrialConfig(method="ueo", method_options={"lambda": 0.5})
    assert cfg.options.lam == 0.5 and cfg.options.weights == "mcm"
    assert cfg.canonical()["method_options"] == {"lambda": 0.5}  # options left at their defaults are not spelt out


def test_options_written_at_their_defaults_are_the_same_trial():
    assert TrialConfig(method="coop").trial_id == TrialConfig(method="coop", method_options={"learn_context": True}).trial_id
    assert TrialConfig(method="coop").trial_id != TrialConfig(method="coop", method_options={"learn_context": False}).trial_id


def test_fields_a_method_never_reads_do_not_change_its_trial():
    # zero-shot CLIP learns no prompt, so the context length is not part of what it computes
    assert TrialConfig(method="zeroshot", n_ctx=4).trial_id == TrialConfig(method="zeroshot", n_ctx=16).trial_id
    assert TrialConfig(method="coop", n_ctx=4).trial_id != TrialConfig(method="coop", n_ctx=16).trial_id
    # a loss parameter counts only for its own loss
    assert TrialConfig(method="coop", loss="ce", gce_q=0.3).trial_id == TrialConfig(method="coop", loss="ce", gce_q=0.9).trial_id
    assert TrialConfig(method="coop", loss="gce", gce_q=0.3).trial_id != TrialConfig(method="coop", loss="gce", gce_q=0.9).trial_id
    assert TrialConfig(method="coop", loss="ce", gce_q=0.3).canonical()["gce_q"] == TrialConfig.model_fields["gce_q"].default


def test_changing_the_method_drops_options_the_new_one_does_not_take():
    cfg = TrialConfig(method="ueo", method_options={"lambda": 0.5, "learn_context": False})
    moved = cfg.with_updates({"method": "coop"})
    assert moved.method_options == {"learn_context": False}


def test_the_loss_gets_the_parameters_of_its_own_fields():
    assert loss_for(TrialConfig(loss="gce", gce_q=0.3)).keywords["q"] == 0.3
    assert loss_for(TrialConfig(loss="sce", sce_alpha=0.2, sce_beta=0.7)).keywords == {"alpha": 0.2, "beta": 0.7, "reduction": "mean"}


def _learner(random_tiny_clip):
    backbone = load_backbone(random_tiny_clip)
    design = PromptDesign(n_ctx=4, ctx_init="", learn_context=True, learn_classnames=False)
    return backbone, PromptLearner(backbone, ["circle", "square", "star"], design, torch.Generator().manual_seed(0))


def test_cocoop_with_a_silent_meta_net_is_coop(random_tiny_clip):
    backbone, learner = _learner(random_tiny_clip)
    scale = backbone.model.logit_scale.exp().detach().float()
    conditional = ConditionalPromptClassifier(learner, scale, image_dim=backbone.model.text_projection.shape[1],
                                              reduction=4)
    last = conditional.meta_net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    features = torch.randn(5, backbone.model.text_projection.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(conditional(features), PromptClassifier(learner, scale)(features), atol=1e-5)


def test_cocoop_shifts_only_the_context_and_differs_per_image(random_tiny_clip):
    backbone, learner = _learner(random_tiny_clip)
    scale = backbone.model.logit_scale.exp().detach().float()
    conditional = ConditionalPromptClassifier(learner, scale, image_dim=backbone.model.text_projection.shape[1],
                                              reduction=4)
    assert int(conditional.context_slots.sum()) == 4 * 3  # n_ctx slots in each of the 3 class prompts
    features = torch.randn(2, backbone.model.text_projection.shape[1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        one_by_one = torch.cat([conditional(features[:1]), conditional(features[1:])])
        assert torch.allclose(conditional(features), one_by_one, atol=1e-5)
        plain = PromptClassifier(learner, scale)(features)
    assert not torch.allclose(conditional(features).detach(), plain, atol=1e-4)


def test_cocoop_trains_its_meta_net_and_reports_every_epoch(feature_cache, random_tiny_clip):
    cfg = TrialConfig(method="cocoop", backbone=random_tiny_clip, dataset="world:shapes", shots=2, n_ctx=2,
                      train=TrainConfig(epochs=2, views=1, lr=0.01), method_options={"meta_reduction": 8})
    assert prompt_design(cfg).n_ctx == 2
    seen, saved = [], {}
    record = run_trial(cfg, TrialContext(cache_dir=feature_cache, report=lambda e, m: seen.append(e),
                                         save_checkpoint=lambda e, s: saved.__setitem__(e, s)))
    assert seen == [1, 2]
    assert {"test_acc", "val_acc", "train_loss"} <= set(record.metrics)
    meta = {k for k in saved[2]["classifier"] if k.startswith("meta_net.")}
    assert meta, saved[2]["classifier"].keys()
    assert any(not torch.equal(saved[1]["classifier"][k], saved[2]["classifier"][k]) for k in meta)


def test_base_and_new_halves_are_relabelled_views_of_the_parent_images():
    from ptlab.data.base_new import base_and_new
    from ptlab.data.sources import load_dataset

    full = load_dataset("world:shapes")
    base, new = base_and_new(full)
    assert base.classnames == full.classnames[:5] and new.classnames == full.classnames[5:]
    for half, offset in ((base, 0), (new, 5)):
        for name, split in half.splits.items():
            parent = full.split(name)
            assert set(split.labels.tolist()) == set(range(5))
            assert len(split) == int(((parent.labels >= offset) & (parent.labels < offset + 5)).sum())
            first = int(split.images.positions[0])
            assert parent.labels[first] == split.labels[0] + offset
            assert split.images.load(0).tobytes() == parent.images.load(first).tobytes()
            assert split.images.identity != parent.images.identity
    assert base.split("test").images.identity != new.split("test").images.identity


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_base_to_new_trains_on_base_names_and_reports_new_accuracy(feature_cache, random_tiny_clip, method):
    from ptlab.data.base_new import harmonic_mean

    cfg = TrialConfig(method=method, backbone=random_tiny_clip, dataset="world:shapes", shots=2, n_ctx=2,
                      data={"base_to_new": True}, train=TrainConfig(epochs=1, views=1, lr=0.01))
    record = run_trial(cfg, TrialContext(cache_dir=feature_cache))
    m = record.metrics
    assert m["base_acc"] == m["test_acc"] and len(record.details["per_class_acc"]) == 5
    assert m["train_size"] == 2 * 5  # two shots of each base class, none of the new ones
    assert 0 <= m["new_acc"] <= 100 and m["hm"] == pytest.approx(harmonic_mean(m["base_acc"], m["new_acc"]))


def test_zero_shot_reports_base_to_new_from_the_names_alone(feature_cache, random_tiny_clip):
    from ptlab.data.base_new import harmonic_mean

    both = TrialConfig(method="zeroshot", backbone=random_tiny_clip, dataset="world:shapes", data={"base_to_new": True})
    m = run_trial(both, TrialContext(cache_dir=feature_cache)).metrics
    assert m["base_acc"] == m["test_acc"] and m["hm"] == pytest.approx(harmonic_mean(m["base_acc"], m["new_acc"]))
    whole = run_trial(both.with_updates({"data.base_to_new": False}), TrialContext(cache_dir=feature_cache)).metrics
    assert "new_acc" not in whole


def test_trial_ids_of_configs_every_method_reads_whole_are_those_of_earlier_versions():
    # pinned before the registry and data.base_to_new existed: resumed folders and cells across versions keep them
    assert TrialConfig().trial_id == "4fe1d79c9f90"
    assert TrialConfig(loss="gce", gce_q=0.5, noise_type="symmetric", noise_rate=0.25).trial_id == "352566bf35de"
    assert TrialConfig(data={"base_to_new": True}).trial_id != TrialConfig().trial_id
