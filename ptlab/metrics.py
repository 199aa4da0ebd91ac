"""Evaluation metrics: accuracy, per-class accuracy, AUROC, many/medium/few-shot accuracy.

Inputs may be numpy arrays, torch tensors (any device, any dtype) or lists.
Predictions are class ids (N,) or scores (N, C), of which the argmax is
taken. Accuracies are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    ArrayLike = np.ndarray | torch.Tensor | list

MANY_SHOT_ABOVE = 100  # a class with more than 100 training images is many-shot
# 20 or fewer is few-shot, 21 to 100 medium: LPT's released logging, which the
# published per-group numbers come from. Decoupling's masks (and LPT's own
# group masks) count 20 as medium: few_at_most=19.
FEW_SHOT_AT_MOST = 20
SHOT_GROUPS = ("many", "medium", "few")


def as_numpy(values: ArrayLike) -> np.ndarray:
    # Without torch loaded no tensor can exist: numpy-only callers (reports, the study driver) never import it.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        # numpy has no bfloat16
        return (values.float() if values.dtype == torch.bfloat16 else values).numpy()
    return np.asarray(values)


def predicted_classes(predictions: ArrayLike) -> np.ndarray:
    """Class ids from class ids (N,) or scores (N, C)."""
    array = as_numpy(predictions)
    if array.ndim == 2:
        return array.argmax(axis=1)
    if array.ndim == 1:
        return array.astype(np.int64)
    raise ValueError(f"predictions must be class ids (N,) or scores (N, C), got shape {array.shape}")


def _paired(predictions: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    predicted = predicted_classes(predictions)
    truth = as_numpy(targets).astype(np.int64)
    if truth.shape != predicted.shape:
        raise ValueError(f"{len(predicted)} predictions but targets of shape {truth.shape}")
    return predicted, truth


def accuracy(predictions: ArrayLike, targets: ArrayLike) -> float:
    """Fraction of samples whose predicted class is the target (NaN for no samples)."""
    predicted, truth = _paired(predictions, targets)
    return float((predicted == truth).mean()) if len(truth) else float("nan")


def per_class_accuracy(predictions: ArrayLike, targets: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Accuracy on each class's samples, NaN for a class with no samples.

    num_classes defaults to C of the scores, else to the largest id seen + 1.
    """
    predicted, truth = _paired(predictions, targets)
    if num_classes is None:
        scores = as_numpy(predictions)
        num_classes = (
            scores.shape[1] if scores.ndim == 2 else int(max(predicted.max(initial=-1), truth.max(initial=-1))) + 1
        )
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"targets must be class ids in [0, {num_classes}), got {truth.min()}..{truth.max()}")
    totals = np.bincount(truth, minlength=num_classes)
    correct = np.bincount(truth[predicted == truth], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, correct / totals, np.nan)


def mean_per_class_accuracy(predictions: ArrayLike, targets: ArrayLike, num_classes: int | None = None) -> float:
    """Mean of the per-class accuracies over the classes that have samples."""
    per_class = per_class_accuracy(predictions, targets, num_classes)
    present = per_class[~np.isnan(per_class)]
    return float(present.mean()) if present.size else float("nan")


def auroc(scores: ArrayLike, positives: ArrayLike) -> float:
    """Area under the ROC curve of `scores` for telling positives from negatives.

    The Mann-Whitney form: the probability that a random positive scores above
    a random negative, a tie counting one half (average ranks).
    """
    values = as_numpy(scores).astype(np.float64)
    is_positive = as_numpy(positives).astype(bool)
    if values.ndim != 1 or values.shape != is_positive.shape:
        raise ValueError(f"scores and positives must be 1-D of one length, got {values.shape} and {is_positive.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores must be finite")
    n_pos = int(is_positive.sum())
    n_neg = len(values) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}")
    _, tie_group, tie_sizes = np.unique(values, return_inverse=True, return_counts=True)
    # ranks 1..N in ascending score; tied scores share their group's mean rank
    group_end = np.cumsum(tie_sizes)
    mean_rank = group_end - (tie_sizes - 1) / 2
    positive_rank_sum = mean_rank[tie_group][is_positive].sum()
    return float((positive_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def shot_groups(train_class_counts: ArrayLike, few_at_most: int = FEW_SHOT_AT_MOST) -> np.ndarray:
    """'many' (> 100 training images), 'medium' or 'few' (<= few_at_most, default 20), per class."""
    counts = as_numpy(train_class_counts)
    return np.where(counts > MANY_SHOT_ABOVE, "many", np.where(counts <= few_at_most, "few", "medium"))


def shot_group_accuracy(
    predictions: ArrayLike, targets: ArrayLike, train_class_counts: ArrayLike, few_at_most: int = FEW_SHOT_AT_MOST
) -> dict[str, float]:
    """Accuracy on many-, medium- and few-shot classes (see `shot_groups`).

    Each group's accuracy is the mean of its classes' per-class accuracies
    (the convention of the long-tailed literature's evaluation code); on a
    class-balanced test set it equals the fraction of the group's samples
    right. NaN for a group with no tested class.
    """
    counts = as_numpy(train_class_counts)
    per_class = per_class_accuracy(predictions, targets, len(counts))
    groups = shot_groups(counts, few_at_most)
    result = {}
    for group in SHOT_GROUPS:
        tested = per_class[(groups == group) & ~np.isnan(per_class)]
        result[group] = float(tested.mean()) if tested.size else float("nan")
    return result
