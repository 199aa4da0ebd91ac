"""Long-tailed datasets: exponential-profile subsampling of any source, and list-file datasets.

Sources (registered beside those of ptlab.data.sources):
  lt:<source>   the training split of any other source cut to the exponential
                profile n_c = n_max * rho^(-c/(C-1)) (ptlab.world.tasks.long_tail_counts),
                rho = data.imbalance, n_max = the largest training class, class 0
                the head; val and test stay as they are (CIFAR-100-LT's construction).
                Which images a class keeps depends only on the source's identity, not
                on rho, so the sets nest: the rho=100 set lies inside the rho=10 set.
  list:<dir>    Places-LT / ImageNet-LT list files in <dir>: exactly one *_train.txt,
                one *_test.txt and at most one *_val.txt, each line `relative/path label`.
                Paths are relative to data.root when it is set, else to <dir>.
                Class names: <dir>/classnames.txt, line i naming label i (a leading token
                equal to the class's folder, such as an ImageNet wnid, is dropped), else
                the images' folder names (extended by parent folders until unique, so
                Places' .../church/outdoor becomes "church outdoor").
The world's own long-tailed task is world:color-shapes-lt (imbalance also from
data.imbalance).

Shot groups follow ptlab.metrics.shot_groups, counted on the training set a
trial uses: many > 100 images, medium 21 to 100, few 20 or fewer. A class
with exactly 20 images is few, as in LPT's released evaluation logging, which
made the published per-group numbers; LPT's and Decoupling's group masks
count it medium, which lpt/vpt give with method_options.few_at_most: 19.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ptlab.config import DataConfig
from ptlab.data.fewshot import lowest_keys_per_class, random_keys, seeded_generator
from ptlab.data.sources import (
    PHOTO_TEMPLATE,
    DataError,
    DatasetBundle,
    ImageStore,
    Split,
    _build,
    class_counts,
    load_dataset,
    register_source,
)
from ptlab.world.tasks import LONG_TAILED, long_tail_counts

CLASSNAMES_FILE = "classnames.txt"


@dataclass(frozen=True, eq=False)
class SubsetImages(ImageStore):
    base: ImageStore
    indices: np.ndarray
    identity: str

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Image.Image:
        return self.base.load(int(self.indices[index]))


def exponential_profile(labels: np.ndarray, n_classes: int, imbalance: float) -> np.ndarray:
    """Images a class keeps: the exponential profile from the largest class, capped by what each class has."""
    available = class_counts(labels, n_classes)
    return np.minimum(long_tail_counts(int(available.max(initial=1)), n_classes, imbalance), available)


def exponential_subsample(labels: np.ndarray, n_classes: int, imbalance: float, identity: str) -> np.ndarray:
    """Sorted indices of the long-tailed subset of a split (see the module docstring)."""
    labels = np.asarray(labels, dtype=np.int64)
    keys = random_keys(seeded_generator("long-tail", identity), len(labels))
    return lowest_keys_per_class(labels, keys, exponential_profile(labels, n_classes, imbalance))


@register_source("lt", "exponential long-tailed subsample of another source's train split, lt:<source>")
def _long_tailed(inner: str, options: DataConfig) -> DatasetBundle:
    scheme, _, name = inner.partition(":")
    if scheme == "lt" or (scheme == "world" and name in LONG_TAILED):
        raise DataError(f"dataset 'lt:{inner}': {inner!r} is long-tailed already; subsample a balanced source")
    bundle = load_dataset(inner, options)
    train = bundle.split("train")
    keep = exponential_subsample(train.labels, bundle.n_classes, options.imbalance, train.images.identity)
    identity = f"{train.images.identity}:lt{options.imbalance:g}"
    splits = dict(bundle.splits)
    splits["train"] = Split(train.labels[keep], SubsetImages(train.images, keep, identity))
    return DatasetBundle(
        f"lt:{inner}", bundle.classnames, bundle.template, splits, {**bundle.meta, "imbalance": options.imbalance, "long_tailed": True}
    )


def _list_files(folder: str, source: str) -> dict[str, str]:
    names = sorted(os.listdir(folder))
    found = {}
    for split in ("train", "val", "test"):
        hits = [n for n in names if n.endswith(f"_{split}.txt")]
        if len(hits) > 1:
            raise DataError(f"{source}: several *_{split}.txt files in {folder}: {', '.join(hits)}; keep one")
        if hits:
            found[split] = os.path.join(folder, hits[0])
    missing = [s for s in ("train", "test") if s not in found]
    if missing:
        raise DataError(
            f"{source}: no {' or '.join(f'*_{s}.txt' for s in missing)} in {folder}; expected list files "
            "such as Places_LT_train.txt with lines `relative/path label`"
        )
    return found


def _read_list(path: str) -> list[tuple[str, int]]:
    rows, problems = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                problems.append(f"{path}:{number}: {line.strip()[:80]!r}; expected `relative/path label`")
                continue
            rows.append((parts[0], int(parts[1])))
    if problems:
        raise DataError(*problems)
    return rows


def _class_folders(rows: list[tuple[str, int]]) -> dict[int, list[str]]:
    """The folders of each label's first image, outermost first.

    Rows come train split first: Places-LT's test images lie flat in Places365's
    val_256/, so only training paths say which folder a class is.
    """
    folders: dict[int, list[str]] = {}
    for rel, label in rows:
        folders.setdefault(label, os.path.normpath(rel).split(os.sep)[:-1])
    return folders


def _folder_names(folders: dict[int, list[str]]) -> dict[int, str]:
    """A class's innermost folder name, extended by parent folders until every name is unique."""
    for depth in range(1, max((len(f) for f in folders.values()), default=1) + 1):
        names = {label: "_".join(parts[-depth:]) for label, parts in folders.items()}
        if len(set(names.values())) == len(names):
            return names
    return {label: f"{'_'.join(parts)}_{label}" for label, parts in folders.items()}


def _file_names(path: str, folders: dict[int, list[str]], source: str) -> dict[int, str]:
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if len(lines) != len(folders):
        raise DataError(f"{source}: {path} has {len(lines)} names for {len(folders)} labels; expected one line per label")
    names = {}
    for label, line in enumerate(lines):
        key, _, rest = line.partition(" ")
        innermost = (folders.get(label) or [""])[-1]
        names[label] = rest.strip() if rest.strip() and key == innermost else line
    return names


@register_source("list", "Places-LT / ImageNet-LT list files (*_train.txt, *_test.txt, *_val.txt), list:<dir>")
def _list(path: str, options: DataConfig) -> DatasetBundle:
    source = f"list:{path}"
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise DataError(f"{source}: {folder} is not a directory holding list files")
    lists = {split: _read_list(file) for split, file in _list_files(folder, source).items()}
    rows = [row for split_rows in lists.values() for row in split_rows]
    folders = _class_folders(rows)
    classnames_file = os.path.join(folder, CLASSNAMES_FILE)
    names = _file_names(classnames_file, folders, source) if os.path.isfile(classnames_file) else _folder_names(folders)
    base = os.path.abspath(os.path.expanduser(options.root)) if options.root else folder
    # An out-of-range label keeps a placeholder name here; _build reports it with its position.
    entries = {split: [(rel, y, names.get(y, str(y))) for rel, y in split_rows] for split, split_rows in lists.items()}
    return _build(source, PHOTO_TEMPLATE, base, entries, folder, {"lists": folder, "long_tailed": True})
