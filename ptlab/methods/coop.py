"""CoOp: learn the prompt context on K shots per class, encoders frozen.

Image features come from the feature cache (V augmented views per training
image, or live augmentation through the encoder when V = 0); only the text
tower runs in the loop, on prompts cut after their EOT token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptlab.config import TrialConfig
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.supervision import prepare_supervised
from ptlab.methods.training import TrainingLoop
from ptlab.models.prompt import PromptDesign, PromptLearner


def prompt_design(cfg: TrialConfig) -> PromptDesign:
    return PromptDesign(
        n_ctx=cfg.n_ctx,
        ctx_init=cfg.ctx_init,
        position=cfg.class_token_position,
        csc=cfg.csc,
        # a method that learns no prompt (zeroshot_mcm) has no learn_context option
        learn_context=getattr(cfg.options, "learn_context", True),
        learn_classnames=cfg.learn_classnames,
    )


class PromptClassifier(torch.nn.Module):
    """Cosine classifier whose class weights are the prompt learner's text features."""

    def __init__(self, learner: PromptLearner, scale: torch.Tensor):
        super().__init__()
        self.learner = learner
        self.register_buffer("scale", scale)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        text = self.learner()
        return self.scale * F.normalize(image_features.float(), dim=-1) @ text.T


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    setup = prepare_supervised(cfg, ctx)
    generator = torch.Generator().manual_seed(cfg.seed)
    scale = setup.backbone.model.logit_scale.exp().detach().float()

    def for_classes(names: list[str]) -> PromptClassifier:
        return PromptClassifier(PromptLearner(setup.backbone, names, prompt_design(cfg), generator), scale)

    loop = TrainingLoop(cfg, ctx, setup, for_classes(setup.classnames), for_classes)
    loop.fit()
    return loop.finish()
