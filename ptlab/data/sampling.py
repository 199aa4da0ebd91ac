"""Batch samplers for training on long-tailed data: instance-balanced and class-balanced.

Instance-balanced batches walk a random permutation of the training set, so a
class appears in proportion to its size. Class-balanced batches follow
Decoupling's (and LPT's) class-aware sampler: classes are drawn in shuffled
rounds, each drawn class contributing `per_class` images taken from its own
shuffled cycle (a class smaller than `per_class` repeats images); the stream is
cut into batches, so with batch = k * per_class a batch holds k distinct
classes, each per_class times, and over C / k batches every class appears once.
"""

from __future__ import annotations

import numpy as np


def instance_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch: a random permutation of 0..n-1 cut into batches (the last may be smaller)."""
    order = rng.permutation(n)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


class ClassBalancedSampler:
    """An endless class-aware stream over training positions, cut into batches on request."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator, per_class: int = 4):
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        labels = np.asarray(labels, dtype=np.int64)
        self.rng, self.per_class = rng, per_class
        self.members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        self._class_round: list[int] = []
        self._cycles = {c: (np.empty(0, dtype=np.int64), 0) for c in self.members}
        self._pending = np.empty(0, dtype=np.int64)

    def _next_class(self) -> int:
        if not self._class_round:
            self._class_round = [int(c) for c in self.rng.permutation(list(self.members))]
        return self._class_round.pop()

    def _take(self, c: int) -> np.ndarray:
        out = []
        cycle, at = self._cycles[c]
        for _ in range(self.per_class):
            if at == len(cycle):
                cycle, at = self.rng.permutation(self.members[c]), 0
            out.append(cycle[at])
            at += 1
        self._cycles[c] = (cycle, at)
        return np.asarray(out, dtype=np.int64)

    def batch(self, size: int) -> np.ndarray:
        while len(self._pending) < size:
            self._pending = np.concatenate([self._pending, self._take(self._next_class())])
        out, self._pending = self._pending[:size], self._pending[size:]
        return out
