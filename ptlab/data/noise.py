"""Label noise for the noisy-label studies (PTNL): symmetric, pair, confusion, ptnl, ptnl_distinct.

ptnl is the mechanism PTNL's released code built its noisy K-shot sets with
(exactly K images labelled c when c's first half holds K), and what the real
replication studies use; symmetric, pair and confusion mislabel a given
K-shot sample instead, and ptnl_distinct is ptnl without its draws with
replacement (see `ptnl_noise`).

Every kind returns the true labels beside the noisy ones, so analyses can
separate clean from mislabelled samples.

Counting rule of symmetric, pair, confusion and ptnl_distinct: class c (by
true label for the first three; by given label for ptnl_distinct) gets exactly
floor(r * n_c + 1/2) wrong labels, where n_c is its number of samples in the
few-shot set, i.e. per-class rounding with halves rounded up (Python's
round() would send 0.5 to 0). The realised rate is exact per class, and
overall it is the sum of those counts over N.

Which samples are wrong is a pure function of (labels, indices, seed, rate)
and does not depend on the noise kind: symmetric, pair and confusion noise
at one seed and rate mislabel the same samples and differ only in the wrong
label they give, a paired design across kinds. Sets are nested in the rate:
the samples wrong at rate r are also wrong at every higher rate, with the
same wrong label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ptlab.data.fewshot import check_labels, lowest_keys_per_class, random_keys, seeded_generator

NOISE_KINDS = ("none", "symmetric", "pair", "confusion", "ptnl", "ptnl_distinct")
PTNL_KINDS = ("ptnl", "ptnl_distinct")


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """A training set: `indices` into the split, its given labels and true labels."""

    indices: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray

    def __post_init__(self) -> None:
        arrays = {name: np.array(getattr(self, name), dtype=np.int64) for name in ("indices", "labels", "true_labels")}
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"indices, labels and true_labels must be 1-D of one length, got shapes {shapes}")
        for name, array in arrays.items():
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_noisy(self) -> np.ndarray:
        return self.labels != self.true_labels

    @property
    def rate(self) -> float:
        """Realised fraction of wrong labels (0 for an empty set)."""
        return float(self.is_noisy.mean()) if len(self) else 0.0


def wrong_count(rate: float, n: int | np.ndarray) -> np.ndarray:
    """floor(rate * n + 1/2): wrong labels among n samples, halves rounded up."""
    return np.floor(rate * np.asarray(n) + 0.5).astype(np.int64)


def _check_rate(rate: float) -> None:
    if not (math.isfinite(rate) and 0 <= rate < 1):
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")


def _as_float_array(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def nearest_class_pairs(text_features: np.ndarray | torch.Tensor) -> np.ndarray:
    """For each class, its most similar other class by cosine of text features.

    `text_features` is (C, D), one row a class; ties go to the lower class id.
    The result is a pair map for `add_label_noise(..., noise_type="pair")`.
    """
    features = _as_float_array(text_features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"text_features must be (C, D) with C >= 2 classes, got shape {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if not np.all(np.isfinite(features)) or np.any(norms == 0):
        raise ValueError("text_features must be finite and have no zero rows")
    unit = features / norms
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def add_label_noise(
    labels: np.ndarray | list[int],
    noise_type: str,
    rate: float,
    seed: int,
    *,
    num_classes: int,
    indices: np.ndarray | list[int] | None = None,
    pairs: np.ndarray | list[int] | None = None,
    scores: np.ndarray | torch.Tensor | None = None,
) -> NoisyLabels:
    """Mislabel a fraction `rate` of an already chosen training set.

    labels: true labels of the chosen samples (e.g. of a few-shot sample).
    indices: their positions in the split, kept in the result (default 0..N-1).
    noise_type:
      none       labels unchanged (rate must be 0).
      symmetric  the wrong label is uniform over the other classes.
      pair       class c becomes pairs[c]; default pairs[c] = (c + 1) mod C,
                 or e.g. `nearest_class_pairs(text_features)`.
      confusion  the wrong label is the highest-scoring wrong class in
                 `scores` (N, C), e.g. zero-shot logits of these samples;
                 ties go to the lower class id.
    ptnl and ptnl_distinct select their own samples, so they have their own
    function, `ptnl_noise`.
    """
    labels = check_labels(labels)
    _check_rate(rate)
    indices = np.arange(len(labels)) if indices is None else check_labels(indices)
    if len(indices) != len(labels):
        raise ValueError(f"indices ({len(indices)}) and labels ({len(labels)}) differ in length")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} is not a class id below num_classes={num_classes}")
    if noise_type in PTNL_KINDS:
        raise ValueError(f"{noise_type} noise chooses its own samples: call ptnl_noise(train_labels, shots, rate, seed)")
    if noise_type not in NOISE_KINDS:
        raise ValueError(f"unknown noise type {noise_type!r}; known: {', '.join(NOISE_KINDS)}")
    if noise_type == "none":
        if rate != 0:
            raise ValueError(f"noise_type 'none' needs rate 0, got {rate}")
        return NoisyLabels(indices, labels, labels)
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}")

    rng = seeded_generator("label-noise", seed, labels.tobytes(), indices.tobytes())
    keys = random_keys(rng, len(labels))
    # Drawn whether or not symmetric noise is asked for, so the stream, and
    # with it the choice of wrong samples, is the same for every kind.
    uniforms = random_keys(rng, len(labels))
    counts = wrong_count(rate, np.bincount(labels, minlength=num_classes))
    wrong = lowest_keys_per_class(labels, keys, counts)

    true_wrong = labels[wrong]
    if noise_type == "symmetric":
        # the cap catches u * (C - 1) rounding up to C - 1 when u is within an ulp of 1
        offset = 1 + np.minimum((uniforms[wrong] * (num_classes - 1)).astype(np.int64), num_classes - 2)
        new_labels = (true_wrong + offset) % num_classes
    elif noise_type == "pair":
        pair_map = _check_pairs(pairs, num_classes)
        new_labels = pair_map[true_wrong]
    else:
        if scores is None:
            raise ValueError("confusion noise needs scores: an (N, C) matrix, e.g. zero-shot logits")
        score_matrix = _as_float_array(scores)
        if score_matrix.shape != (len(labels), num_classes):
            raise ValueError(
                f"scores must have shape (N, C) = ({len(labels)}, {num_classes}), got {score_matrix.shape}"
            )
        if not np.all(np.isfinite(score_matrix)):
            raise ValueError("scores must be finite")
        wrong_scores = score_matrix[wrong].copy()
        wrong_scores[np.arange(len(wrong)), true_wrong] = -np.inf
        new_labels = wrong_scores.argmax(axis=1)

    noisy = labels.copy()
    noisy[wrong] = new_labels
    return NoisyLabels(indices, noisy, labels)


def _check_pairs(pairs: np.ndarray | list[int] | None, num_classes: int) -> np.ndarray:
    if pairs is None:
        return (np.arange(num_classes) + 1) % num_classes
    pair_map = np.asarray(pairs)
    if pair_map.shape != (num_classes,) or not np.issubdtype(pair_map.dtype, np.integer):
        raise ValueError(f"pairs must be {num_classes} class ids, one a class, got shape {pair_map.shape}")
    if pair_map.min() < 0 or pair_map.max() >= num_classes:
        raise ValueError(f"pairs must map to class ids in [0, {num_classes})")
    if np.any(pair_map == np.arange(num_classes)):
        raise ValueError(
            f"pairs maps class(es) {np.flatnonzero(pair_map == np.arange(num_classes)).tolist()} to themselves"
        )
    return pair_map.astype(np.int64)


def ptnl_noise(
    train_labels: np.ndarray | list[int], shots: int, rate: float, seed: int, *, distinct: bool = False
) -> NoisyLabels:
    """The released PTNL code's noisy K-shot set, drawn from the full training split.

    Each class c's images, in split order, are cut into a first half
    (ceil(n_c / 2) images) and a second half. Class c draws `shots` images
    from its first half, without replacement when the half holds at least K,
    with replacement when it holds fewer. The first floor(r * K + 1/2) draws
    are then replaced by images drawn uniformly, with replacement, from the
    second halves of all other classes not taken by a lower class, and
    labelled c. A training set holds an image once, so repeated draws
    collapse: a class whose first half is shorter than K gets the fixed
    number of wrong images and fewer distinct correct ones (a 9-image half
    at r = 0.125, K = 16: 2 wrong, and 14 draws giving at most 9 distinct
    correct, 7.3 on average), so its realised rate exceeds r. A wrong
    image's true class is chosen in proportion to the size of its second
    half. Classes
    take their wrong images in ascending class order. shots=0 (a ptlab
    extension) takes the whole first half, with floor(r * half + 1/2) wrong.

    distinct=True (noise_type ptnl_distinct) is ptlab's variant: every draw
    is without replacement, so a short half gives all its images and the
    wrong count follows the rate of what it gave, floor(r * k_c + 1/2) for
    k_c = min(K, half); with a half of at least K both agree on the counts.
    The release also fixes the wrong count as an integer per class (num_fp)
    rather than a rate; r = num_fp / K gives the same count.
    """
    labels = check_labels(train_labels)
    _check_rate(rate)
    if shots < 0:
        raise ValueError(f"shots must be >= 0 (0 = the whole first half), got {shots}")
    num_classes = int(labels.max(initial=-1)) + 1
    rng = seeded_generator("ptnl-noise", seed, labels.tobytes())

    by_class = np.argsort(labels, kind="stable")  # split order kept within a class
    class_sizes = np.bincount(labels, minlength=num_classes)
    rank_in_class = np.arange(len(labels)) - np.repeat(np.cumsum(class_sizes) - class_sizes, class_sizes)
    first_half = np.zeros(len(labels), dtype=bool)
    first_half[by_class[rank_in_class < np.ceil(class_sizes / 2).astype(np.int64)[labels[by_class]]]] = True

    keys = random_keys(rng, len(labels))
    candidates = np.flatnonzero(first_half)
    per_class = np.bincount(labels[candidates], minlength=num_classes)
    take = per_class if shots == 0 else np.minimum(per_class, shots)
    drawn = candidates[lowest_keys_per_class(labels[candidates], keys[candidates], take)]

    second_half = np.flatnonzero(~first_half)
    unused = np.ones(len(second_half), dtype=bool)
    chosen_indices, given_labels = [], []
    for c in range(num_classes):
        if class_sizes[c] == 0:  # a class id without images takes no part, as in the release
            continue
        shots_c = drawn[labels[drawn] == c]
        shots_c = shots_c[np.argsort(keys[shots_c], kind="stable")]  # draw order: "the first" are replaced
        if distinct or shots == 0:
            n_wrong = int(wrong_count(rate, len(shots_c)))
        else:
            n_wrong = int(wrong_count(rate, shots))
            if len(shots_c) < shots:  # a short first half: the release draws K with replacement
                half_c = candidates[labels[candidates] == c]
                shots_c = half_c[(random_keys(rng, shots) * len(half_c)).astype(np.int64)]
        pool = np.flatnonzero(unused & (labels[second_half] != c))
        if distinct and n_wrong > len(pool):
            raise ValueError(
                f"class {c} needs {n_wrong} wrong images but only {len(pool)} unused second-half images of other "
                "classes remain; lower the rate or the shots"
            )
        if not distinct and n_wrong and not len(pool):
            raise ValueError(
                f"class {c} needs {n_wrong} wrong images but no unused second-half image of another class "
                "remains; lower the rate or the shots"
            )
        if distinct:
            picked = _draw_without_replacement(rng, pool, n_wrong)
        else:
            picked = np.unique(pool[(random_keys(rng, n_wrong) * len(pool)).astype(np.int64)])
        unused[picked] = False
        correct = np.unique(shots_c[n_wrong:])
        chosen_indices.append(np.concatenate([second_half[picked], correct]))
        given_labels.append(np.full(len(picked) + len(correct), c))

    indices = np.concatenate(chosen_indices) if chosen_indices else np.zeros(0, dtype=np.int64)
    given = np.concatenate(given_labels) if given_labels else np.zeros(0, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    return NoisyLabels(indices[order], given[order], labels[indices[order]])


def _draw_without_replacement(rng: np.random.Generator, population: np.ndarray, k: int) -> np.ndarray:
    """k distinct members of `population`, uniformly, by a partial Fisher-Yates shuffle.

    Costs O(k) draws however large the population, which keeps ptnl noise on
    ImageNet-sized splits fast.
    """
    pool = population.copy()
    uniforms = random_keys(rng, k)
    for i in range(k):
        j = i + int(uniforms[i] * (len(pool) - i))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]
