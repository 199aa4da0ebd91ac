"""Dataset sources: one registry from a source string to labelled image splits.

  world:<task>        the embedded procedural world (ptlab.world.tasks)
  coop:<Name>         CoOp's layout under a data root: <root>/<folder>/ with its
                      split_zhou_*.json {"train"|"val"|"test": [[path, label, classname], ...]};
                      FGVCAircraft reads variants.txt + images_variant_<split>.txt and
                      ImageNet images/{train,val}/<wnid>/ + classnames.txt, as CoOp does
                      (ImageNet's val folder is both val and test, as in CoOp)
  folder:<dir>        one sub-folder per class; <dir>/split.json in the same format,
                      else a fixed per-class 50/20/30 split (see SPLIT_SEED)
  torchvision:<Name>  torchvision's dataset classes, never downloading unasked; splits
                      torchvision lacks are made per class like folder:'s (see
                      TORCHVISION_DATASETS)

The data root is DataConfig.root, else $PTLAB_DATA. Class names are the
dataset's own (split file, folder or torchvision), underscores read as spaces.
Every split exposes labels, a lazy image store, and an identity string that
changes whenever its content could, so frozen-encoder features can be cached
under it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from ptlab.config import DataConfig

RENDER_VERSION = 1  # bump when the world renderer changes pixels
DATA_ENV = "PTLAB_DATA"  # data root of coop: and torchvision: sources when DataConfig.root is unset
SPLIT_NAMES = ("train", "val", "test")


class DataError(ValueError):
    """Missing or malformed data; each problem names the path and what was expected.

    A check that finds many problems (a split file listing thousands of missing
    images) keeps them all in `problems` for `ptlab data check`, but shows only
    the first few so that a failing trial's log stays readable.
    """

    SHOWN = 10

    def __init__(self, *problems: str):
        self.problems = list(problems)
        shown = self.problems[: self.SHOWN]
        if len(self.problems) > self.SHOWN:
            shown.append(f"... and {len(self.problems) - self.SHOWN} more (ptlab data check SOURCE lists them all)")
        super().__init__("\n".join(shown))


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

    @property
    def long_tailed(self) -> bool:
        """Its training split is long-tailed by design, so trials report many/medium/few-shot accuracy."""
        return bool(self.meta.get("long_tailed"))

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"dataset {self.source!r} has no {name!r} split; it has {', '.join(self.splits)}")
        return self.splits[name]


SourceLoader = Callable[[str, DataConfig], DatasetBundle]
SOURCES: dict[str, SourceLoader] = {}
SOURCE_HELP: dict[str, str] = {}
SOURCE_NAMES: dict[str, Callable[[], list[str]]] = {}


def register_source(scheme: str, help_text: str, names: Callable[[], list[str]] | None = None):
    def wrap(fn: SourceLoader) -> SourceLoader:
        SOURCES[scheme] = fn
        SOURCE_HELP[scheme] = help_text
        if names is not None:
            SOURCE_NAMES[scheme] = names
        return fn

    return wrap


def list_sources() -> list[tuple[str, str]]:
    """(scheme, help) for `ptlab data list`; the help ends with the names a scheme knows."""
    rows = []
    for scheme, help_text in SOURCE_HELP.items():
        names = SOURCE_NAMES[scheme]() if scheme in SOURCE_NAMES else []
        rows.append((scheme, f"{help_text}; known: {', '.join(names)}" if names else help_text))
    return rows


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
    return _load_cached(scheme, rest, options, os.environ.get(DATA_ENV))


# The data root may come from the environment, so its value is part of the key:
# a changed $PTLAB_DATA must not return the bundle of the old root.
@functools.lru_cache(maxsize=8)
def _load_cached(scheme: str, rest: str, options: DataConfig, env_root: str | None) -> DatasetBundle:
    return SOURCES[scheme](rest, options)


def check_dataset(source: str, options: DataConfig | None = None) -> list[str]:
    """Every problem `ptlab data check` finds: structure, then that each image file decodes.

    Reads the disk as it is now (no cache) and decodes every image, so it
    costs a pass over the files, unlike loading, which only stats them.
    """
    try:
        scheme, rest = parse_source(source)
        bundle = SOURCES[scheme](rest, options or DataConfig())
    except DataError as err:
        return err.problems
    problems = []
    checked: set[str] = set()
    for name, split in bundle.splits.items():
        if len(split) == 0:
            problems.append(f"{source}: split {name!r} has no images")
            continue
        absent = np.flatnonzero(class_counts(split.labels, bundle.n_classes) == 0)
        if name == "train" and len(absent):
            listed = ", ".join(repr(bundle.classnames[c]) for c in absent[:10])
            problems.append(f"{source}: {len(absent)} classes have no training images: {listed}")
        if isinstance(split.images, FileImages) and split.images.identity not in checked:
            checked.add(split.images.identity)
            problems.extend(_unreadable(split.images.paths))
    return problems


def _unreadable(paths: Sequence[str]) -> list[str]:
    problems = []
    for path in paths:
        try:
            # decoded whole: a valid header over a truncated body only fails here (verify() reads the header)
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, ValueError) as err:  # PIL reports some broken files as SyntaxError
            problems.append(f"{path}: not a readable image: {err}")
    return problems


def split_counts(bundle: DatasetBundle) -> dict[str, np.ndarray]:
    """Images per class in each split: what `ptlab data check` prints."""
    return {name: class_counts(split.labels, bundle.n_classes) for name, split in bundle.splits.items()}


def _world_names() -> list[str]:
    from ptlab.world.tasks import LONG_TAILED, TASKS

    return [*TASKS, *LONG_TAILED]


@register_source("world", "embedded procedural world, world:<task>", _world_names)
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
    meta = {"domain": options.domain, "long_tailed": name in LONG_TAILED}
    return DatasetBundle(f"world:{name}", task.classnames, task.template, splits, meta)


def class_counts(labels: Sequence[int], n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


# --- image files on disk: shared by coop:, folder: and torchvision: ---------

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
PHOTO_TEMPLATE = "a photo of a {}."
Entry = tuple[str, int, str]  # (path relative to the image folder, label, class name), CoOp's split-file row

# Datasets without an official split are split per class by a fixed hash of
# each image's relative path (salted with SPLIT_SEED), with CoOp's ratios:
# 50/20/30 train/val/test for a single pool, 80/20 train/val for a train-val
# set. The order within a class does not depend on the listing, so adding or
# removing an image moves at most the images at split boundaries; every split
# after the first gets at least one image of each class.
SPLIT_SEED = 0
POOL_FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
TRAINVAL_FRACTIONS = {"train": 0.8, "val": 0.2}


def _data_root(options: DataConfig, source: str) -> str:
    root = options.root or os.environ.get(DATA_ENV)
    if not root:
        raise DataError(
            f"{source}: no data root: set data.root in the trial config or the {DATA_ENV} environment variable"
        )
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"{source}: data root {root} is not a directory")
    return root


def _list_images(folder: str) -> list[str]:
    """Image files under folder (recursively, hidden entries skipped), as sorted relative paths."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(here, folder)
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(f if rel == "." else os.path.join(rel, f))
    return sorted(found)


def _class_folders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _read_split_file(path: str) -> dict[str, list[Entry]]:
    expected = '{"train"|"val"|"test": [[relative_path, label, classname], ...]}'
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise DataError(f"{path}: split file not found; expected a JSON file {expected}") from err
    except OSError as err:
        raise DataError(f"{path}: split file unreadable ({err}); expected a JSON file {expected}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); expected {expected}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {expected}, found a {type(data).__name__}")
    problems = [f"{path}: no {s!r} list; expected {expected}" for s in SPLIT_NAMES if not isinstance(data.get(s), list)]
    problems += [
        f"{path}: unexpected key {k!r}; expected only train, val and test" for k in data if k not in SPLIT_NAMES
    ]
    if problems:
        raise DataError(*problems)
    entries: dict[str, list[Entry]] = {}
    for split in SPLIT_NAMES:
        rows = []
        for i, row in enumerate(data[split]):
            if (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and row[0]
                and isinstance(row[1], int)
                and not isinstance(row[1], bool)
                and isinstance(row[2], str)
                and row[2]
            ):
                rows.append((row[0], row[1], row[2]))
            else:
                problems.append(
                    f"{path}: {split}[{i}] is {json.dumps(row)[:80]}; expected [relative_path, label, classname]"
                )
        entries[split] = rows
    if problems:
        raise DataError(*problems)
    return entries


def _class_table(entries: dict[str, list[Entry]], where: str) -> list[str]:
    """Class names by label; one name per label, one label per name, labels 0..C-1."""
    name_of: dict[int, tuple[str, str]] = {}
    label_of: dict[str, tuple[int, str]] = {}
    problems = []
    for split, rows in entries.items():
        for i, (_, label, name) in enumerate(rows):
            at = f"{split}[{i}]"
            first_name, first_at = name_of.setdefault(label, (name, at))
            if first_name != name:
                problems.append(f"{where}: {at} names label {label} {name!r}, but {first_at} named it {first_name!r}")
            first_label, first_at = label_of.setdefault(name, (label, at))
            if first_label != label:
                problems.append(
                    f"{where}: {at} gives class {name!r} label {label}, but {first_at} gave it {first_label}"
                )
    n = len(name_of)
    for label, (_, at) in sorted(name_of.items()):
        if not 0 <= label < n:
            problems.append(
                f"{where}: {at}: label {label} out of range; {n} distinct labels, so labels must be 0..{n - 1}"
            )
    if problems:
        raise DataError(*problems)
    return [name_of[label][0] for label in range(n)]


def _file_images(
    source: str, split: str, base: str, rels: Sequence[str], where: str, problems: list[str]
) -> FileImages:
    """Images of one split; a missing file is a problem, and the identity fingerprints the rest.

    The identity hashes (path, size, mtime) in split order rather than sorted:
    cached features are stored by index, so a reordered split is new content.
    """
    paths = tuple(os.path.join(base, r) for r in rels)
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except OSError:
            problems.append(f"{path}: image file not found (listed in {where}, {split}[{i}])")
            continue
        digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return FileImages(paths, f"{source}:{split}:{base}:n{len(paths)}:{digest.hexdigest()[:16]}")


def _build(
    source: str, template: str, base: str, entries: dict[str, list[Entry]], where: str, meta: dict
) -> DatasetBundle:
    classnames = _class_table(entries, where)
    problems: list[str] = []
    splits = {
        split: Split(
            np.array([label for _, label, _ in rows], dtype=np.int64),
            _file_images(source, split, base, [rel for rel, _, _ in rows], where, problems),
        )
        for split, rows in entries.items()
    }
    if problems:
        raise DataError(*problems)
    # CoOp's prompt learner turns underscores into spaces before tokenising.
    names = [c.replace("_", " ") for c in classnames]
    return DatasetBundle(source, names, template, splits, {"root": base, **meta})


def _split_per_class(
    rels: Sequence[str], labels: Sequence[int], fractions: dict[str, float], classnames: Sequence[str], where: str
) -> dict[str, list[int]]:
    """Indices of each split, in the original order; see SPLIT_SEED for the rule."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    names = list(fractions)
    out: dict[str, list[int]] = {s: [] for s in names}
    problems = []
    for label, idx in sorted(by_class.items()):
        idx.sort(key=lambda i: hashlib.sha256(f"{SPLIT_SEED}:{rels[i]}".encode()).digest())
        later = [max(1, round(fractions[s] * len(idx))) for s in names[1:]]
        first = len(idx) - sum(later)
        if first < 1:
            problems.append(
                f"{where}: class {classnames[label]!r} has {len(idx)} images; splitting it into "
                f"{', '.join(names)} needs at least {len(names)}"
            )
            continue
        start = 0
        for s, count in zip(names, [first, *later], strict=True):
            out[s].extend(idx[start : start + count])
            start += count
    if problems:
        raise DataError(*problems)
    return {s: sorted(v) for s, v in out.items()}


def _pick(rows: Sequence[Entry], indices: Sequence[int]) -> list[Entry]:
    return [rows[i] for i in indices]


# --- coop:<Name> ------------------------------------------------------------


@dataclass(frozen=True)
class CoopLayout:
    folder: str  # under the data root
    images: str  # folder the split file's paths are relative to, under `folder` ("" = `folder` itself)
    template: str  # CoOp's single zero-shot template (methods.md section 2)
    split_file: str | None  # None: CoOp reads the dataset's own lists instead (FGVCAircraft, ImageNet)


COOP_DATASETS = {
    "OxfordPets": CoopLayout("oxford_pets", "images", "a photo of a {}, a type of pet.", "split_zhou_OxfordPets.json"),
    "Flowers102": CoopLayout(
        "oxford_flowers", "jpg", "a photo of a {}, a type of flower.", "split_zhou_OxfordFlowers.json"
    ),
    "FGVCAircraft": CoopLayout("fgvc_aircraft", "images", "a photo of a {}, a type of aircraft.", None),
    "DescribableTextures": CoopLayout("dtd", "images", "{} texture.", "split_zhou_DescribableTextures.json"),
    "EuroSAT": CoopLayout("eurosat", "2750", "a centered satellite photo of {}.", "split_zhou_EuroSAT.json"),
    "StanfordCars": CoopLayout("stanford_cars", "", PHOTO_TEMPLATE, "split_zhou_StanfordCars.json"),
    "Food101": CoopLayout("food-101", "images", "a photo of {}, a type of food.", "split_zhou_Food101.json"),
    "SUN397": CoopLayout("sun397", "SUN397", PHOTO_TEMPLATE, "split_zhou_SUN397.json"),
    "Caltech101": CoopLayout("caltech-101", "101_ObjectCategories", PHOTO_TEMPLATE, "split_zhou_Caltech101.json"),
    "UCF101": CoopLayout("ucf101", "UCF-101-midframes", "a photo of a person doing {}.", "split_zhou_UCF101.json"),
    "ImageNet": CoopLayout("imagenet", "images", PHOTO_TEMPLATE, None),
}
# CoOp's own registry names, so that its configs' names work too.
COOP_ALIASES = {"OxfordFlowers": "Flowers102", "DTD": "DescribableTextures"}


def _known(table: dict, aliases: dict[str, str], name: str, source: str) -> str:
    lookup = {k.lower(): k for k in table} | {a.lower(): k for a, k in aliases.items()}
    if name.lower() not in lookup:
        raise DataError(f"dataset {source!r}: unknown name {name!r}; known: {', '.join(table)}")
    return lookup[name.lower()]


def _read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError as err:
        raise DataError(f"{path}: not found; expected {what}") from err
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err}); expected {what}") from err


def _aircraft_entries(folder: str) -> dict[str, list[Entry]]:
    """CoOp's FGVCAircraft: variants.txt names the classes, images_variant_<split>.txt lists '<id> <variant>'."""
    variants = _read_lines(os.path.join(folder, "variants.txt"), "one aircraft variant per line (the class names)")
    label_of = {v: i for i, v in enumerate(variants)}
    entries, problems = {}, []
    for split in SPLIT_NAMES:
        path = os.path.join(folder, f"images_variant_{split}.txt")
        rows = []
        for i, line in enumerate(_read_lines(path, "lines '<image id> <variant>'"), 1):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                problems.append(
                    f"{path}: line {i}: {line[:80]!r}; expected '<image id> <variant>' with a variant of variants.txt"
                )
                continue
            rows.append((f"{image_id}.jpg", label_of[variant], variant))
        entries[split] = rows
    if problems:
        raise DataError(*problems)
    return entries


def _imagenet_entries(folder: str) -> dict[str, list[Entry]]:
    """CoOp's ImageNet: images/{train,val}/<wnid>/*, names from classnames.txt ('<wnid> <class name>').

    Labels follow the sorted wnid folders of train. CoOp has no validation
    split for ImageNet: its val set serves as test (and the caller reuses it
    as val, as CoOp does).
    """
    names_path = os.path.join(folder, "classnames.txt")
    names = {}
    for line in _read_lines(names_path, "lines '<wnid> <class name>'"):
        wnid, _, name = line.partition(" ")
        if not name:
            raise DataError(f"{names_path}: line {line[:80]!r}; expected '<wnid> <class name>'")
        names[wnid] = name
    dirs = {s: os.path.join(folder, "images", s) for s in ("train", "val")}
    for d in dirs.values():
        if not os.path.isdir(d):
            raise DataError(f"{d}: not found; expected one folder per wnid of CoOp's ImageNet layout")
    wnids = _class_folders(dirs["train"])
    problems = [
        f"{names_path}: no class name for folder {wnid!r} of {dirs['train']}" for wnid in wnids if wnid not in names
    ]
    extra = sorted(set(_class_folders(dirs["val"])) - set(wnids))
    problems += [f"{os.path.join(dirs['val'], w)}: class folder missing from {dirs['train']}" for w in extra]
    if problems:
        raise DataError(*problems)
    entries: dict[str, list[Entry]] = {"train": [], "test": []}
    for split, sub in (("train", "train"), ("test", "val")):
        for label, wnid in enumerate(wnids):
            class_dir = os.path.join(dirs[sub], wnid)
            if os.path.isdir(class_dir):
                entries[split].extend(
                    (os.path.join(sub, wnid, rel), label, names[wnid]) for rel in _list_images(class_dir)
                )
    return entries


@register_source(
    "coop",
    f"CoOp's datasets under data.root or ${DATA_ENV}, laid out as CoOp's DATASETS.md says, coop:<Name>",
    lambda: list(COOP_DATASETS),
)
def _coop(name: str, options: DataConfig) -> DatasetBundle:
    name = _known(COOP_DATASETS, COOP_ALIASES, name, f"coop:{name}")
    source, layout = f"coop:{name}", COOP_DATASETS[name]
    folder = os.path.join(_data_root(options, source), layout.folder)
    if not os.path.isdir(folder):
        raise DataError(f"{source}: {folder} not found; expected CoOp's {layout.folder}/ folder under the data root")
    base = os.path.join(folder, layout.images) if layout.images else folder
    if name == "ImageNet":
        entries = _imagenet_entries(folder)
        bundle = _build(source, layout.template, base, entries, folder, {"val_is_test": True})
        bundle.splits["val"] = bundle.splits["test"]
        return bundle
    if name == "FGVCAircraft":
        return _build(source, layout.template, base, _aircraft_entries(folder), folder, {})
    split_file = os.path.join(folder, layout.split_file)
    return _build(source, layout.template, base, _read_split_file(split_file), split_file, {"split_file": split_file})


# --- folder:<dir> -----------------------------------------------------------

FOLDER_SPLIT_FILE = "split.json"


@register_source(
    "folder",
    f"one sub-folder per class, folder:<dir>; <dir>/{FOLDER_SPLIT_FILE} (CoOp's split format) or a fixed 50/20/30 split",
)
def _folder(path: str, options: DataConfig) -> DatasetBundle:
    source = f"folder:{path}"
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise DataError(f"{source}: {folder} is not a directory; expected one sub-folder of images per class")
    split_file = os.path.join(folder, FOLDER_SPLIT_FILE)
    if os.path.exists(split_file):
        return _build(
            source, PHOTO_TEMPLATE, folder, _read_split_file(split_file), split_file, {"split_file": split_file}
        )
    classes = _class_folders(folder)
    if not classes:
        raise DataError(f"{source}: {folder} has no class sub-folders; expected one sub-folder of images per class")
    rows, empty = [], []
    for label, cls in enumerate(classes):
        images = _list_images(os.path.join(folder, cls))
        if not images:
            empty.append(f"{os.path.join(folder, cls)}: no images (files ending {', '.join(sorted(IMAGE_EXTENSIONS))})")
        rows.extend((os.path.join(cls, rel), label, cls) for rel in images)
    if empty:
        raise DataError(*empty)
    parts = _split_per_class([r[0] for r in rows], [r[1] for r in rows], POOL_FRACTIONS, classes, folder)
    entries = {split: _pick(rows, idx) for split, idx in parts.items()}
    return _build(source, PHOTO_TEMPLATE, folder, entries, folder, {"split_seed": SPLIT_SEED})


# --- torchvision:<Name> -----------------------------------------------------


@dataclass(frozen=True)
class TorchvisionLayout:
    folder: str  # what the class reads under its root; checked first, so a missing dataset names its path
    template: str
    # native: torchvision's train/val/test; trainval: (train+val, test) with val
    # carved off per class; pool: one unsplit set; val_is_test: CoOp's ImageNet
    # convention (train, val) with val serving as both val and test.
    splits: Literal["native", "trainval", "pool", "val_is_test"]
    split_args: tuple[str, ...] = ()
    root: str = ""  # sub-folder of the data root handed to torchvision as its root
    downloadable: bool = True


TORCHVISION_DATASETS = {
    "DTD": TorchvisionLayout("dtd/dtd", "{} texture.", "native", ("train", "val", "test")),
    "EuroSAT": TorchvisionLayout("eurosat/2750", "a centered satellite photo of {}.", "pool"),
    "Flowers102": TorchvisionLayout(
        "flowers-102", "a photo of a {}, a type of flower.", "native", ("train", "val", "test")
    ),
    "OxfordIIITPet": TorchvisionLayout(
        "oxford-iiit-pet", "a photo of a {}, a type of pet.", "trainval", ("trainval", "test")
    ),
    "FGVCAircraft": TorchvisionLayout(
        "fgvc-aircraft-2013b", "a photo of a {}, a type of aircraft.", "native", ("train", "val", "test")
    ),
    "StanfordCars": TorchvisionLayout("stanford_cars", PHOTO_TEMPLATE, "trainval", ("train", "test")),
    "Food101": TorchvisionLayout("food-101", "a photo of {}, a type of food.", "trainval", ("train", "test")),
    "SUN397": TorchvisionLayout("SUN397", PHOTO_TEMPLATE, "pool"),
    "Caltech101": TorchvisionLayout("caltech101/101_ObjectCategories", PHOTO_TEMPLATE, "pool"),
    "ImageNet": TorchvisionLayout("imagenet", PHOTO_TEMPLATE, "val_is_test", ("train", "val"), "imagenet", False),
}
TORCHVISION_ALIASES = {"OxfordPets": "OxfordIIITPet", "DescribableTextures": "DTD"}


def _torchvision_samples(ds, cls: str) -> tuple[list[str], list[int]]:
    """(image paths, labels) without decoding images.

    torchvision has no public file list for most of these classes, so this
    reads the attributes its releases keep them in.
    """
    if hasattr(ds, "samples"):  # ImageFolder subclasses: EuroSAT, ImageNet
        return [str(p) for p, _ in ds.samples], [int(y) for _, y in ds.samples]
    if hasattr(ds, "_samples"):  # StanfordCars
        return [str(p) for p, _ in ds._samples], [int(y) for _, y in ds._samples]
    files = getattr(ds, "_image_files", None) or getattr(ds, "_images", None)  # _images: OxfordIIITPet
    if files is not None and hasattr(ds, "_labels"):
        return [str(p) for p in files], [int(y) for y in ds._labels]
    if hasattr(ds, "categories") and hasattr(ds, "index"):  # Caltech101 names files by per-class index
        folder = os.path.join(ds.root, "101_ObjectCategories")
        paths = [
            os.path.join(folder, ds.categories[y], f"image_{i:04d}.jpg") for y, i in zip(ds.y, ds.index, strict=True)
        ]
        return paths, [int(y) for y in ds.y]
    raise DataError(f"torchvision:{cls}: this torchvision release keeps its file list where ptlab does not look")


def _torchvision_classes(ds) -> list[str]:
    names = getattr(ds, "classes", None) or getattr(ds, "categories", None)
    if not names:
        raise DataError(f"torchvision {type(ds).__name__}: this torchvision release has no class names for it")
    # ImageNet gives each class a tuple of synonyms; the first is the common name.
    return [n[0] if isinstance(n, tuple) else str(n) for n in names]


@register_source(
    "torchvision",
    f"torchvision's dataset classes under data.root or ${DATA_ENV}, torchvision:<Class>; downloads only with data.download",
    lambda: list(TORCHVISION_DATASETS),
)
def _torchvision(name: str, options: DataConfig) -> DatasetBundle:
    if name.lower() == "ucf101":
        raise DataError(
            "torchvision:UCF101 yields video clips (PyAV and annotation folds), not images; "
            "use coop:UCF101, which reads CoOp's extracted middle frames"
        )
    name = _known(TORCHVISION_DATASETS, TORCHVISION_ALIASES, name, f"torchvision:{name}")
    source, layout = f"torchvision:{name}", TORCHVISION_DATASETS[name]
    root = _data_root(options, source)
    expected = os.path.join(root, layout.folder)
    if options.download and not layout.downloadable:
        raise DataError(f"{source}: torchvision cannot download {name}; place it at {expected}")
    if not options.download and not os.path.isdir(expected):
        raise DataError(
            f"{source}: {expected} not found; torchvision's {name} reads it under the data root {root}. "
            "ptlab never downloads unasked: set data.download: true to let torchvision fetch it"
        )
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name)
    tv_root = os.path.join(root, layout.root)
    kwargs = {"download": options.download} if layout.downloadable else {}
    parts, classnames = {}, None
    for arg in layout.split_args or (None,):
        try:
            ds = cls(tv_root, **({"split": arg} if arg else {}), **kwargs)
        except (RuntimeError, OSError, ImportError, KeyError, ValueError) as err:
            raise DataError(f"{source}: torchvision's {name} could not read {tv_root}: {err}") from err
        names = _torchvision_classes(ds)
        if classnames is not None and names != classnames:
            raise DataError(
                f"{source}: torchvision's {name} split {arg!r} under {tv_root} has other classes than the first split"
            )
        classnames = names
        paths, labels = _torchvision_samples(ds, name)
        parts[arg] = [(os.path.relpath(p, tv_root), y, classnames[y]) for p, y in zip(paths, labels, strict=True)]
    if layout.splits == "native":
        entries = {s: parts[s] for s in SPLIT_NAMES}
    elif layout.splits == "val_is_test":
        entries = {"train": parts["train"], "test": parts["val"]}
    else:
        pool = parts[layout.split_args[0] if layout.split_args else None]
        fractions = TRAINVAL_FRACTIONS if layout.splits == "trainval" else POOL_FRACTIONS
        idx = _split_per_class([r[0] for r in pool], [r[1] for r in pool], fractions, classnames, tv_root)
        entries = {split: _pick(pool, i) for split, i in idx.items()}
        if layout.splits == "trainval":
            entries["test"] = parts[layout.split_args[1]]
    meta = {"split_seed": SPLIT_SEED} if layout.splits in ("trainval", "pool") else {}
    bundle = _build(source, layout.template, tv_root, entries, tv_root, meta)
    if layout.splits == "val_is_test":
        bundle.splits["val"] = bundle.splits["test"]
    return bundle
