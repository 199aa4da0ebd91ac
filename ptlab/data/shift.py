"""Class shift between the prompted class list and the unlabelled data.

Universal adaptation (methods.md section 7) gives a model a list of known
class names and unlabelled data whose classes relate to that list in one of
four ways:

  closed        the data holds exactly the known classes
  partial       the data holds only some of them
  open          the data holds all of them and extra, unknown classes
  open_partial  the data misses some known classes and holds unknown ones

plus `none`, every class known and present (no shift at all). The test split
always holds every class of the dataset; classes outside the known list are
out-of-distribution (OOD) there.

Which classes play which part is a class split:

  proportional  Office-31's published pattern, scaled to the dataset's class
                count over its own class order. Office-31 (31 classes) knows
                0-24; partial data holds 0-19, open 0-27, open-partial 0-14 +
                25-27. Scaled: each boundary is round(C * b / 31), and the
                unknown classes of open-partial are those of open. For the
                world tasks: world:shapes (10 classes) knows 0-7 (circle ..
                ring), partial 0-5, open 0-8, open-partial 0-4 + 8;
                world:color-shapes (100) knows 0-80, partial 0-64, open 0-89,
                open-partial 0-47 + 81-89.
  office31, officehome, visda, domainnet
                the published splits of those datasets (methods.md section 7).
                Their class indices follow the alphabetical order of the class
                names with case and punctuation ignored, which reproduces the
                released lists' order for all four datasets; so a folder:
                source works whatever its folder names' case or order.
  a JSON file   {"known": [names], "partial": [names], "open": [names],
                "open_partial": [names]}: class names of the dataset, matched
                like the presets; "closed" is always the known list.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptlab.data.sources import DataError, DatasetBundle

SCENARIOS = ("none", "closed", "partial", "open", "open_partial")
UNKNOWN = -1  # label of an OOD test sample in the known-class index space

# Office-31's boundaries (class counts of each range) that `proportional` scales.
OFFICE_CLASSES = 31
OFFICE_KNOWN, OFFICE_PARTIAL, OFFICE_OPEN, OFFICE_OPEN_PARTIAL_SHARED = 25, 20, 28, 15


def _ranges(*spans: tuple[int, int]) -> tuple[int, ...]:
    """Class ids of inclusive (first, last) spans."""
    return tuple(i for first, last in spans for i in range(first, last + 1))


@dataclass(frozen=True)
class PublishedSplit:
    n_classes: int
    known: tuple[int, ...]
    present: dict[str, tuple[int, ...]]  # partial, open, open_partial


PUBLISHED_SPLITS = {
    "office31": PublishedSplit(
        31, _ranges((0, 24)), {"partial": _ranges((0, 19)), "open": _ranges((0, 27)),
                               "open_partial": _ranges((0, 14), (25, 27))}
    ),
    "officehome": PublishedSplit(
        65, _ranges((0, 49)), {"partial": _ranges((0, 34)), "open": _ranges((0, 59)),
                               "open_partial": _ranges((0, 34), (50, 59))}
    ),
    "visda": PublishedSplit(
        12, _ranges((0, 7)), {"partial": _ranges((0, 5)), "open": _ranges((0, 9)),
                              "open_partial": _ranges((0, 5), (8, 9))}
    ),
    "domainnet": PublishedSplit(
        345, _ranges((0, 299)), {"partial": _ranges((0, 249)), "open": _ranges((0, 329)),
                                 "open_partial": _ranges((0, 249), (300, 329))}
    ),
}


@dataclass(frozen=True)
class ClassShift:
    """Known and present classes as class ids of the dataset; known order is the prompt order."""

    scenario: str
    n_classes: int
    known: tuple[int, ...]
    present: tuple[int, ...]

    @property
    def unknown(self) -> tuple[int, ...]:
        return tuple(sorted(set(range(self.n_classes)) - set(self.known)))

    def known_labels(self, labels: np.ndarray) -> np.ndarray:
        """Dataset labels -> position in the known list, UNKNOWN for every other class."""
        table = np.full(self.n_classes, UNKNOWN, dtype=np.int64)
        table[list(self.known)] = np.arange(len(self.known))
        return table[np.asarray(labels, dtype=np.int64)]

    def present_positions(self, labels: np.ndarray) -> np.ndarray:
        """Positions of a split's samples whose class the unlabelled data holds."""
        return np.flatnonzero(np.isin(np.asarray(labels), self.present))

    def describe(self, classnames: list[str]) -> dict:
        return {
            "scenario": self.scenario,
            "known": [classnames[c] for c in self.known],
            "present": [classnames[c] for c in self.present],
            "unknown_present": [classnames[c] for c in self.present if c not in self.known],
            "known_absent": [classnames[c] for c in self.known if c not in self.present],
        }


def proportional_split(n_classes: int) -> PublishedSplit:
    """Office-31's pattern scaled to n_classes; every scenario keeps its defining property."""
    if n_classes < 3:
        raise ValueError(f"class shift needs at least 3 classes (a known, a missing and an unknown one), got {n_classes}")

    def scaled(count: int) -> int:
        return round(n_classes * count / OFFICE_CLASSES)

    known = min(max(scaled(OFFICE_KNOWN), 2), n_classes - 1)
    partial = min(max(scaled(OFFICE_PARTIAL), 1), known - 1)
    open_ = min(max(scaled(OFFICE_OPEN), known + 1), n_classes)
    shared = min(max(scaled(OFFICE_OPEN_PARTIAL_SHARED), 1), known - 1)
    return PublishedSplit(
        n_classes,
        tuple(range(known)),
        {
            "partial": tuple(range(partial)),
            "open": tuple(range(open_)),
            "open_partial": tuple(range(shared)) + tuple(range(known, open_)),
        },
    )


def name_key(name: str) -> str:
    """Sort and match key of a class name: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def alphabetical_ids(classnames: list[str]) -> list[int]:
    """Dataset class ids in the published splits' order (see module docstring)."""
    keys = [name_key(c) for c in classnames]
    if len(set(keys)) != len(keys):
        raise DataError("class names collide once case and punctuation are ignored; give the split as a JSON file of exact names")
    return sorted(range(len(classnames)), key=keys.__getitem__)


def _ids_of_names(names: list, classnames: list[str], where: str) -> tuple[int, ...]:
    lookup = {name_key(c): i for i, c in enumerate(classnames)}
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: expected a list of class names")
    missing = [n for n in names if name_key(n) not in lookup]
    if missing:
        raise DataError(f"{where}: not classes of the dataset: {', '.join(map(repr, missing[:10]))}")
    return tuple(lookup[name_key(n)] for n in names)


def _file_split(path: Path, classnames: list[str]) -> PublishedSplit:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"class split {path}: unreadable ({err}); expected a JSON object of class-name lists") from err
    needed = ("known", "partial", "open", "open_partial")
    if not isinstance(data, dict) or set(data) != set(needed):
        raise DataError(f"class split {path}: expected exactly the keys {', '.join(needed)}")
    ids = {k: _ids_of_names(data[k], classnames, f"class split {path}: {k}") for k in needed}
    return PublishedSplit(len(classnames), ids.pop("known"), ids)


def resolve_split(class_split: str, classnames: list[str]) -> PublishedSplit:
    """The class split named by DataConfig.class_split, as class ids of this dataset."""
    n = len(classnames)
    if class_split == "proportional":
        return proportional_split(n)
    if class_split in PUBLISHED_SPLITS:
        published = PUBLISHED_SPLITS[class_split]
        if published.n_classes != n:
            raise DataError(f"class split {class_split!r} is for {published.n_classes} classes; this dataset has {n}")
        order = alphabetical_ids(classnames)
        return PublishedSplit(
            n, tuple(order[i] for i in published.known),
            {k: tuple(order[i] for i in v) for k, v in published.present.items()},
        )
    path = Path(class_split).expanduser()
    if path.suffix == ".json":
        return _file_split(path, classnames)
    raise DataError(
        f"class split {class_split!r}: expected proportional, {', '.join(PUBLISHED_SPLITS)} or a .json file of class names"
    )


def class_shift(bundle: DatasetBundle, scenario: str, class_split: str = "proportional") -> ClassShift:
    """Known and present classes of `bundle` under `scenario`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown class-shift scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    everything = tuple(range(bundle.n_classes))
    if scenario == "none":
        return ClassShift(scenario, bundle.n_classes, everything, everything)
    split = resolve_split(class_split, bundle.classnames)
    present = split.known if scenario == "closed" else split.present[scenario]
    return ClassShift(scenario, bundle.n_classes, split.known, tuple(sorted(present)))
