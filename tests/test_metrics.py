import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.metrics import (
    accuracy,
    auroc,
    mean_per_class_accuracy,
    per_class_accuracy,
    shot_group_accuracy,
    shot_groups,
)

torch.set_num_threads(1)

# 6 samples: class 0 has 4 (3 right), class 1 has 1 (0 right), class 2 has 1 (1 right)
TARGETS = [0, 0, 0, 0, 1, 2]
PREDICTED = [0, 0, 0, 2, 0, 2]


def test_accuracy_from_class_ids_numpy_torch_and_lists():
    # 4 of 6 right
    assert accuracy(PREDICTED, TARGETS) == pytest.approx(4 / 6)
    assert accuracy(np.array(PREDICTED), torch.tensor(TARGETS)) == pytest.approx(4 / 6)


def test_accuracy_from_scores_takes_the_argmax():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=torch.bfloat16)
    # argmax [1, 0, 1] against [1, 1, 1]: 2 of 3
    assert accuracy(scores, torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)


def test_per_class_and_mean_per_class_accuracy_by_hand():
    per_class = per_class_accuracy(PREDICTED, TARGETS, num_classes=4)
    assert per_class[:3].tolist() == [0.75, 0.0, 1.0]
    assert math.isnan(per_class[3])  # class 3 has no test sample
    # mean over the tested classes: (0.75 + 0 + 1) / 3, not the 4/6 sample accuracy
    assert mean_per_class_accuracy(PREDICTED, TARGETS, num_classes=4) == pytest.approx(1.75 / 3)


def test_per_class_accuracy_sizes_from_scores_or_ids():
    scores = np.eye(5)[[0, 1]]
    assert len(per_class_accuracy(scores, [0, 0])) == 5
    assert len(per_class_accuracy([0, 3], [0, 1])) == 4


def test_mismatched_or_out_of_range_inputs_are_rejected():
    with pytest.raises(ValueError, match="targets"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        per_class_accuracy([0, 1], [0, 2], num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        accuracy(np.zeros((2, 2, 2)), [0, 1])


def test_auroc_known_case():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 pairs, 3 are
    # ordered right (0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4), so AUROC = 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auroc_counts_ties_as_one_half():
    # pairs (pos, neg): (0.5, 0.5) tie = 1/2, (0.5, 0.2) = 1, (0.7, 0.5) = 1, (0.7, 0.2) = 1 -> 3.5/4
    assert auroc(torch.tensor([0.5, 0.7, 0.5, 0.2]), torch.tensor([True, True, False, False])) == pytest.approx(0.875)
    assert auroc([1.0, 1.0, 1.0], [1, 0, 0]) == pytest.approx(0.5)


def test_auroc_extremes():
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.9, 0.8, 0.1], [0, 0, 1]) == 0.0


@settings(deadline=None, max_examples=80)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40).filter(
        lambda p: 0 < sum(b for _, b in p) < len(p)
    )
)
def test_auroc_equals_the_pairwise_count(pairs):
    scores = np.array([s for s, _ in pairs], dtype=float)  # few distinct values: many ties
    positive = np.array([b for _, b in pairs])
    pos, neg = scores[positive], scores[~positive]
    pairwise = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(scores, positive) == pytest.approx(pairwise)


def test_auroc_rejects_one_sided_or_bad_scores():
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        auroc([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="one length"):
        auroc([0.1, 0.2], [1, 0, 1])


def test_shot_groups_put_20_in_few_and_100_in_medium_as_lpts_released_logging():
    # the release logs a class in (lo, hi]: few (0, 20], medium (20, 100], many (100, max]
    assert shot_groups([101, 100, 50, 21, 20, 19, 0]).tolist() == ["many", "medium", "medium", "medium", "few", "few", "few"]
    # Decoupling's masks, LPT's few_at_most: 19
    assert shot_groups([21, 20, 19], few_at_most=19).tolist() == ["medium", "medium", "few"]


def test_shot_group_accuracy_by_hand():
    train_counts = [500, 60, 5, 3]
    # class 0 (many): 2 of 2 right; class 1 (medium): 1 of 4; class 2 (few): 0 of 1; class 3 (few): 2 of 2
    targets = [0, 0, 1, 1, 1, 1, 2, 3, 3]
    predicted = [0, 0, 1, 0, 0, 2, 0, 3, 3]
    groups = shot_group_accuracy(predicted, targets, train_counts)
    assert groups["many"] == pytest.approx(1.0)
    assert groups["medium"] == pytest.approx(0.25)
    # few: mean of the class accuracies (0 + 1) / 2 = 0.5, not the 2/3 of its samples
    assert groups["few"] == pytest.approx(0.5)


def test_shot_group_accuracy_is_nan_for_an_untested_group():
    groups = shot_group_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([150, 120, 30]))
    assert groups["many"] == 1.0
    assert math.isnan(groups["medium"]) and math.isnan(groups["few"])
