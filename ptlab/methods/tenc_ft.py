"""TEnc-FT: the whole text encoder fine-tuned on a fixed hand-written prompt.

Every class is prompted with the dataset's single template (`template`
overrides it), and all text-tower weights train: token and positional
embeddings, transformer, final LayerNorm and projection. The image encoder
and logit scale stay frozen, so against CoOp only what is learned differs;
same loop, loss, optimiser and schedule.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ptlab.config import TrialConfig
from ptlab.data.templates import resolve_templates
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.supervision import prepare_supervised
from ptlab.methods.training import TrainingLoop
from ptlab.models.text import encode_tokens


class TextTower(nn.Module):
    """A trainable float32 copy of a CLIP's text tower; ptlab.models.text accepts it as the model.

    Float32 whatever the backbone's precision: small SGD updates vanish in
    half-precision weights.
    """

    def __init__(self, model):
        super().__init__()
        self.token_embedding = copy.deepcopy(model.token_embedding).float()
        self.positional_embedding = nn.Parameter(model.positional_embedding.detach().clone().float())
        self.transformer = copy.deepcopy(model.transformer).float()
        self.ln_final = copy.deepcopy(model.ln_final).float()
        projection = model.text_projection
        if isinstance(projection, nn.Linear):
            self.text_projection = copy.deepcopy(projection).float()
        elif projection is None:
            self.text_projection = None
        else:
            self.text_projection = nn.Parameter(projection.detach().clone().float())
        mask = model.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.requires_grad_(True)


class TextEncoderClassifier(nn.Module):
    """Cosine classifier whose class weights are the fine-tuned tower's features of the fixed prompts."""

    def __init__(self, backbone, prompts: list[str]):
        super().__init__()
        model = backbone.model
        device = model.logit_scale.device
        self.tower = TextTower(model).to(device)
        self.register_buffer("tokens", backbone.tokenize(prompts).to(device), persistent=False)
        self.register_buffer("scale", model.logit_scale.exp().detach().float())

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(encode_tokens(self.tower, self.tokens).float(), dim=-1)
        return self.scale * F.normalize(image_features.float(), dim=-1) @ text.T


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    setup = prepare_supervised(cfg, ctx)
    (template,) = resolve_templates("single", setup.bundle.template, cfg.template)
    classifier = TextEncoderClassifier(setup.backbone, [template.format(c) for c in setup.classnames])
    loop = TrainingLoop(cfg, ctx, setup, classifier)
    loop.fit()
    return loop.finish()
