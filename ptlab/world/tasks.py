"""Classification tasks over the procedural world (dataset sources `world:<task>`).

A task names which attributes make the label, a zero-shot template, and split
sizes. Images are drawn from fixed seed ranges, so a task's splits are the same
on every machine; pretraining draws from a disjoint range and never sees them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ptlab.world.render import COLOR_NAMES, DOMAINS, PATTERNS, SHAPES, SIZE_NAMES, Attributes, render

ATTRIBUTE_VALUES = {
    "shape": SHAPES,
    "color": COLOR_NAMES,
    "pattern": PATTERNS,
    "size": SIZE_NAMES,
    "domain": DOMAINS,
}
SPLITS = ("train", "val", "test")
PRETRAIN_SEED_BASE = 1 << 40  # task images use seeds below this, pretraining at or above


@dataclass(frozen=True)
class WorldTask:
    name: str
    label_attributes: tuple[str, ...]
    template: str
    # Validation is large enough to rank configurations a point apart (a tuned grid selects on it):
    # 700 images for ten classes; trials use a K-shot sample of it unless data.val_shots asks for more.
    per_class: dict[str, int] = field(default_factory=lambda: {"train": 64, "val": 70, "test": 50})
    description: str = ""

    @property
    def classnames(self) -> list[str]:
        values = [ATTRIBUTE_VALUES[a] for a in self.label_attributes]
        grid = np.stack(np.meshgrid(*[np.arange(len(v)) for v in values], indexing="ij"), -1).reshape(-1, len(values))
        return [" ".join(values[k][i] for k, i in enumerate(row)) for row in grid]

    def class_attributes(self) -> np.ndarray:
        """(C, len(label_attributes)) attribute indices of each class, row-major."""
        sizes = [len(ATTRIBUTE_VALUES[a]) for a in self.label_attributes]
        return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), -1)


TASKS = {
    t.name: t
    for t in [
        WorldTask("shapes", ("shape",), "a photo of a {}.", description="10 shapes, any colour and background"),
        WorldTask("colors", ("color",), "a photo of a {} shape.", description="10 colours, any shape"),
        WorldTask(
            "color-shapes",
            ("color", "shape"),
            "a photo of a {}.",
            per_class={"train": 32, "val": 8, "test": 20},
            description="100 classes: colour x shape",
        ),
        WorldTask(
            "patterns",
            ("pattern",),
            "a shape on a {} background.",
            description="6 background patterns; captions rarely mention the background",
        ),
        WorldTask("sizes", ("size",), "a photo of a {} shape.", description="3 object sizes; captions rarely mention size"),
    ]
}
LONG_TAILED = {"color-shapes-lt": "color-shapes"}


def _split_seed(*parts, nbytes: int = 4) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:nbytes], "little")


def long_tail_counts(n_max: int, n_classes: int, imbalance: float) -> np.ndarray:
    """Exponential profile n_c = n_max * imbalance^(-c/(C-1)), at least one image a class."""
    c = np.arange(n_classes)
    return np.maximum(np.round(n_max * imbalance ** (-c / max(n_classes - 1, 1))).astype(int), 1)


@dataclass(frozen=True)
class WorldSplit:
    attributes: Attributes
    labels: np.ndarray


def world_task(name: str) -> WorldTask:
    base = LONG_TAILED.get(name, name)
    if base not in TASKS:
        known = sorted(TASKS) + sorted(LONG_TAILED)
        raise KeyError(f"unknown world task {name!r}; known: {', '.join(known)}")
    return TASKS[base]


def make_split(
    name: str, split: str, domain: str = "photo", imbalance: float = 100.0, lt_max: int = 200
) -> WorldSplit:
    """Attributes and labels of one split; images come from `render(split.attributes)`.

    For long-tailed tasks only the train split is long-tailed (n_max = lt_max);
    val and test stay balanced, as in CIFAR-100-LT.
    """
    task = world_task(name)
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if domain not in DOMAINS:
        raise KeyError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    n_classes = len(task.classnames)
    if name in LONG_TAILED and split == "train":
        counts = long_tail_counts(lt_max, n_classes, imbalance)
    else:
        counts = np.full(n_classes, task.per_class[split])
    labels = np.repeat(np.arange(n_classes), counts)
    n = len(labels)
    # Split seed ignores domain and imbalance: the same index is the same scene in every domain.
    rng = np.random.default_rng(_split_seed(task.name, split))
    columns = {a: rng.integers(0, len(v), size=max(n, 1))[:n] for a, v in ATTRIBUTE_VALUES.items() if a != "domain"}
    class_attrs = task.class_attributes()
    for k, a in enumerate(task.label_attributes):
        columns[a] = class_attrs[labels, k]
    columns["domain"] = np.full(n, DOMAINS.index(domain))
    base = _split_seed(task.name, split, "images", nbytes=3) << 16  # below PRETRAIN_SEED_BASE
    columns["seed"] = base + np.arange(n)
    return WorldSplit(Attributes(**columns), labels)


def render_split(ws: WorldSplit, image_size: int = 32) -> np.ndarray:
    return render(ws.attributes, image_size)
