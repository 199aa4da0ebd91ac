"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context, shifted per image by a meta-network.

A small meta-net, Linear(d, d / r) -> ReLU -> Linear(d / r, ctx width), turns
each (normalised) image feature into one token pi(x) that is added to every
context vector: the prompt of class c for image x is [v_1 + pi(x) ... v_M +
pi(x)] [class c], so the text tower runs once per image and class. Context
and meta-net train together with CoOp's loop and loss; the encoders stay
frozen. The context is shared by all classes, the class token at the end, as
in the paper. Options: ptlab.methods.registry.CoCoOpOptions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ptlab.config import TrialConfig
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.supervision import prepare_supervised
from ptlab.methods.training import TrainingLoop
from ptlab.models.prompt import PromptDesign, PromptLearner
from ptlab.models.text import encode_embeddings

# Images whose C prompts go through the text tower at once: B x C prompts per step bound the memory.
IMAGES_PER_PASS = 64


class ConditionalPromptClassifier(nn.Module):
    """Cosine classifier whose class weights are each image's own prompts' text features."""

    def __init__(self, learner: PromptLearner, scale: torch.Tensor, image_dim: int, reduction: int):
        super().__init__()
        self.learner = learner
        self.register_buffer("scale", scale)
        width = learner.ctx.shape[-1]
        hidden = max(image_dim // reduction, 1)
        self.meta_net = nn.Sequential(nn.Linear(image_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        mask = torch.zeros(learner.base.shape[:2], device=learner.base.device)
        if learner.n_ctx:
            mask[learner.ctx_rows, learner.ctx_cols] = 1.0
        self.register_buffer("context_slots", mask, persistent=False)

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        prompts = self.learner.prompt_embeddings()  # (C, L, D)
        shift = self.meta_net(image).to(prompts.dtype)  # (B, D)
        shifted = prompts.unsqueeze(0) + self.context_slots[None, :, :, None] * shift[:, None, None, :]
        b, (c, length, width) = len(image), prompts.shape
        feats = encode_embeddings(self.learner.model, shifted.reshape(b * c, length, width),
                                  self.learner.eot.repeat(b), truncate=True, share_prefix=False)
        text = F.normalize(feats.float(), dim=-1).reshape(b, c, -1)
        return self.scale * torch.einsum("be,bce->bc", image, text)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image_features.float(), dim=-1)
        return torch.cat([self._logits(image[i : i + IMAGES_PER_PASS]) for i in range(0, len(image), IMAGES_PER_PASS)])


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    options = cfg.options
    setup = prepare_supervised(cfg, ctx)
    generator = torch.Generator().manual_seed(cfg.seed)
    design = PromptDesign(n_ctx=cfg.n_ctx, ctx_init=cfg.ctx_init, learn_context=options.learn_context,
                          learn_classnames=cfg.learn_classnames)
    scale = setup.backbone.model.logit_scale.exp().detach().float()
    image_dim = setup.test_features.shape[-1]

    def for_classes(names: list[str]) -> ConditionalPromptClassifier:
        learner = PromptLearner(setup.backbone, names, design, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the meta-net's initialisation, a function of the seed alone
            return ConditionalPromptClassifier(learner, scale, image_dim, options.meta_reduction)

    loop = TrainingLoop(cfg, ctx, setup, for_classes(setup.classnames).to(ctx.device), for_classes)
    loop.fit()
    return loop.finish()
