"""Dataset sources: one registry from a source string to labelled image splits.

  world:<task>        the embedded procedural world (ptlab.world.tasks)
  coop:<Name>         CoOp's split_zhou_<Name>.json layout under a data root
  folder:<dir>        one sub-folder per class, optional split file
  torchvision:<Name>  torchvision's dataset classes, never downloading unasked

Every split exposes labels, a lazy image store, and an identity string that
changes whenever its content could, so frozen-encoder features can be cached
under it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ptlab.config import DataConfig

RENDER_VERSION = 1  # bump when the world renderer changes pixels


class DataError(ValueError):
    """Missing or malformed data; the message names the path and what was expected."""


class ImageStore:
    """Lazy, indexable images of one split."""

    identity: str

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ArrayImages(ImageStore):
    array: np.ndarray  # uint8 (N, H, W, 3)
    identity: str

    def __len__(self) -> int:
        return len(self.array)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.array[index])


@dataclass(frozen=True, eq=False)
class FileImages(ImageStore):
    paths: tuple[str, ...]
    identity: str

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError as err:
            raise DataError(f"image file missing: {path}") from err
        except OSError as err:
            raise DataError(f"image file unreadable (corrupt or not an image): {path}: {err}") from err


@dataclass(frozen=True)
class Split:
    labels: np.ndarray
    images: ImageStore

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetBundle:
    source: str
    classnames: list[str]
    template: str
    splits: dict[str, Split]
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"dataset {self.source!r} has no {name!r} split; it has {', '.join(self.splits)}")
        return self.splits[name]


SourceLoader = Callable[[str, DataConfig], DatasetBundle]
SOURCES: dict[str, SourceLoader] = {}
SOURCE_HELP: dict[str, str] = {}


def register_source(scheme: str, help_text: str):
    def wrap(fn: SourceLoader) -> SourceLoader:
        SOURCES[scheme] = fn
        SOURCE_HELP[scheme] = help_text
        return fn

    return wrap


def parse_source(source: str) -> tuple[str, str]:
    scheme, sep, rest = source.partition(":")
    if not sep or not rest:
        raise DataError(f"dataset {source!r}: expected SCHEME:NAME with SCHEME one of {', '.join(sorted(SOURCES))}")
    if scheme not in SOURCES:
        raise DataError(f"dataset {source!r}: unknown scheme {scheme!r}; known: {', '.join(sorted(SOURCES))}")
    return scheme, rest


def load_dataset(source: str, options: DataConfig | None = None) -> DatasetBundle:
    options = options or DataConfig()
    scheme, rest = parse_source(source)
    return _load_cached(scheme, rest, options)


@functools.lru_cache(maxsize=8)
def _load_cached(scheme: str, rest: str, options: DataConfig) -> DatasetBundle:
    return SOURCES[scheme](rest, options)


@register_source("world", "embedded procedural world: world:shapes, world:colors, world:color-shapes, ...")
def _world(name: str, options: DataConfig) -> DatasetBundle:
    from ptlab.world.tasks import LONG_TAILED, SPLITS, make_split, render_split, world_task

    try:
        task = world_task(name)
        splits = {}
        for split in SPLITS:
            ws = make_split(name, split, domain=options.domain, imbalance=options.imbalance)
            lt = f":imb{options.imbalance:g}" if name in LONG_TAILED and split == "train" else ""
            identity = f"world:{name}:{options.domain}{lt}:{split}:r{RENDER_VERSION}"
            splits[split] = Split(ws.labels, ArrayImages(render_split(ws), identity))
    except KeyError as err:
        raise DataError(f"dataset 'world:{name}': {err.args[0]}") from err
    return DatasetBundle(f"world:{name}", task.classnames, task.template, splits, {"domain": options.domain})


def class_counts(labels: Sequence[int], n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
