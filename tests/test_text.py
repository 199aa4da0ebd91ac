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
