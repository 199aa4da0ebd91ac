import pytest
import torch

from ptlab.models.backbone import load_backbone
from ptlab.models.prompt import PromptDesign, PromptLearner
from ptlab.models.text import encode_embeddings, encode_tokens, eot_positions

CLASSNAMES = ["banded", "blotchy", "sailing boat", "red star", "x"]


@pytest.fixture(scope="module", params=["RN50:random", "ViT-B-32:random", "tiny"])
def backbone(request, random_tiny_clip):
    return load_backbone(random_tiny_clip if request.param == "tiny" else request.param)


def test_eot_truncation_is_exact(backbone):
    tokens = backbone.tokenize([f"a photo of a {c}, a type of texture." for c in CLASSNAMES])
    with torch.no_grad():
        full = encode_tokens(backbone.model, tokens, truncate=False)
        cut = encode_tokens(backbone.model, tokens, truncate=True)
        reference = backbone.model.encode_text(tokens)
    assert (full - reference).abs().max() <= 1e-5
    assert (cut - full).abs().max() <= 1e-5


def test_learned_prompts_truncate_exactly(backbone):
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(n_ctx=16), torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (learner(truncate=True) - learner(truncate=False)).abs().max() <= 1e-5


def test_phrase_init_reproduces_the_sentence(backbone):
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(ctx_init="a photo of a"))
    assert learner.n_ctx == 4
    tokens = backbone.tokenize([f"a photo of a {c}." for c in CLASSNAMES])
    with torch.no_grad():
        expected = backbone.model.token_embedding(tokens)
        assert torch.equal(learner.prompt_embeddings(), expected)
        assert torch.allclose(learner(), torch.nn.functional.normalize(backbone.model.encode_text(tokens), dim=-1), atol=1e-5)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_class_token_positions(backbone, position):
    design = PromptDesign(n_ctx=4, position=position)
    learner = PromptLearner(backbone, CLASSNAMES, design, torch.Generator().manual_seed(0))
    emb = learner.prompt_embeddings()
    ctx = learner.ctx
    name = backbone.model.token_embedding(backbone.tokenize(["sailing boat"]))[0, 1:3]
    row = emb[2]
    slots = {"end": (range(1, 5), range(5, 7)), "middle": (list(range(1, 3)) + list(range(5, 7)), range(3, 5)),
             "front": (range(3, 7), range(1, 3))}[position]
    assert torch.equal(row[list(slots[0])], ctx)
    assert torch.equal(row[list(slots[1])], name)
    assert int(learner.eot[2]) == 1 + 4 + 2 + 1


def test_csc_with_phrase_copies_phrase_to_every_class(backbone):
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(ctx_init="a photo of a", csc=True))
    assert learner.ctx.shape[:2] == (len(CLASSNAMES), 4)
    assert all(torch.equal(learner.ctx[0], learner.ctx[c]) for c in range(len(CLASSNAMES)))
    random = PromptLearner(backbone, CLASSNAMES, PromptDesign(n_ctx=3, csc=True), torch.Generator().manual_seed(0))
    assert not torch.equal(random.ctx[0], random.ctx[1])


def test_only_context_receives_gradient(backbone):
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(n_ctx=4), torch.Generator().manual_seed(0))
    learner().sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert learner.class_embeddings.grad is None
    assert all(p.grad is None for p in backbone.model.parameters())


def test_learnable_class_names_move_only_name_slots(backbone):
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(n_ctx=2, learn_classnames=True), torch.Generator().manual_seed(0))
    with torch.no_grad():
        learner.class_embeddings.add_(1.0)
    emb = learner.prompt_embeddings()
    base = learner.base
    changed = (emb != base).any(-1)
    assert changed[2, 3:5].all() and not changed[2, 5:].any()


def test_too_long_prompt_is_refused(random_tiny_clip):
    tiny = load_backbone(random_tiny_clip)
    with pytest.raises(ValueError, match="context length"):
        PromptLearner(tiny, CLASSNAMES, PromptDesign(n_ctx=40))


def test_eot_is_largest_token(backbone):
    tokens = backbone.tokenize(["a b c", "a"])
    assert eot_positions(tokens).tolist() == [4, 2]
    emb = backbone.model.token_embedding(tokens)
    with torch.no_grad():
        assert encode_embeddings(backbone.model, emb, eot_positions(tokens)).shape[0] == 2


@pytest.mark.parametrize("position", ["end", "middle"])
def test_shared_prefix_is_exact_forward_and_backward(backbone, position):
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(n_ctx=8, position=position), torch.Generator().manual_seed(0))
    emb = learner.prompt_embeddings()
    fast = encode_embeddings(backbone.model, emb, learner.eot, share_prefix=True)
    plain = encode_embeddings(backbone.model, emb, learner.eot, share_prefix=False)
    assert (fast - plain).abs().max() <= 1e-5
    (g_fast,) = torch.autograd.grad(fast.square().sum(), learner.ctx, retain_graph=True)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), learner.ctx)
    assert (g_fast - g_plain).abs().max() <= 1e-4 * max(1.0, float(g_plain.abs().max()))


def test_shared_prefix_length_detection():
    from ptlab.models.text import shared_prefix_length

    emb = torch.zeros(3, 6, 2)
    emb[1, 4] = 1.0
    assert shared_prefix_length(emb, torch.tensor([5, 5, 5])) == 4
    assert shared_prefix_length(emb, torch.tensor([2, 5, 5])) == 2


def coop_prompts(embedding: torch.Tensor, n_ctx: int, ctx: torch.Tensor, name_lens: list[int], position: str):
    """CoOp's PromptLearner.forward, written from its description: slices of the sentence's token rows."""
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx :]
    rows = []
    for i, n_len in enumerate(name_lens):
        name, rest = suffix[i : i + 1, :n_len], suffix[i : i + 1, n_len:]
        ctx_i = ctx.unsqueeze(0)
        parts = {"end": [ctx_i, suffix[i : i + 1]],
                 "middle": [ctx_i[:, : n_ctx // 2], name, ctx_i[:, n_ctx // 2 :], rest],
                 "front": [name, ctx_i, rest]}[position]
        rows.append(torch.cat([prefix[i : i + 1], *parts], dim=1))
    return torch.cat(rows)


# StanfordCars-style names ending in punctuation: BPE merges ")" with the full stop into one token.
PUNCTUATED = ["hummer (car)", "model t.", "sailing boat", "mr. x!"]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_punctuated_names_are_sliced_as_coop_slices_them(backbone, position):
    n_ctx = 4
    learner = PromptLearner(backbone, PUNCTUATED, PromptDesign(n_ctx=n_ctx, position=position),
                            torch.Generator().manual_seed(0))
    sentences = backbone.tokenize([" ".join(["X"] * n_ctx) + f" {c}." for c in PUNCTUATED])
    name_lens = [int(eot_positions(backbone.tokenize([c]))[0]) - 1 for c in PUNCTUATED]
    with torch.no_grad():
        embedding = backbone.model.token_embedding(sentences)
        expected = coop_prompts(embedding, n_ctx, learner.ctx, name_lens, position)
        assert torch.equal(learner.prompt_embeddings(), expected)
        # CoOp's text encoder reads the feature at the EOT of the unpermuted sentence
        coop = encode_embeddings(backbone.model, expected, eot_positions(sentences), share_prefix=False)
        assert (learner() - torch.nn.functional.normalize(coop.float(), dim=-1)).abs().max() <= 1e-5
    if position == "middle":  # the merged ")." token sits inside the name, before the second context half
        merged = backbone.tokenize(["X hummer (car)."])[0, 1 + name_lens[0]]  # SOS, X, then the name
        assert int(learner.tokens[0, 1 + n_ctx // 2 + name_lens[0] - 1]) == int(merged)


def test_multi_token_init_words_learn_one_vector_each(backbone):
    phrase = "a photo of a hotdog-style"  # 5 words, the last one several tokens
    learner = PromptLearner(backbone, CLASSNAMES, PromptDesign(ctx_init=phrase))
    assert learner.n_ctx == 5
    tokens = backbone.tokenize([f"{phrase} {c}." for c in CLASSNAMES])
    assert int(eot_positions(backbone.tokenize([phrase]))[0]) - 1 > 5
    with torch.no_grad():
        expected = backbone.model.token_embedding(tokens)
        assert torch.equal(learner.ctx, expected[0, 1:6])
        assert torch.equal(learner.prompt_embeddings(), expected)  # later tokens of the word stay in the prompt
    learner().sum().backward()
    assert learner.ctx.grad.shape == (5, expected.shape[-1])
