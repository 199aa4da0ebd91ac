"""Classifier-R and Classifier-C: a linear head on frozen image features, trained by SGD.

Both train with the prompt-tuning recipe (same loop, augmented views, loss,
optimiser and schedule), so that against CoOp only the classifier differs:
Classifier-R starts from random unit rows, Classifier-C from the zero-shot
text features of the dataset's single template (`template` overrides it).
The method name (`classifier_r`, `classifier_c`) picks the initialisation.
"""

from __future__ import annotations

import torch

from ptlab.config import TrialConfig
from ptlab.data.templates import resolve_templates
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.supervision import SupervisedSetup, prepare_supervised
from ptlab.methods.training import TrainingLoop
from ptlab.models.heads import LinearHead
from ptlab.models.text import class_text_features

INITS = {"classifier_r": "random", "classifier_c": "text"}


def build_head(cfg: TrialConfig, setup: SupervisedSetup) -> LinearHead:
    if cfg.method not in INITS:
        raise ValueError(f"the linear-head recipe runs {', '.join(INITS)}, not {cfg.method!r}")
    backbone = setup.backbone
    scale = backbone.model.logit_scale.exp().detach().float().cpu()
    if INITS[cfg.method] == "text":
        templates = resolve_templates("single", setup.bundle.template, cfg.template)
        head = LinearHead(class_text_features(backbone, setup.classnames, templates).cpu(), scale)
    else:
        dim = setup.test_features.shape[-1]
        head = LinearHead.random(setup.n_classes, dim, scale, torch.Generator().manual_seed(cfg.seed))
    return head


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    setup = prepare_supervised(cfg, ctx)
    loop = TrainingLoop(cfg, ctx, setup, build_head(cfg, setup).to(ctx.device))
    loop.fit()
    return loop.finish()
