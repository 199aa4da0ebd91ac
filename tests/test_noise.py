import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.data.noise import NoisyLabels, add_label_noise, nearest_class_pairs, ptnl_noise, wrong_count

C = 5
label_arrays = st.lists(st.integers(0, C - 1), min_size=1, max_size=60).map(np.array)
rates = st.sampled_from([0.0, 0.125, 0.25, 0.3, 0.5, 0.75, 0.9])
seeds = st.integers(0, 2**31)


def scores_for(labels, seed=0):
    return np.random.default_rng(seed).normal(size=(len(labels), C))


def noisy(labels, kind, rate, seed, **kw):
    if kind == "confusion":
        kw.setdefault("scores", scores_for(labels))
    return add_label_noise(labels, kind, rate, seed, num_classes=C, **kw)


def test_wrong_count_rounds_halves_up():
    assert wrong_count(0.25, 16) == 4
    assert wrong_count(0.125, 4) == 1  # 0.5 rounds up (Python's round() would give 0)
    assert wrong_count(0.3, 5) == 2  # 1.5
    assert wrong_count(0.1, 4) == 0  # 0.4
    assert wrong_count(0.5, np.array([1, 3, 16])).tolist() == [1, 2, 8]


@settings(deadline=None, max_examples=60)
@given(labels=label_arrays, kind=st.sampled_from(["symmetric", "pair", "confusion"]), rate=rates, seed=seeds)
def test_wrong_count_is_exact_per_class_and_no_wrong_label_is_true(labels, kind, rate, seed):
    result = noisy(labels, kind, rate, seed)
    assert np.array_equal(result.true_labels, labels)
    assert np.array_equal(result.indices, np.arange(len(labels)))
    for c in range(C):
        of_c = labels == c
        assert result.is_noisy[of_c].sum() == wrong_count(rate, of_c.sum())
    expected_total = sum(int(wrong_count(rate, np.sum(labels == c))) for c in range(C))
    assert result.rate == expected_total / len(labels)
    assert np.all(result.labels[result.is_noisy] != labels[result.is_noisy])
    assert np.array_equal(result.labels[~result.is_noisy], labels[~result.is_noisy])
    assert np.all((result.labels >= 0) & (result.labels < C))


@pytest.mark.parametrize("kind", ["symmetric", "pair", "confusion"])
def test_same_seed_same_set_and_other_seeds_differ(kind):
    labels = np.repeat(np.arange(C), 16)
    first = noisy(labels, kind, 0.25, 1)
    again = noisy(labels.copy(), kind, 0.25, 1)
    assert np.array_equal(first.labels, again.labels)
    noisy_sets = {noisy(labels, kind, 0.25, seed).is_noisy.tobytes() for seed in range(20)}
    assert len(noisy_sets) == 20


def test_noise_is_pinned_across_machines_and_numpy_versions():
    # A changed value here means every stored noisy set would change: only bump it on purpose.
    labels = np.repeat(np.arange(C), 4)
    result = add_label_noise(labels, "symmetric", 0.25, 1, num_classes=C)
    assert result.labels.tolist() == [0, 0, 3, 0, 1, 4, 1, 1, 3, 2, 2, 2, 1, 3, 3, 3, 3, 4, 4, 4]


def test_indices_are_carried_through():
    labels = np.array([0, 1, 2, 3])
    result = add_label_noise(labels, "symmetric", 0.5, 1, num_classes=C, indices=[10, 20, 30, 40])
    assert result.indices.tolist() == [10, 20, 30, 40]


def test_kinds_mislabel_the_same_samples_at_one_seed_and_rate():
    labels = np.repeat(np.arange(C), 16)
    masks = [noisy(labels, kind, 0.25, 3).is_noisy for kind in ("symmetric", "pair", "confusion")]
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])


def test_noisy_sets_are_nested_in_the_rate():
    labels = np.repeat(np.arange(C), 16)
    lower, higher = noisy(labels, "symmetric", 0.25, 4), noisy(labels, "symmetric", 0.5, 4)
    assert np.all(higher.is_noisy[lower.is_noisy])
    assert np.array_equal(higher.labels[lower.is_noisy], lower.labels[lower.is_noisy])


def test_symmetric_wrong_labels_are_uniform_over_the_other_classes():
    labels = np.repeat(np.arange(4), 1000)
    result = add_label_noise(labels, "symmetric", 0.6, 0, num_classes=4)
    for c in range(4):
        new = result.labels[result.is_noisy & (labels == c)]
        counts = np.bincount(new, minlength=4)
        assert counts[c] == 0
        # 600 wrong labels over 3 classes: 200 each, sd ~12
        assert np.all(np.abs(np.delete(counts, c) - 200) < 50)


def test_pair_noise_flips_to_the_next_class_by_default():
    labels = np.repeat(np.arange(C), 8)
    result = noisy(labels, "pair", 0.5, 1)
    flipped = result.is_noisy
    assert np.array_equal(result.labels[flipped], (labels[flipped] + 1) % C)


def test_pair_noise_follows_a_given_map():
    pairs = np.array([3, 0, 4, 1, 2])
    labels = np.repeat(np.arange(C), 8)
    result = noisy(labels, "pair", 0.5, 1, pairs=pairs)
    assert np.array_equal(result.labels[result.is_noisy], pairs[labels[result.is_noisy]])


def test_nearest_class_pairs_by_cosine():
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.1]])
    # cosines: 0~1 0.994; 2~1 0.110, 2~3 0.0995, 2~0 0; 3~2 0.0995, 3~1 -0.977, 3~0 -0.995
    assert nearest_class_pairs(features).tolist() == [1, 0, 1, 2]
    assert nearest_class_pairs(torch.tensor(features * 7, dtype=torch.float16)).tolist() == [1, 0, 1, 2]


def test_confusion_picks_the_top_scoring_wrong_class_by_hand():
    labels = np.array([1, 0])
    scores = np.array([[5.0, 9.0, 7.0], [8.0, 2.0, 3.0]])
    result = add_label_noise(labels, "confusion", 0.5, 0, num_classes=3, scores=scores)
    # one of each class is wrong: row 0 (true 1) goes to 2 (7 > 5), row 1 (true 0) to 2 (3 > 2)
    assert result.labels.tolist() == [2, 2]


@settings(deadline=None, max_examples=40)
@given(labels=label_arrays, seed=seeds, score_seed=st.integers(0, 1000))
def test_confusion_picks_the_top_scoring_wrong_class(labels, seed, score_seed):
    scores = scores_for(labels, score_seed)
    result = add_label_noise(labels, "confusion", 0.5, seed, num_classes=C, scores=torch.tensor(scores))
    masked = scores.copy()
    masked[np.arange(len(labels)), labels] = -np.inf
    assert np.array_equal(result.labels[result.is_noisy], masked.argmax(axis=1)[result.is_noisy])


def test_no_noise_keeps_every_label():
    labels = np.array([0, 1, 2])
    result = add_label_noise(labels, "none", 0.0, 1, num_classes=3)
    assert result.rate == 0 and np.array_equal(result.labels, labels)


def test_noisy_labels_are_read_only_and_consistent():
    result = NoisyLabels(np.array([4, 5]), np.array([1, 0]), np.array([1, 1]))
    assert result.is_noisy.tolist() == [False, True] and result.rate == 0.5 and len(result) == 2
    with pytest.raises(ValueError):
        result.labels[0] = 2
    with pytest.raises(ValueError, match="one length"):
        NoisyLabels(np.array([0, 1]), np.array([0]), np.array([0]))
    assert NoisyLabels(np.zeros(0), np.zeros(0), np.zeros(0)).rate == 0.0


@pytest.mark.parametrize(
    ("kind", "rate", "extra", "message"),
    [
        ("symmetric", -0.1, {}, r"\[0, 1\)"),
        ("symmetric", 1.0, {}, r"\[0, 1\)"),
        ("symmetric", math.nan, {}, r"\[0, 1\)"),
        ("gaussian", 0.2, {}, "unknown noise type"),
        ("ptnl", 0.2, {}, "ptnl_noise"),
        ("none", 0.2, {}, "rate 0"),
        ("confusion", 0.2, {}, "needs scores"),
        ("confusion", 0.2, {"scores": np.zeros((4, C - 1))}, r"shape \(N, C\) = \(4, 5\)"),
        ("confusion", 0.2, {"scores": np.full((4, C), np.nan)}, "finite"),
        ("pair", 0.2, {"pairs": np.array([1, 1, 3, 4, 0])}, "to themselves"),
        ("pair", 0.2, {"pairs": np.array([1, 2, 3])}, "pairs must be 5"),
        ("pair", 0.2, {"pairs": np.array([1, 2, 3, 4, 5])}, r"\[0, 5\)"),
    ],
)
def test_bad_arguments_are_rejected(kind, rate, extra, message):
    with pytest.raises(ValueError, match=message):
        add_label_noise(np.array([0, 1, 2, 3]), kind, rate, 1, num_classes=C, **extra)


def test_labels_outside_the_classes_and_single_class_noise_are_rejected():
    with pytest.raises(ValueError, match="num_classes=3"):
        add_label_noise(np.array([0, 3]), "symmetric", 0.5, 1, num_classes=3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        add_label_noise(np.array([0, 0]), "symmetric", 0.5, 1, num_classes=1)


def test_nearest_class_pairs_rejects_bad_features():
    with pytest.raises(ValueError, match="C >= 2"):
        nearest_class_pairs(np.ones((1, 3)))
    with pytest.raises(ValueError, match="zero rows"):
        nearest_class_pairs(np.array([[1.0, 0.0], [0.0, 0.0]]))


# ---- ptnl: the released code's noisy few-shot set ----


def halves(labels):
    """first/second half membership per image, by split order within each class."""
    first = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        first[members[: math.ceil(len(members) / 2)]] = True
    return first


class_sizes = st.lists(st.integers(1, 40), min_size=3, max_size=6)


def assert_ptnl_structure(result, labels):
    """Sorted, each image once, true labels kept; wrong images from second halves, correct ones from first."""
    first = halves(labels)
    assert np.all(np.diff(result.indices) > 0)
    assert np.array_equal(result.true_labels, labels[result.indices])
    assert not first[result.indices[result.is_noisy]].any()
    assert first[result.indices[~result.is_noisy]].all()


@settings(deadline=None, max_examples=50)
@given(sizes=class_sizes, shots=st.integers(0, 8), rate=st.sampled_from([0.0, 0.125, 0.25, 0.5]), seed=seeds, mix=seeds)
def test_ptnl_distinct_counts_follow_the_rate_and_wrong_images_come_from_other_second_halves(sizes, shots, rate, seed, mix):
    labels = np.random.default_rng(mix).permutation(np.repeat(np.arange(len(sizes)), sizes))
    try:
        result = ptnl_noise(labels, shots, rate, seed, distinct=True)
    except ValueError as err:
        assert "unused second-half images" in str(err)
        return
    assert_ptnl_structure(result, labels)
    for c in range(len(sizes)):
        given_c = result.labels == c
        first_half_size = math.ceil(sizes[c] / 2)
        k = first_half_size if shots == 0 else min(shots, first_half_size)
        assert given_c.sum() == k
        assert result.is_noisy[given_c].sum() == wrong_count(rate, k)


@settings(deadline=None, max_examples=50)
@given(sizes=class_sizes, shots=st.integers(1, 8), rate=st.sampled_from([0.0, 0.125, 0.25, 0.5]), seed=seeds, mix=seeds)
def test_ptnl_release_fixes_the_wrong_count_at_k(sizes, shots, rate, seed, mix):
    labels = np.random.default_rng(mix).permutation(np.repeat(np.arange(len(sizes)), sizes))
    try:
        result = ptnl_noise(labels, shots, rate, seed)
    except ValueError as err:
        assert "no unused second-half image" in str(err)
        return
    assert_ptnl_structure(result, labels)
    for c in range(len(sizes)):
        given_c = result.labels == c
        n_wrong, n_right = result.is_noisy[given_c].sum(), (~result.is_noisy[given_c]).sum()
        # wrong images are drawn with replacement too: a repeat collapses, never more than r * K
        assert 1 <= n_wrong <= wrong_count(rate, shots) or n_wrong == wrong_count(rate, shots) == 0
        half = math.ceil(sizes[c] / 2)
        if half >= shots:
            assert n_right == shots - wrong_count(rate, shots)
        else:
            assert 1 <= n_right <= min(half, shots - wrong_count(rate, shots)) or wrong_count(rate, shots) == shots


def test_ptnl_release_gives_exactly_k_labelled_per_class_when_halves_are_long():
    # 10 classes of 400 images, K = 16 at 50%: 16 labelled c, 8 wrong, in every class (the case)
    labels = np.repeat(np.arange(10), 400)
    for seed in range(5):
        result = ptnl_noise(labels, 16, 0.5, seed)
        counts = np.bincount(result.labels, minlength=10)
        wrong = np.bincount(result.labels[result.is_noisy], minlength=10)
        # a repeated wrong draw (8 draws from a pool of about 1800: 1.6% of classes) loses one wrong image
        assert np.all(counts - wrong == 8)
        assert np.all((wrong >= 7) & (wrong <= 8)) and np.mean(wrong == 8) >= 0.8


def test_ptnl_short_half_release_keeps_the_wrong_count_and_repeats_correct_draws():
    # class 0 has 18 images (a 9-image first half); classes 1-3 have 400, so wrong draws rarely repeat
    labels = np.repeat(np.arange(4), [18, 400, 400, 400])
    right, wrong = [], []
    for seed in range(300):
        release = ptnl_noise(labels, 16, 0.125, seed)
        in_class = release.labels == 0
        right.append(int((~release.is_noisy[in_class]).sum()))
        wrong.append(int(release.is_noisy[in_class].sum()))
    assert max(right) <= 9 and min(right) < 9  # 14 draws with replacement from 9 images
    # expected distinct images among 14 uniform draws from 9: 9 * (1 - (8/9)^14) = 7.27
    assert abs(np.mean(right) - 9 * (1 - (8 / 9) ** 14)) < 0.15
    assert np.mean(np.array(wrong) == 2) > 0.98 and set(wrong) <= {1, 2}
    distinct = ptnl_noise(labels, 16, 0.125, 0, distinct=True)
    in_class = distinct.labels == 0
    assert in_class.sum() == 9 and distinct.is_noisy[in_class].sum() == 1  # ptlab's variant: 9 labelled, 1 wrong


def test_ptnl_kinds_are_routed_from_the_trial_config():
    from ptlab.config import TrialConfig

    assert TrialConfig(noise_type="ptnl_distinct", noise_rate=0.5).noise_type == "ptnl_distinct"
    with pytest.raises(ValueError, match="ptnl_noise"):
        add_label_noise(np.array([0, 1]), "ptnl_distinct", 0.5, 1, num_classes=2)


def test_ptnl_replaces_shots_rather_than_adding_them():
    labels = np.repeat(np.arange(4), 40)
    clean = ptnl_noise(labels, 8, 0.0, 5)
    half = ptnl_noise(labels, 8, 0.5, 5)
    assert clean.rate == 0 and len(clean) == len(half) == 32
    assert set(half.indices[~half.is_noisy]) < set(clean.indices)


def test_ptnl_is_deterministic_and_seeds_differ():
    labels = np.repeat(np.arange(5), 30)
    first = ptnl_noise(labels, 8, 0.25, 1)
    again = ptnl_noise(labels.copy(), 8, 0.25, 1)
    assert np.array_equal(first.indices, again.indices) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.indices, ptnl_noise(labels, 8, 0.25, 2).indices)


def test_ptnl_wrong_images_come_from_classes_in_proportion_to_their_size():
    sizes = [400, 40, 40, 40, 40]
    labels = np.repeat(np.arange(5), sizes)
    from_big = total = 0
    for seed in range(50):
        result = ptnl_noise(labels, 16, 0.5, seed)
        wrong_small = result.is_noisy & (result.labels > 0)
        from_big += np.sum(result.true_labels[wrong_small] == 0)
        total += wrong_small.sum()
    # a small class draws from second halves of 200 (class 0) and 3 x 20: 200/260 = 0.77
    assert 0.70 < from_big / total < 0.84


def test_ptnl_skips_a_class_id_without_images():
    labels = np.repeat([0, 2], [400, 400])  # class 1 has no image
    for distinct in (False, True):
        result = ptnl_noise(labels, 16, 0.25, 1, distinct=distinct)
        assert np.bincount(result.labels, minlength=3).tolist() == [16, 0, 16]


def test_ptnl_zero_shots_takes_the_whole_first_half():
    labels = np.repeat(np.arange(3), [10, 7, 4])
    result = ptnl_noise(labels, 0, 0.0, 1)
    assert np.bincount(result.labels).tolist() == [5, 4, 2]


def test_ptnl_rejects_a_set_without_enough_wrong_images():
    # class 1 has one image, all first half: class 0's wrong image has nowhere to come from
    with pytest.raises(ValueError, match="unused second-half images"):
        ptnl_noise(np.array([0, 0, 1]), 1, 0.5, 1, distinct=True)
    with pytest.raises(ValueError, match="no unused second-half image"):
        ptnl_noise(np.array([0, 0, 1]), 1, 0.5, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ptnl_noise(np.array([0, 1]), 1, 1.0, 1)
    with pytest.raises(ValueError, match="shots"):
        ptnl_noise(np.array([0, 1]), -1, 0.0, 1)



@pytest.mark.parametrize("kind", ["symmetric", "pair", "confusion", "ptnl"])
def test_at_rate_0_only_noise_types_that_mislabel_a_given_sample_draw_the_clean_training_set(kind):
    """What makes their trials one (TrialConfig.canonical): the training set itself, drawn as a trial draws it."""
    from ptlab.config import TrialConfig
    from ptlab.data.sources import load_dataset
    from ptlab.methods.supervision import noisy_training_set

    bundle = load_dataset("world:shapes")
    # no backbone or feature cache: at rate 0 confusion noise must not need its zero-shot scores
    drawn = noisy_training_set(TrialConfig(noise_type=kind, noise_rate=0.0, seed=3), bundle, None, None)
    clean = noisy_training_set(TrialConfig(seed=3), bundle, None, None)
    assert drawn.rate == 0
    same = all(np.array_equal(getattr(drawn, f), getattr(clean, f)) for f in ("indices", "labels", "true_labels"))
    # ptnl draws its own sample from each class's first half, noisy or not
    assert same == (kind != "ptnl")


def test_at_rate_0_ptnl_and_ptnl_distinct_agree_only_on_whole_first_halves():
    """Why they stay two trials at rate 0 with K shots, and are one with shots 0."""
    labels = np.repeat(np.arange(4), [18, 40, 40, 40])  # class 0's first half (9 images) is shorter than K = 16
    for seed in range(3):
        release, distinct = ptnl_noise(labels, 16, 0.0, seed), ptnl_noise(labels, 16, 0.0, seed, distinct=True)
        assert release.rate == distinct.rate == 0
        assert not np.array_equal(release.indices, distinct.indices)  # the release's repeated draws collapse
        whole, whole_distinct = ptnl_noise(labels, 0, 0.0, seed), ptnl_noise(labels, 0, 0.0, seed, distinct=True)
        for field in ("indices", "labels", "true_labels"):
            assert np.array_equal(getattr(whole, field), getattr(whole_distinct, field))
