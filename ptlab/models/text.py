"""Text tower of a CLIP: token embeddings in, projected EOT features out.

The text transformer is causal, so the output at the EOT position depends only
on the tokens before it. Cutting every sequence after the last EOT of the
batch therefore changes no feature, and saves most of the work for short
prompts in a 77-token context.

Causality gives a second exact saving: prompts that begin with the same
embeddings (SOS + a shared learned context, or a template's words) have
identical hidden states over that common prefix. The prefix is computed
once, as one sequence, and every prompt computes only its own remaining
tokens, attending to the shared prefix keys and values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    """The EOT token has the largest id in CLIP's vocabulary."""
    return tokens.argmax(dim=-1)


def shared_prefix_length(embeddings: torch.Tensor, eot: torch.Tensor) -> int:
    """Leading positions whose embeddings are equal in every row (at most min(eot))."""
    same = (embeddings == embeddings[:1]).all(dim=-1).all(dim=0)
    differs = torch.nonzero(~same)
    first = int(differs[0]) if len(differs) else embeddings.shape[1]
    return min(first, int(eot.min()))


def _supports_prefix_sharing(model) -> bool:
    blocks = model.transformer.resblocks
    return (
        model.attn_mask is not None
        and model.transformer.batch_first
        and all(type(b).__name__ == "ResidualAttentionBlock" and b.attn._qkv_same_embed_dim for b in blocks)
        and not any(hasattr(b, "ln_1_kv") for b in blocks)
    )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _block_with_prefix(block, prefix: torch.Tensor, suffix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual attention block over a shared prefix (1, P, D) and per-row suffixes (B, S, D)."""
    attn = block.attn
    heads = attn.num_heads
    qp, kp, vp = (_split_heads(t, heads) for t in F.linear(block.ln_1(prefix), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    qs, ks, vs = (_split_heads(t, heads) for t in F.linear(block.ln_1(suffix), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    n, s, p = suffix.shape[0], suffix.shape[1], prefix.shape[1]
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    keys = torch.cat([kp.expand(n, -1, -1, -1), ks], dim=2)
    values = torch.cat([vp.expand(n, -1, -1, -1), vs], dim=2)
    allowed = torch.ones(s, p + s, dtype=torch.bool, device=suffix.device)
    allowed[:, p:] = torch.ones(s, s, dtype=torch.bool, device=suffix.device).tril()
    out_s = F.scaled_dot_product_attention(qs, keys, values, attn_mask=allowed)

    def merge(x, out):
        out = out.transpose(1, 2).reshape(x.shape)
        x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    return merge(prefix, out_p), merge(suffix, out_s)


def encode_embeddings(
    model, embeddings: torch.Tensor, eot: torch.Tensor, truncate: bool = True, share_prefix: bool = True
) -> torch.Tensor:
    """Projected text features from token embeddings (B, L, D) and EOT positions (B,)."""
    length = int(eot.max()) + 1 if truncate else embeddings.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = embeddings[:, :length].to(cast) + model.positional_embedding[:length].to(cast)
    prefix_len = shared_prefix_length(embeddings[:, :length], eot) if share_prefix and truncate else 0
    if prefix_len >= 2 and len(x) > 1 and _supports_prefix_sharing(model):
        prefix, suffix = x[:1, :prefix_len], x[:, prefix_len:]
        for block in model.transformer.resblocks:
            prefix, suffix = _block_with_prefix(block, prefix, suffix)
        x = model.ln_final(suffix)
        x = x[torch.arange(x.shape[0], device=x.device), eot - prefix_len]
    else:
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def encode_tokens(model, tokens: torch.Tensor, truncate: bool = True, share_prefix: bool = True) -> torch.Tensor:
    return encode_embeddings(model, model.token_embedding(tokens), eot_positions(tokens), truncate, share_prefix)


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
