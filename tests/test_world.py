import numpy as np
import pytest

from ptlab.world.captions import caption, positives
from ptlab.world.render import COLOR_NAMES, DOMAINS, PATTERNS, SHAPES, Attributes, render
from ptlab.world.tasks import LONG_TAILED, TASKS, long_tail_counts, make_split, render_split


def _attrs(n, seed0=0):
    idx = np.arange(n)
    return Attributes(shape=idx % 10, color=(idx // 3) % 10, pattern=idx % 6, size=idx % 3, domain=idx % 3, seed=seed0 + idx)


def test_render_is_a_pure_function_of_attributes_and_seed():
    a = _attrs(30)
    first, second = render(a), render(a)
    assert first.dtype == np.uint8 and first.shape == (30, 32, 32, 3)
    assert np.array_equal(first, second)
    # An image does not depend on its batch neighbours.
    alone = render(a.take(np.array([7])))
    assert np.array_equal(alone[0], first[7])


def test_seed_changes_nuisance_but_not_class():
    a, b = _attrs(10), _attrs(10, seed0=1000)
    assert not np.array_equal(render(a), render(b))


def test_world_has_required_vocabulary():
    assert len(SHAPES) >= 10 and len(COLOR_NAMES) >= 10 and len(PATTERNS) >= 4
    assert {"photo", "outline"} <= set(DOMAINS)


def test_domains_draw_differently():
    base = _attrs(12)
    images = []
    for d in range(len(DOMAINS)):
        attrs = Attributes(**{**{k: getattr(base, k) for k in base.__dataclass_fields__}, "domain": np.full(12, d)})
        images.append(render(attrs).astype(int))
    assert np.abs(images[0] - images[1]).mean() > 3
    assert np.abs(images[0] - images[2]).mean() > 3


@pytest.mark.parametrize(
    "task,n_classes,first",
    [("shapes", 10, "circle"), ("colors", 10, "red"), ("color-shapes", 100, "red circle"), ("patterns", 6, "plain"), ("sizes", 3, "small")],
)
def test_task_class_names_and_split_sizes(task, n_classes, first):
    t = TASKS[task]
    assert len(t.classnames) == n_classes and t.classnames[0] == first
    for split in ("train", "val", "test"):
        ws = make_split(task, split)
        assert len(ws.labels) == n_classes * t.per_class[split]
        assert np.array_equal(np.bincount(ws.labels), np.full(n_classes, t.per_class[split]))


def test_labels_match_rendered_attributes():
    ws = make_split("color-shapes", "test")
    names = TASKS["color-shapes"].classnames
    for i in (0, 57, 1999):
        color, shape = names[ws.labels[i]].split()
        assert COLOR_NAMES[ws.attributes.color[i]] == color and SHAPES[ws.attributes.shape[i]] == shape


def test_splits_do_not_share_images_and_domains_share_scenes():
    train, test = make_split("shapes", "train"), make_split("shapes", "test")
    assert not set(train.attributes.seed) & set(test.attributes.seed)
    outline = make_split("shapes", "test", domain="outline")
    assert np.array_equal(outline.attributes.seed, test.attributes.seed)
    assert not np.array_equal(render_split(outline)[:5], render_split(test)[:5])


def test_long_tailed_profile():
    counts = long_tail_counts(200, 100, 100.0)
    assert counts[0] == 200 and counts[-1] == 2
    assert np.all(np.diff(counts) <= 0)
    ws = make_split("color-shapes-lt", "train", imbalance=10.0)
    got = np.bincount(ws.labels, minlength=100)
    assert np.array_equal(got, long_tail_counts(200, 100, 10.0))
    assert "color-shapes-lt" in LONG_TAILED
    # val/test stay balanced
    assert len(set(np.bincount(make_split("color-shapes-lt", "test").labels))) == 1


def test_unknown_task_domain_split_errors():
    with pytest.raises(KeyError, match="known: "):
        make_split("nope", "train")
    with pytest.raises(KeyError, match="domain"):
        make_split("shapes", "train", domain="watercolour")


def test_captions_claim_only_true_attributes():
    a = _attrs(200)
    rng = np.random.default_rng(0)
    claims, texts = [], []
    for i in range(200):
        text, claim = caption(a, i, rng)
        texts.append(text)
        claims.append(claim)
        if claim[0] >= 0:
            assert SHAPES[claim[0]] in text
        if claim[1] >= 0:
            assert COLOR_NAMES[claim[1]] in text
    match = positives(np.stack(claims), a, np.arange(200))
    assert match.diagonal().all()
    assert len(set(texts)) > 50
