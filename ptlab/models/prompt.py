"""CoOp prompt learner: learnable context vectors around fixed class-name tokens.

Each class's prompt is `[SOS] [V1..VM] [class tokens] [.] [EOT]` (class token
at the end), with the context split around the class name (middle) or after
it (front). As in CoOp, the sentence "<context> <name>." is tokenised once,
with placeholder words (or the init phrase) as context, and its token rows
are moved into the position's order: the name is the first name_len tokens
after the context, name_len counted on the name alone. Where the name ends
in punctuation BPE merges it with the full stop, and the merged token moves
with the name (CoOp's slicing, matched exactly). At every step the learnable
vectors are written into the context slots of these frozen token embeddings,
so the prompt is exactly what the text tower would see for a sentence,
without string work in the loop.

An init phrase (ctx_init) gives one learned vector per word, the first
n_words tokens of the phrase, as CoOp; a word of several tokens leaves the
phrase's remaining tokens fixed after the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ptlab.models.text import encode_embeddings, eot_positions

PLACEHOLDER = "X"


@dataclass(frozen=True)
class PromptDesign:
    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a": initial context, n_ctx becomes its word count
    position: str = "end"  # end | middle | front
    csc: bool = False  # class-specific context
    learn_context: bool = True
    learn_classnames: bool = False  # also learn the class-name token embeddings
    init_std: float = 0.02


def _token_count(tokenizer, text: str) -> int:
    return int(eot_positions(tokenizer([text]))[0]) - 1


class PromptLearner(nn.Module):
    def __init__(self, backbone, classnames: list[str], design: PromptDesign, generator: torch.Generator | None = None):
        super().__init__()
        if design.position not in ("end", "middle", "front"):
            raise ValueError(f"class token position {design.position!r}; expected end, middle or front")
        model, tokenizer = backbone.model, backbone.tokenizer
        # A tuple keeps the frozen CLIP out of this module's children: train()
        # must not flip its BatchNorms, and state_dict() must not copy it.
        self._frozen = (model,)
        self.design = design
        emb = model.token_embedding.weight
        device = emb.device
        n_classes = len(classnames)
        if design.ctx_init:
            phrase = " ".join(design.ctx_init.replace("_", " ").split())
            n_ctx = len(phrase.split(" "))  # one learned vector per word, as CoOp
            prefix_text = phrase
        else:
            n_ctx = design.n_ctx
            prefix_text = " ".join([PLACEHOLDER] * n_ctx)
        self.n_ctx = n_ctx
        names = [c.replace("_", " ") for c in classnames]
        name_lens = [_token_count(tokenizer, n) for n in names]
        before = {"end": n_ctx, "middle": n_ctx // 2, "front": 0}[design.position]  # context slots before the name
        after = n_ctx - before
        # CoOp tokenises "<context> <name>." and moves rows: the name is the
        # name_len tokens after the context, wherever BPE put the boundary. A
        # name ending in punctuation merges it with the full stop (")." is one
        # token), and that merged token goes with the name.
        needed = 1 + _token_count(tokenizer, prefix_text) + max(name_lens) + 2  # SOS, context, name, ".", EOT
        if needed > model.context_length:
            raise ValueError(
                f"prompts need {needed} tokens with {n_ctx} context tokens and the longest class name, "
                f"but the text context length is {model.context_length}; use fewer context tokens"
            )
        sentences = tokenizer([f"{prefix_text} {n}." for n in names]).to(device)
        length = sentences.shape[1]
        layouts, ctx_pos, name_pos = [], [], []
        name_start = 1 + before
        for n_len in name_lens:
            context, name = list(range(1, 1 + n_ctx)), list(range(1 + n_ctx, 1 + n_ctx + n_len))
            rest = list(range(1 + n_ctx + n_len, length))
            layouts.append([0, *context[:before], *name, *context[before:], *rest])
            ctx_pos.append(list(range(1, name_start)) + list(range(name_start + n_len, name_start + n_len + after)))
            name_pos.append(list(range(name_start, name_start + n_len)))
        layout = torch.tensor(layouts, dtype=torch.long, device=device)
        tokens = sentences.gather(1, layout)
        with torch.no_grad():
            sentence_emb = model.token_embedding(sentences).detach()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot", eot_positions(tokens), persistent=False)
        self.register_buffer(
            "base", sentence_emb.gather(1, layout.unsqueeze(-1).expand(-1, -1, sentence_emb.shape[-1])), persistent=False
        )
        self.register_buffer("ctx_rows", torch.arange(n_classes, device=device).repeat_interleave(n_ctx), persistent=False)
        self.register_buffer("ctx_cols", torch.tensor([p for ps in ctx_pos for p in ps], dtype=torch.long, device=device), persistent=False)
        self.register_buffer(
            "name_rows",
            torch.tensor([c for c, ps in enumerate(name_pos) for _ in ps], dtype=torch.long, device=device),
            persistent=False,
        )
        self.register_buffer("name_cols", torch.tensor([p for ps in name_pos for p in ps], dtype=torch.long, device=device), persistent=False)

        width = emb.shape[1]
        if design.ctx_init:
            # The first n_ctx tokens of the phrase learn (one per word); a word of several
            # tokens leaves its later tokens, and those of the words after it, fixed in the
            # prompt after the context, as in CoOp.
            init = sentence_emb[0, 1 : 1 + n_ctx].clone()  # (n_ctx, D)
            # CSC with a phrase copies the phrase into every class (the released code ignores CSC here).
            ctx = init.unsqueeze(0).repeat(n_classes, 1, 1) if design.csc else init
        else:
            shape = (n_classes, n_ctx, width) if design.csc else (n_ctx, width)
            ctx = torch.empty(shape, dtype=emb.dtype).normal_(0, design.init_std, generator=generator).to(device)
        self.ctx = nn.Parameter(ctx, requires_grad=design.learn_context)
        self.class_embeddings = nn.Parameter(
            self.base[self.name_rows, self.name_cols].clone(), requires_grad=design.learn_classnames
        )

    @property
    def model(self):
        return self._frozen[0]

    @property
    def n_classes(self) -> int:
        return self.tokens.shape[0]

    def prompt_embeddings(self) -> torch.Tensor:
        """(C, L, D) token embeddings of every class prompt with the current context."""
        if self.design.csc:
            ctx_values = self.ctx.reshape(-1, self.ctx.shape[-1])
        else:
            ctx_values = self.ctx.repeat(self.n_classes, 1)
        prompts = self.base
        if self.n_ctx:
            prompts = prompts.index_put((self.ctx_rows, self.ctx_cols), ctx_values.to(prompts.dtype))
        if self.design.learn_classnames:
            prompts = prompts.index_put((self.name_rows, self.name_cols), self.class_embeddings.to(prompts.dtype))
        return prompts

    def forward(self, truncate: bool = True, share_prefix: bool = True) -> torch.Tensor:
        """Normalised class text features (C, E)."""
        feats = encode_embeddings(self.model, self.prompt_embeddings(), self.eot, truncate, share_prefix)
        return F.normalize(feats.float(), dim=-1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx.detach().clone(), "class_embeddings": self.class_embeddings.detach().clone()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.ctx.copy_(state["ctx"])
            self.class_embeddings.copy_(state["class_embeddings"])
