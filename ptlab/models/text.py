"""Text tower of a CLIP: token embeddings in, projected EOT features out.

The text transformer is causal, so the output at the EOT position depends only
on the tokens before it. Cutting every sequence after the last EOT of the
batch therefore changes no feature, and saves most of the work for short
prompts in a 77-token context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    """The EOT token has the largest id in CLIP's vocabulary."""
    return tokens.argmax(dim=-1)


def encode_embeddings(model, embeddings: torch.Tensor, eot: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """Projected text features from token embeddings (B, L, D) and EOT positions (B,)."""
    length = int(eot.max()) + 1 if truncate else embeddings.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = embeddings[:, :length].to(cast) + model.positional_embedding[:length].to(cast)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def encode_tokens(model, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    return encode_embeddings(model, model.token_embedding(tokens), eot_positions(tokens), truncate)


@torch.no_grad()
def class_text_features(backbone, classnames: list[str], templates: list[str], batch: int = 256) -> torch.Tensor:
    """Normalised (C, E) class features; several templates give their renormalised mean."""
    device = next(backbone.model.parameters()).device
    total = None
    for template in templates:
        prompts = [template.format(c) for c in classnames]
        feats = []
        for start in range(0, len(prompts), batch):
            tokens = backbone.tokenize(prompts[start : start + batch]).to(device)
            feats.append(F.normalize(encode_tokens(backbone.model, tokens).float(), dim=-1))
        feats = torch.cat(feats)
        total = feats if total is None else total + feats
    return F.normalize(total, dim=-1)
