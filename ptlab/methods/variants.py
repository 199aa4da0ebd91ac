"""Prompt-design variants of the noisy-label analysis (PTNL section 4, methods.md section 5).

All are the CoOp learner and loop with a different choice of what is learned;
the method name picks the variant:

  full_prompt  context (n_ctx vectors, or ctx_init) and the class-name token
               embeddings both learned
  cls_tuning   fixed template "a photo of a {}." (ctx_init overrides the
               words before the name), only the class-name embeddings learned
  ctx0         class names alone, "{}.", nothing learned: the zero-shot end of
               the context-length axis (n_ctx is the factor for CoOp itself)

The variant sets the learner's fields; the config's n_ctx, ctx_init,
learn_classnames and method_options.learn_context are overridden where the
variant fixes them.
"""

from __future__ import annotations

import dataclasses

import torch

from ptlab.config import TrialConfig
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.coop import PromptClassifier, prompt_design
from ptlab.methods.supervision import SupervisedSetup, prepare_supervised
from ptlab.methods.training import TrainingLoop, trial_record
from ptlab.metrics import accuracy
from ptlab.models.prompt import PromptDesign, PromptLearner

CLS_TUNING_CONTEXT = "a photo of a"


def variant_design(cfg: TrialConfig) -> PromptDesign:
    design = prompt_design(cfg)
    if cfg.method == "full_prompt":
        return dataclasses.replace(design, learn_context=True, learn_classnames=True)
    if cfg.method == "cls_tuning":
        return dataclasses.replace(
            design, ctx_init=cfg.ctx_init or CLS_TUNING_CONTEXT, position="end", csc=False,
            learn_context=False, learn_classnames=True,
        )
    if cfg.method == "ctx0":
        return dataclasses.replace(design, n_ctx=0, ctx_init="", learn_context=False, learn_classnames=False)
    raise ValueError(f"the prompt-variant recipe runs full_prompt, cls_tuning and ctx0, not {cfg.method!r}")


def prompt_classifier(cfg: TrialConfig, setup: SupervisedSetup) -> PromptClassifier:
    generator = torch.Generator().manual_seed(cfg.seed)
    learner = PromptLearner(setup.backbone, setup.classnames, variant_design(cfg), generator)
    return PromptClassifier(learner, setup.backbone.model.logit_scale.exp().detach().float())


@torch.no_grad()
def _predict(classifier: PromptClassifier, features: torch.Tensor, device: torch.device):
    return classifier(features.to(device)).argmax(-1).cpu().numpy()


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    if cfg.method == "ctx0":
        # Nothing trains, so the training views are never needed.
        setup = prepare_supervised(cfg, ctx, augment=False)
        classifier = prompt_classifier(cfg, setup)
        extra = {}
        if setup.val_features is not None:
            extra["val_acc"] = 100 * accuracy(_predict(classifier, setup.val_features, ctx.device), setup.val_labels)
        return trial_record(cfg, setup, _predict(classifier, setup.test_features, ctx.device), [], extra)
    setup = prepare_supervised(cfg, ctx)
    loop = TrainingLoop(cfg, ctx, setup, prompt_classifier(cfg, setup))
    loop.fit()
    return loop.finish()
