import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.data.fewshot import (
    few_shot_indices,
    seeded_generator,
    validation_indices,
    validation_shots,
)

label_arrays = st.lists(st.integers(0, 6), min_size=1, max_size=80).map(np.array)


@settings(deadline=None, max_examples=60)
@given(labels=label_arrays, shots=st.integers(1, 10), seed=st.integers(0, 2**31))
def test_each_class_gets_k_distinct_images_or_all_it_has(labels, shots, seed):
    chosen = few_shot_indices(labels, shots, seed, "prop")
    assert np.all(np.diff(chosen) > 0)  # sorted and without repeats
    for c in np.unique(labels):
        assert np.sum(labels[chosen] == c) == min(shots, np.sum(labels == c))


def test_zero_shots_means_the_whole_split():
    labels = np.array([2, 0, 1, 1, 0])
    assert few_shot_indices(labels, 0, 1, "d").tolist() == [0, 1, 2, 3, 4]


def test_sample_is_a_pure_function_of_its_inputs():
    labels = np.repeat(np.arange(10), 30)
    first = few_shot_indices(labels, 4, 7, "world:shapes:train")
    assert np.array_equal(first, few_shot_indices(labels.copy(), 4, 7, "world:shapes:train"))
    assert not np.array_equal(first, few_shot_indices(labels, 4, 8, "world:shapes:train"))
    assert not np.array_equal(first, few_shot_indices(labels, 4, 7, "world:colors:train"))


def test_sample_is_pinned_across_machines_and_numpy_versions():
    # A changed value here means every stored few-shot sample would change:
    # only bump it on purpose.
    labels = np.repeat(np.arange(3), 5)
    assert few_shot_indices(labels, 2, 1, "golden").tolist() == [1, 2, 7, 9, 11, 14]


def test_smaller_samples_are_nested_in_larger_ones():
    labels = np.repeat(np.arange(5), 40)
    previous = set()
    for shots in (1, 2, 4, 8, 16):
        current = set(few_shot_indices(labels, shots, 3, "d").tolist())
        assert previous < current
        previous = current


def test_every_image_of_a_class_is_equally_likely():
    labels = np.zeros(10, dtype=int)
    hits = np.zeros(10)
    for seed in range(2000):
        hits[few_shot_indices(labels, 2, seed, "uniform")] += 1
    # each image is chosen with probability 2/10: 400 of 2000, sd ~18
    assert np.all(np.abs(hits - 400) < 80)


def test_seeded_generator_separates_its_parts_and_reads_integers_by_value():
    def first(*parts):
        return seeded_generator(*parts).random()

    assert first("ab", "c") != first("a", "bc")
    assert first("x", 3) == first("x", np.int64(3))
    assert first("x", 3) != first("x", "3")
    assert first(b"\x01\x02") != first(b"\x01", b"\x02")


def test_validation_uses_min_of_k_and_four_unless_told():
    assert validation_shots(16) == 4
    assert validation_shots(2) == 2
    assert validation_shots(0) == 0  # the full training split validates on the full validation split
    assert validation_shots(16, val_shots=8) == 8


def test_validation_sample_sizes_and_independence_from_the_training_draw():
    labels = np.repeat(np.arange(4), 20)
    val = validation_indices(labels, 16, 1, "d")
    assert np.bincount(labels[val]).tolist() == [4, 4, 4, 4]
    assert not np.array_equal(val, few_shot_indices(labels, 4, 1, "d"))
    assert len(validation_indices(labels, 0, 1, "d")) == 80
    assert np.bincount(labels[validation_indices(labels, 16, 1, "d", val_shots=1)]).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("labels", "shots", "message"),
    [
        (np.array([0, 1]), -1, "shots must be >= 0"),
        (np.array([[0, 1]]), 1, "1-D"),
        (np.array([0.0, 1.0]), 1, "integer"),
        (np.array([0, -1]), 1, ">= 0"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(labels, shots, message):
    with pytest.raises(ValueError, match=message):
        few_shot_indices(labels, shots, 1, "d")


def test_shots_beyond_a_class_warn_and_take_the_whole_class():
    from ptlab.data.fewshot import FewerShotsWarning

    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.warns(FewerShotsWarning, match=r"shots=5, but 1 of 3 classes hold fewer images \(the fewest 3\)"):
        picked = few_shot_indices(labels, 5, 1, "d")
    assert np.bincount(labels[picked]).tolist() == [5, 3, 5]
