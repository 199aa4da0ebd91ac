"""Base-to-new generalisation (CoCoOp, Zhou et al. CVPR 2022, section 4.1).

A dataset's classes are split in two halves in their label order: the first
ceil(C / 2) are the base classes, the rest the new ones (the released code's
`subsample_classes`). A trial trains and selects on the base classes only;
its test metrics are base accuracy (base test images, classified among the
base classes), new accuracy (new test images among the new classes, whose
names the learned prompt never saw) and their harmonic mean.

Each half is a dataset of its own, relabelled 0..k-1 in the original order,
whose images are views of the parent's (the feature cache keys them apart).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ptlab.data.sources import DatasetBundle, ImageStore, Split

HALVES = ("base", "new")


@dataclass(frozen=True, eq=False)
class SubsetImages(ImageStore):
    parent: ImageStore
    positions: np.ndarray  # indices into parent
    identity: str

    def __len__(self) -> int:
        return len(self.positions)

    def load(self, index: int) -> Image.Image:
        return self.parent.load(int(self.positions[index]))


def half_classes(n_classes: int, half: str) -> list[int]:
    base = math.ceil(n_classes / 2)
    return list(range(base)) if half == "base" else list(range(base, n_classes))


def class_subset(bundle: DatasetBundle, classes: list[int], name: str) -> DatasetBundle:
    """The dataset restricted to `classes`, relabelled in their order; `name` tells the subset apart."""
    relabel = np.full(bundle.n_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    splits = {}
    for split_name, split in bundle.splits.items():
        positions = np.flatnonzero(relabel[split.labels] >= 0)
        digest = hashlib.sha256(positions.tobytes()).hexdigest()[:12]
        images = SubsetImages(split.images, positions, f"{split.images.identity}|{name}:{digest}")
        splits[split_name] = Split(relabel[split.labels[positions]], images)
    return replace(bundle, classnames=[bundle.classnames[c] for c in classes], splits=splits,
                   meta={**bundle.meta, "classes": name})


def base_and_new(bundle: DatasetBundle) -> tuple[DatasetBundle, DatasetBundle]:
    base, new = (class_subset(bundle, half_classes(bundle.n_classes, h), h) for h in HALVES)
    return base, new


def harmonic_mean(base_acc: float, new_acc: float) -> float:
    return 0.0 if base_acc + new_acc == 0 else 2 * base_acc * new_acc / (base_acc + new_acc)


def base_new_metrics(base_acc: float, new_acc: float) -> dict[str, float]:
    """What a base-to-new trial reports beside its test accuracy (which is base_acc)."""
    return {"base_acc": base_acc, "new_acc": new_acc, "hm": harmonic_mean(base_acc, new_acc)}
