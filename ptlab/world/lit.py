"""Locked-image tuning (LiT, Zhai et al. 2022) of the tiny world CLIPs.

Jointly trained on captions, a tiny CLIP's image tower learns only what some
caption says, and its text tower learns every name a few hundred captions use,
so zero-shot accuracy always sits at what the image features can separate and
few-shot training has nothing left to find. LiT breaks that tie in two stages:

1. the image tower learns every rendered attribute (shape, colour, background
   pattern, size, style) from the renderer's labels, with no captions: one
   cosine-classifier head per attribute on the image embedding;
2. the image tower is locked, its embeddings of the pretraining pool are
   computed once, and only the text tower trains contrastively against them,
   on captions that name some attributes often and others rarely or through
   other words (`CAPTION_SCHEMES`).

The image features then carry more than the class-name prompts exploit, the
situation of real CLIP on EuroSAT or DTD. Both stages are seeded, resumable
from checkpoints and deterministic on CPU for a fixed thread count.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ptlab.world.captions import CAPTION_SCHEMES, caption, positives
from ptlab.world.pretrain import (
    TEXT_CFG,
    Checkpoint,
    PretrainConfig,
    contrastive_step,
    one_cycle_adamw,
)
from ptlab.world.tasks import ATTRIBUTE_VALUES

HEAD_ATTRIBUTES = ("shape", "color", "pattern", "size", "domain")
# Cosine logits scaled as in CLIP's zero-shot head, so the embedding is organised
# for the cosine similarity that zero-shot classification and CoOp use.
HEAD_SCALE = 16.0
# What stage 1's result depends on: changing only the text stage reuses it.
IMAGE_STAGE_KEYS = ("backbone", "image_steps", "batch_size", "lr", "weight_decay", "pool_size", "seed", "threads")
LOG_EVERY = 100


class AttributeHeads(nn.Module):
    """One cosine classifier per rendered attribute on the image embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = nn.ParameterDict(
            {a: nn.Parameter(torch.randn(len(ATTRIBUTE_VALUES[a]), dim) * dim**-0.5) for a in HEAD_ATTRIBUTES}
        )

    def loss(self, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        losses = [F.cross_entropy(HEAD_SCALE * f @ F.normalize(w, dim=-1).T, labels[a]) for a, w in self.weights.items()]
        return torch.stack(losses).mean()


def _curve(losses: list[float]) -> list[float]:
    """Mean loss of every LOG_EVERY steps, for the model card."""
    return [round(float(np.mean(losses[i : i + LOG_EVERY])), 4) for i in range(0, len(losses), LOG_EVERY)]


def train_image_tower(cfg: PretrainConfig, model: open_clip.CLIP, images: torch.Tensor, pool, log, checkpoint_dir, every=250):
    """Stage 1: model.visual learns every attribute from labels; returns the stage's record."""
    start = time.time()
    torch.manual_seed(cfg.seed + 2)
    heads = AttributeHeads(model.visual.output_dim)
    stage = nn.ModuleDict({"visual": model.visual, "heads": heads})
    optimizer, schedule = one_cycle_adamw(list(stage.named_parameters()), cfg, cfg.image_steps)
    rng = np.random.default_rng(cfg.seed + 3)
    config = {k: asdict(cfg)[k] for k in IMAGE_STAGE_KEYS}
    checkpoint = Checkpoint(checkpoint_dir, f"{cfg.backbone}-image-state.pt", config, every)
    losses, first_step = checkpoint.restore(stage, optimizer, schedule, rng, log)
    labels = {a: torch.from_numpy(getattr(pool, a)).long() for a in HEAD_ATTRIBUTES}
    stage.train()
    for step in range(first_step, cfg.image_steps):
        index = rng.choice(len(pool), cfg.batch_size, replace=False)
        loss = heads.loss(model.visual(images[index]), {a: v[index] for a, v in labels.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach().item())
        if step % LOG_EVERY == 0 or step == cfg.image_steps - 1:
            log(f"image step {step:5d}  loss {np.mean(losses[-LOG_EVERY:]):.4f}  {time.time() - start:.0f}s")
        checkpoint.after_step(step, cfg.image_steps, stage, optimizer, schedule, rng, losses)
    model.visual.eval()
    return {"steps": cfg.image_steps, "wall_time_s": round(time.time() - start, 1), "loss_curve": _curve(losses)}


def locked_image_tower(cfg: PretrainConfig, model: open_clip.CLIP, images: torch.Tensor, pool, log, checkpoint_dir, every=250):
    """Stage 1, or its finished result from `checkpoint_dir` when one was saved with the same config."""
    config = {k: asdict(cfg)[k] for k in IMAGE_STAGE_KEYS}
    done = Path(checkpoint_dir) / f"{cfg.backbone}-image-tower.pt" if checkpoint_dir else None
    if done is not None and done.is_file():
        saved = torch.load(done, weights_only=True)
        if saved["config"] == config:
            model.visual.load_state_dict(saved["visual"])
            log(f"image tower from {done}")
            record = saved["record"]
            return _lock(model.visual), record
    record = train_image_tower(cfg, model, images, pool, log, checkpoint_dir, every)
    if done is not None:
        done.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": config, "visual": model.visual.state_dict(), "record": record}, done)
    return _lock(model.visual), record


def _lock(visual: nn.Module) -> nn.Module:
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    return visual


@torch.no_grad()
def image_features(visual: nn.Module, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """L2-normalised embeddings of the locked tower, computed once for the whole pool."""
    return torch.cat([F.normalize(visual(images[i : i + chunk]), dim=-1) for i in range(0, len(images), chunk)])


def train_text_tower(cfg: PretrainConfig, model: open_clip.CLIP, features: torch.Tensor, pool, log, checkpoint_dir, every):
    """Stage 2: the text tower learns to match the locked image embeddings; returns the stage's record and losses."""
    start = time.time()
    scheme = CAPTION_SCHEMES[cfg.captions]
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TEXT_CFG["context_length"])
    text_parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer, schedule = one_cycle_adamw(text_parameters, cfg, cfg.steps)
    rng = np.random.default_rng(cfg.seed + 1)
    checkpoint = Checkpoint(checkpoint_dir, f"{cfg.backbone}-text-state.pt", asdict(cfg), every)
    losses, first_step = checkpoint.restore(model, optimizer, schedule, rng, log)
    for step in range(first_step, cfg.steps):
        index = rng.choice(len(pool), cfg.batch_size, replace=False)
        texts, claims = zip(*(caption(pool, int(i), rng, scheme) for i in index), strict=True)
        match = torch.from_numpy(positives(np.stack(claims), pool, index).T).float()
        txt = F.normalize(model.encode_text(tokenizer(list(texts))), dim=-1)
        losses.append(contrastive_step(model, optimizer, schedule, features[index], txt, match))
        if step % LOG_EVERY == 0 or step == cfg.steps - 1:
            log(f"text step {step:5d}  loss {np.mean(losses[-LOG_EVERY:]):.4f}  {time.time() - start:.0f}s")
        checkpoint.after_step(step, cfg.steps, model, optimizer, schedule, rng, losses)
    return {"steps": cfg.steps, "wall_time_s": round(time.time() - start, 1), "loss_curve": _curve(losses)}, losses


def train_with_locked_image_tower(cfg: PretrainConfig, model, images, pool, log, checkpoint_dir, every):
    """Both LiT stages on `model`; returns the text stage's losses and a record of each stage."""
    _, image_record = locked_image_tower(cfg, model, images, pool, log, checkpoint_dir, every)
    features = image_features(model.visual, images)
    text_record, losses = train_text_tower(cfg, model, features, pool, log, checkpoint_dir, every)
    return losses, {"image_tower": image_record, "text_tower": text_record}
