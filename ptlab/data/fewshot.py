"""K-shot sampling: which training and validation images a trial sees.

The sample is a pure function of (labels, K, seed, dataset identity): the
randomness comes from a generator seeded by a sha256 of those inputs, never
from global state, so every machine draws the same images.

Samples are nested: for one (dataset, seed), the K-shot sample contains the
K'-shot sample for every K' < K. Each image gets one random key and a class
keeps its K lowest-keyed images, so curves over K compare growing sets rather
than unrelated draws.
"""

from __future__ import annotations

import hashlib
import operator
import warnings

import numpy as np

VALIDATION_SHOTS_CAP = 4  # CoOp validates on min(K, 4) images a class


def seeded_generator(*parts: str | int | bytes) -> np.random.Generator:
    """A numpy Generator seeded from the sha256 of `parts`.

    Each part is length-prefixed before hashing, so ("ab", "c") and ("a", "bc")
    seed different generators. Integers go in through their decimal text:
    `np.int64(3)` and `3` seed the same generator.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            blob = b"b" + part
        elif isinstance(part, str):
            blob = b"s" + part.encode()
        else:
            blob = b"i" + str(operator.index(part)).encode()
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniform keys in [0, 1); sorting by them gives a random order.

    Only `Generator.random` is used for sampling here: numpy keeps the
    bit generator's stream and its double conversion fixed, whereas the
    algorithms behind `choice` and `permutation` may change between numpy
    versions, which would silently change every sample.
    """
    return rng.random(n)


def lowest_keys_per_class(labels: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions of the counts[c] lowest-keyed samples of each class c, sorted.

    `counts` is indexed by class id; a count above a class's size takes the
    whole class.
    """
    order = np.lexsort((keys, labels))
    sorted_labels = labels[order]
    class_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(len(labels)) - class_start
    return np.sort(order[rank_in_class < counts[sorted_labels]])


def check_labels(labels: np.ndarray | list[int]) -> np.ndarray:
    """Labels as a 1-D int64 array of class ids >= 0, or a ValueError."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be class ids >= 0, got {array.min()}")
    return array


def few_shot_indices(labels: np.ndarray | list[int], shots: int, seed: int, dataset: str) -> np.ndarray:
    """Indices of a K-shot sample of a split, sorted ascending.

    Per class, `shots` images without replacement, or all of the class when it
    has fewer; shots=0 takes the whole split. `dataset` is the split's
    identity string (e.g. `Split.images.identity`), folded into the seed so
    that two datasets with the same seed draw independently.
    """
    labels = check_labels(labels)
    if shots < 0:
        raise ValueError(f"shots must be >= 0 (0 = the whole split), got {shots}")
    if shots == 0:
        return np.arange(len(labels))
    keys = random_keys(seeded_generator("few-shot", dataset, seed), len(labels))
    sizes = np.bincount(labels)
    short = np.flatnonzero((sizes > 0) & (sizes < shots))
    if len(short):
        warnings.warn(f"{dataset}: shots={shots}, but {len(short)} of {np.count_nonzero(sizes)} classes hold fewer "
                      f"images (the fewest {sizes[short].min()}); those classes give every image they have",
                      FewerShotsWarning, stacklevel=2)
    counts = np.full(int(labels.max(initial=-1)) + 1, shots)
    return lowest_keys_per_class(labels, keys, counts)


class FewerShotsWarning(UserWarning):
    """A K-shot sample in which some classes have fewer than K images."""


def validation_shots(shots: int, val_shots: int | None = None) -> int:
    """Images a class in the validation sample: val_shots if given, else min(shots, 4).

    A trial on the whole training split (shots=0) therefore validates on the
    whole validation split.
    """
    if val_shots is not None:
        return val_shots
    return min(shots, VALIDATION_SHOTS_CAP)


def validation_indices(
    labels: np.ndarray | list[int], shots: int, seed: int, dataset: str, val_shots: int | None = None
) -> np.ndarray:
    """Indices of the validation sample for a K-shot trial, sorted ascending.

    `labels` and `dataset` are those of the validation split; the draw is
    tagged apart from the training draw, so it stays independent of it even
    when a caller passes one identity for both splits.
    """
    return few_shot_indices(labels, validation_shots(shots, val_shots), seed, f"validation:{dataset}")
