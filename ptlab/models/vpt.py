"""Deep visual prompts on a frozen ViT, and LPT's group prompt pool.

A `VisionTower` splits a ViT image encoder into token embedding, blocks and
head, so that learnable tokens can be appended before a block and dropped
after it (VPT-deep). The tokens carry no positional embedding and attention
is permutation-equivariant, so appending them at the end of the sequence is
the same model as VPT's insertion after the class token.

Two encoders are adapted:
  any open_clip ViT source of `load_backbone` (world:tiny-vit,
      ViT-B-16:openai, ...): the open_clip VisionTransformer of the CLIP, its
      feature the projected pooled token, exactly what `encode_image` returns;
  timm:NAME[:random|:/path/weights]: a timm VisionTransformer (LPT's
      backbone is timm:vit_base_patch16_224.augreg_in21k), its feature the
      pre-logits pooled token.
Both bring the backbone's own preprocessing (mean, std, interpolation).
With no prompt tokens the tower reproduces the frozen encoder's features
bit for bit; tests check it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptlab.models.backbone import TIMM, BackboneError, Preprocessing, load_backbone, parse_backbone, timm_preprocessing


class VisionTower(nn.Module):
    """A frozen ViT, run block by block with optional extra tokens per block."""

    blocks: nn.ModuleList | nn.Sequential

    def __init__(self, source: str, image_size: int, preprocessing: Preprocessing):
        super().__init__()
        self.source = source
        self.image_size = image_size
        self.preprocessing = preprocessing
        # what the transforms read of a backbone (ptlab.data.features)
        self.mean, self.std = preprocessing.mean, preprocessing.std
        self.interpolation, self.resize_mode = preprocessing.interpolation, preprocessing.resize_mode

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, N, width) entering the first block."""
        raise NotImplementedError

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image feature (B, feature_dim) from the last block's tokens."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> VisionTower:
        # Frozen encoder: dropout and the like stay in evaluation mode while prompts train.
        return super().train(False)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels.to(next(self.parameters()).dtype))

    def run_blocks(self, x: torch.Tensor, prompts: Sequence[torch.Tensor], start: int = 0) -> torch.Tensor:
        """Blocks start .. start + len(prompts) - 1; prompts[j] (B, P_j, width) joins block start + j, then leaves."""
        n_tokens = x.shape[1]
        for block, extra in zip(self.blocks[start : start + len(prompts)], prompts, strict=True):
            x = block(torch.cat([x, extra.to(x.dtype)], dim=1))[:, :n_tokens]
        return x

    def forward(self, pixels: torch.Tensor, prompts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Features of `pixels`; prompts[i] (B, P_i, width) are appended before block i and dropped after it."""
        x = self.tokens(pixels)
        if prompts is None:
            prompts = [x.new_zeros(len(x), 0, x.shape[2])] * self.depth
        return self.head(self.run_blocks(x, prompts))


class OpenClipTower(VisionTower):
    """The vision tower of an open_clip ViT CLIP; follows VisionTransformer.forward step by step."""

    def __init__(self, visual, source: str, image_size: int, preprocessing: Preprocessing):
        super().__init__(source, image_size, preprocessing)
        self.visual = visual
        self.blocks = visual.transformer.resblocks

    @property
    def width(self) -> int:
        return int(self.visual.transformer.width)

    @property
    def feature_dim(self) -> int:
        return int(self.visual.output_dim)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(pixels)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(tokens)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


class TimmTower(VisionTower):
    """A timm VisionTransformer; follows forward_features + forward_head(pre_logits=True)."""

    def __init__(self, model, source: str):
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise BackboneError(
                f"backbone {source!r} is a timm {type(model).__name__}; deep visual prompts need a timm "
                "VisionTransformer (e.g. timm:vit_base_patch16_224.augreg_in21k)"
            )
        size = model.patch_embed.img_size
        super().__init__(source, int(size[0]), timm_preprocessing(getattr(model, "pretrained_cfg", None) or {}))
        self.model = model
        self.blocks = model.blocks

    @property
    def width(self) -> int:
        return int(self.model.embed_dim)

    @property
    def feature_dim(self) -> int:
        return int(self.model.num_features)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels))))

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(tokens), pre_logits=True)


def load_vision_tower(source: str, device: str | torch.device = "cpu", precision: str = "fp32") -> VisionTower:
    """A frozen ViT tower from an open_clip backbone source or `timm:NAME[:random|:/path]`."""
    backbone = load_backbone(source, "cpu", precision)
    if parse_backbone(source).scheme == TIMM:
        tower: VisionTower = TimmTower(backbone.model, source)
    else:
        if not backbone.is_vit:
            raise BackboneError(
                f"backbone {source!r} has a {type(backbone.model.visual).__name__} image encoder; deep visual "
                "prompts need a ViT: world:tiny-vit, an open_clip ViT (ViT-B-16:openai) or a timm ViT "
                "(timm:vit_base_patch16_224.augreg_in21k)"
            )
        tower = OpenClipTower(backbone.model.visual, source, backbone.image_size, backbone.preprocessing)
    tower.requires_grad_(False)
    return tower.to(device).eval()


def _trunc_normal(shape: Sequence[int], generator: torch.Generator, std: float = 0.02) -> torch.Tensor:
    # LPT's initialisation (timm's trunc_normal_, std 0.02, cut at +-2 absolute) from an explicit generator.
    out = torch.empty(shape)
    nn.init.trunc_normal_(out, std=std, a=-2.0, b=2.0, generator=generator)
    return out


class CosineClassifier(nn.Module):
    """cos(feature, w_c) for every class c; the loss applies the scale s."""

    def __init__(self, dim: int, n_classes: int, generator: torch.Generator):
        super().__init__()
        # Unit-norm rows, as LPT's NormedLinear: the gradient of a cosine shrinks with |w|, so the
        # norm at initialisation sets the effective learning rate.
        self.weight = nn.Parameter(F.normalize(torch.randn(n_classes, dim, generator=generator), dim=-1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1) @ F.normalize(self.weight, dim=-1).T


class PromptPool(nn.Module):
    """m group prompts for the last L - K blocks, each with a key in the query's space."""

    def __init__(self, size: int, blocks: int, length: int, width: int, key_dim: int, top_k: int, generator):
        super().__init__()
        if not 1 <= top_k <= size:
            raise ValueError(f"top_k must be between 1 and the pool size {size}, got {top_k}")
        self.top_k = top_k
        self.prompts = nn.Parameter(_trunc_normal((size, blocks, length, width), generator))
        self.keys = nn.Parameter(_trunc_normal((size, key_dim), generator))

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(averaged prompts (B, blocks, P, width), key loss 1 - mean chosen cosine, chosen indices (B, k))."""
        similarity = F.normalize(query.float(), dim=-1) @ F.normalize(self.keys, dim=-1).T
        chosen_sim, chosen = similarity.topk(self.top_k, dim=1)
        return self.prompts[chosen].mean(dim=1), 1 - chosen_sim.mean(), chosen


class PromptedViT(nn.Module):
    """LPT's model: shared deep prompts + cosine classifier (stage 1), plus a group prompt pool (stage 2).

    Without a pool it is single-stage VPT-deep. In stage 2 the query is the
    stage-1 feature (shared prompts only); the pool's averaged prompts join
    the shared ones in blocks split_block .. L-1. In training mode the
    feature passes dropout (`feature_dropout`, LPT's release: 0.1) before
    the classifier; the query never does, as in the release.
    """

    def __init__(
        self,
        tower: VisionTower,
        n_classes: int,
        prompt_len: int,
        generator: torch.Generator,
        pool_size: int = 0,
        top_k: int = 1,
        split_block: int | None = None,
        feature_dropout: float = 0.0,
    ):
        super().__init__()
        self.tower = tower
        if not 0 <= feature_dropout < 1:
            raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout}")
        self.feature_dropout = feature_dropout
        depth, width = tower.depth, tower.width
        self.split_block = depth // 2 if split_block is None else split_block
        if not 0 <= self.split_block < depth:
            raise ValueError(f"split_block must be in [0, {depth}) for a {depth}-block ViT, got {self.split_block}")
        self.shared = nn.Parameter(_trunc_normal((depth, prompt_len, width), generator))
        self.classifier = CosineClassifier(tower.feature_dim, n_classes, generator)
        self.pool = (
            PromptPool(pool_size, depth - self.split_block, prompt_len, width, tower.feature_dim, top_k, generator)
            if pool_size > 0
            else None
        )

    def _shared(self, batch: int) -> list[torch.Tensor]:
        return [p.expand(batch, -1, -1) for p in self.shared]

    def dropout(self, features: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """LPT's Dropout before the classifier, in training mode only; the mask comes from `generator` (CPU)."""
        p = self.feature_dropout
        if not self.training or p == 0:
            return features
        keep = torch.rand(features.shape, generator=generator) >= p
        return features * keep.to(features.device, features.dtype) / (1 - p)

    def forward(
        self, pixels: torch.Tensor, use_pool: bool = False, dropout_generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine logits (B, C), key loss); the key loss is 0 without the pool."""
        shared = self._shared(len(pixels))
        if not use_pool:
            features = self.dropout(self.tower(pixels, shared), dropout_generator)
            return self.classifier(features), torch.zeros((), device=pixels.device)
        if self.pool is None:
            raise ValueError("this model has no prompt pool (pool_size = 0)")
        k = self.split_block
        # Stage 2 freezes the shared prompt, so blocks before K compute the same frozen tokens for the
        # query and for the prompted pass: run them once, without gradient.
        with torch.no_grad():
            prefix = self.tower.run_blocks(self.tower.tokens(pixels), shared[:k])
            query = self.tower.head(self.tower.run_blocks(prefix, shared[k:], k))
        group, key_loss, _ = self.pool.select(query)
        tail = [torch.cat([p, group[:, j]], dim=1) for j, p in enumerate(shared[k:])]
        features = self.dropout(self.tower.head(self.tower.run_blocks(prefix, tail, k)), dropout_generator)
        return self.classifier(features), key_loss

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen tower: what a checkpoint needs."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("tower.")}

