"""Guards of study validation against hostile or meaningless input, run before anything is expanded or loaded.

Two kinds. The YAML itself: aliases that expand a short file into millions of
nodes (or into itself) and duplicated keys, whose last value YAML silently
keeps, are refused on the composed node tree, before any Python object is
built from it. The study's meaning: a grid whose size, computed from factor
lengths, is beyond the limit; settings every trial would crash on or that mean
nothing (a field fixed and also a factor, a negative seed, `shots: true`,
shots beyond every class, a context longer than the text tower's, a dataset
folder that is not there, an unknown device, a template with no slot for the
class name). Each problem is reported like every other validation problem:
file, line, field and the fix.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

# Nodes a study's YAML may expand to through aliases; a real study has a few hundred.
MAX_YAML_NODES = 20_000
# Trials a grid may plan; override with PTLAB_MAX_TRIALS for a deliberately large study.
MAX_TRIALS_ENV = "PTLAB_MAX_TRIALS"
DEFAULT_MAX_TRIALS = 10_000
# Methods that learn CoOp's context vectors from cfg.n_ctx.
CONTEXT_METHODS = ("coop", "upl", "robust_upl", "full_prompt")
# SOS, at least one class-name token, the final "." and EOT around the context.
PROMPT_OVERHEAD = 4
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

Path_ = tuple[Any, ...]
Report = Callable[[Path_, str], None]


class YamlRefused(ValueError):
    """The YAML is refused before it is built: (line, key path, message)."""

    def __init__(self, line: int, path: Path_, message: str):
        super().__init__(message)
        self.line, self.path, self.message = line, path, message


def check_yaml(root: yaml.Node | None) -> None:
    """Refuse alias bombs, self-referencing aliases and duplicated keys in a composed document."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    building: set[int] = set()

    def size(node: yaml.Node, path: Path_) -> int:
        # expanded node count, each distinct node computed once: linear in the file, not in the expansion
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in building:
            raise YamlRefused(node.start_mark.line + 1, path, "an alias refers to the node it is part of; "
                              "a study is a finite tree: write the value out")
        building.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise YamlRefused(key.start_mark.line + 1, path + (key.value,),
                                          f"is written twice (lines {seen[key.value]} and {key.start_mark.line + 1}); "
                                          "YAML would keep only the last: remove one")
                    seen[key.value] = key.start_mark.line + 1
                total += size(value, path + (getattr(key, "value", "?"),))
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, path + (i,)) for i, item in enumerate(node.value))
        building.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_YAML_NODES:
            raise YamlRefused(node.start_mark.line + 1, path,
                              f"expands to more than {MAX_YAML_NODES} values through YAML aliases (*name); a study "
                              "needs a few hundred: write the values out instead of nesting aliases")
        return total

    size(root, ())


def check_study(base: dict[str, Any], factors: dict[str, Any], seeds: Any, report: Report, stored: bool = False,
                check_data: bool = True) -> bool:
    """Every guard on a study's fields as written (base config, resolved factor paths, seeds); False if the grid is too large.

    stored: the file is a study folder's study.yaml, which ptlab wrote and checked when the
    study started (its data included); those of older versions spell out every base
    field, factors included.
    """
    if not check_grid_size(factors, seeds, report):
        return False
    check_values(base, factors, seeds, report)
    if not stored:
        # The checks that read backbones and datasets ran when the study was written; a stored
        # spec is read by `ptlab study status`, which must stay free of torch and open_clip.
        check_fixed_and_factor(base, factors, report)
        check_context(base, factors, report)
        check_backbones(base, factors, report, check_files=check_data)
        if check_data:
            check_dataset_files(base, factors, report)
    return True


def max_trials() -> int:
    value = os.environ.get(MAX_TRIALS_ENV, "")
    return int(value) if value.isdigit() else DEFAULT_MAX_TRIALS


def check_grid_size(factors: dict[str, Any], seeds: Any, report: Report) -> bool:
    """Refuse a grid above the limit from its factor lengths alone; True if it may be expanded."""
    lengths = [len(v) for v in factors.values() if isinstance(v, list)]
    n_seeds = len(seeds) if isinstance(seeds, list) else 1
    planned = math.prod(lengths) * n_seeds
    limit = max_trials()
    if planned > limit:
        shape = " x ".join(f"{len(v)} {k}" for k, v in factors.items() if isinstance(v, list))
        report(("factors",), f"the grid plans {planned} trials ({shape} x {n_seeds} seeds), above the limit of "
                             f"{limit}; use fewer factor values, or raise the limit with {MAX_TRIALS_ENV}={planned}")
        return False
    return True


_ABSENT = object()


def _get(tree: dict[str, Any], path: str, default: Any) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def without_paths(tree: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """A copy of a nested config without the given dotted paths (the factors, when a spec is written out)."""
    out = {k: dict(v) if isinstance(v, dict) and k != "method_options" else v for k, v in tree.items()}
    for path in paths:
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def check_fixed_and_factor(base: dict[str, Any], factors: dict[str, Any], report: Report) -> None:
    for path in factors:
        if path != "method" and _get(base, path, _ABSENT) is not _ABSENT:
            report(("factors", path), f"{path} is also set to {_get(base, path, None)!r} outside the factors; "
                                      "a field is either fixed or a factor: remove one of the two")


def _numeric_kind(path: str) -> str | None:
    from ptlab.study.space import FIELD_KINDS

    options = set(typing.get_args(FIELD_KINDS.get(path))) - {type(None)} or {FIELD_KINDS.get(path)}
    if options & {int, float} and bool not in options:
        return "an integer" if int in options else "a number"
    return None


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        if isinstance(value, dict) and name != "method_options":
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _settings(base: dict[str, Any], factors: dict[str, Any]) -> Iterator[tuple[Path_, str, Any]]:
    """(where it is written, field path, value) of every value the study sets."""
    for path, value in _leaves(base):
        yield tuple(path.split(".")), path, value
    for path, values in factors.items():
        for i, value in enumerate(values if isinstance(values, list) else []):
            yield ("factors", path, i), path, value


def check_values(base: dict[str, Any], factors: dict[str, Any], seeds: Any, report: Report) -> None:
    """Values pydantic would accept but no trial can use."""
    for i, seed in enumerate(seeds if isinstance(seeds, list) else []):
        if isinstance(seed, int) and not isinstance(seed, bool) and seed < 0:
            report(("seeds", i), f"{seed}: a seed is a non-negative integer (numpy seeds cannot be negative)")
    for where, path, value in _settings(base, factors):
        kind = _numeric_kind(path)
        if isinstance(value, bool) and kind:
            report(where, f"{value!r}: {path} is {kind}, not true/false (YAML would read it as {int(value)})")
        elif path == "device" and isinstance(value, str) and not DEVICE.match(value):
            report(where, f"{value!r}: unknown device; allowed: auto, cpu, cuda, cuda:N, mps")
        elif path == "template" and isinstance(value, str) and value.count("{}") != 1:
            report(where, f"{value!r}: a template holds the class name's slot {{}} exactly once, "
                          "e.g. 'a photo of a {}.'")


def _choices(base: dict[str, Any], factors: dict[str, Any], path: str, default: Any) -> list[Any]:
    values = factors.get(path)
    return list(values) if isinstance(values, list) and values else [_get(base, path, default)]


def text_context(backbone: str) -> int | None:
    """The text tower's context length, from the backbone's names and config files alone; None where that needs its weights."""
    from ptlab.models.backbone import describe_backbone

    info = describe_backbone(backbone)
    return info.context_length if info else None


def backbone_method_problem(method: str, backbone: str) -> str | None:
    """Why `method` cannot run on `backbone`, judged from names and config files: a method that encodes
    text on a backbone whose tokenizer or text tower is not CLIP's (or that has none)."""
    from ptlab.methods.registry import METHODS
    from ptlab.models.backbone import describe_backbone

    if method not in METHODS:
        return None  # an unknown method is TrialConfig's to refuse
    info = describe_backbone(backbone)
    if info is None or info.kind in METHODS[method].backbones:
        return None
    needing = [m.name for m in METHODS.values() if info.kind not in m.backbones]
    taking = [m.name for m in METHODS.values() if info.kind in m.backbones]
    return (f"{info.text_problem}; {method} encodes text, which needs CLIP's tokenizer and text tower, as do "
            f"{', '.join(n for n in needing if n != method)}; use a CLIP backbone, or a method that reads images only "
            f"({', '.join(taking) or 'none'})")


def check_backbones(base: dict[str, Any], factors: dict[str, Any], report: Report, check_files: bool) -> None:
    """Backbones every method of the study can run on; with check_files, backbone files that are not there."""
    from ptlab.models.backbone import BACKBONE_SCHEMES, BackboneError, parse_backbone

    if check_files:
        for where, path, value in _settings(base, factors):
            if path != "backbone" or not isinstance(value, str):
                continue
            try:
                src = parse_backbone(value)
            except BackboneError:
                continue  # the name check reports it
            scheme = BACKBONE_SCHEMES[src.scheme]
            problem = None if scheme.problem(src) else scheme.files_problem(src)
            if problem:
                report(where, problem)
    where = ("factors", "backbone") if "backbone" in factors else ("factors", "method") if "method" in factors else ("backbone",)
    reported: set[str] = set()
    for method, backbone in itertools.product(_choices(base, factors, "method", "coop"),
                                              _choices(base, factors, "backbone", "world:tiny-rn")):
        if isinstance(method, str) and isinstance(backbone, str) and backbone not in reported:
            problem = backbone_method_problem(method, backbone)
            if problem:
                reported.add(backbone)
                report(where, problem)


def check_context(base: dict[str, Any], factors: dict[str, Any], report: Report) -> None:
    """n_ctx that leaves CoOp nothing to learn, or no room for the class name in the text context."""
    combos = itertools.product(*(_choices(base, factors, p, d) for p, d in
                                 (("method", "coop"), ("n_ctx", 16), ("backbone", "world:tiny-rn"),
                                  ("ctx_init", ""), ("learn_classnames", False))))
    where = ("factors", "n_ctx") if "n_ctx" in factors else ("n_ctx",)
    reported: set[str] = set()
    for method, n_ctx, backbone, ctx_init, learn_names in combos:
        if method not in CONTEXT_METHODS or ctx_init or not isinstance(n_ctx, int) or isinstance(n_ctx, bool):
            continue
        if n_ctx == 0 and not learn_names and method != "full_prompt" and "zero" not in reported:
            reported.add("zero")
            report(where, f"0: {method} with no context vectors learns nothing; use n_ctx >= 1 "
                          "(or method ctx0 for the class names alone)")
        length = text_context(backbone) if isinstance(backbone, str) else None
        if length is not None and n_ctx + PROMPT_OVERHEAD > length and backbone not in reported:
            reported.add(backbone)
            report(where, f"{n_ctx}: the text tower of {backbone} holds {length} tokens, so at most "
                          f"{length - PROMPT_OVERHEAD} context vectors leave room for the class name")


def train_class_sizes(dataset: str, data: dict[str, Any]) -> list[int] | None:
    """Training images per class, where the source tells them without reading images; None otherwise."""
    import numpy as np

    scheme, _, name = dataset.partition(":")
    try:
        if scheme == "world":
            from ptlab.world.tasks import make_split

            labels = make_split(name, "train", domain=data.get("domain", "photo"),
                                imbalance=float(data.get("imbalance", 100.0))).labels
        elif scheme == "folder":
            from ptlab.config import DataConfig
            from ptlab.data.sources import load_dataset

            labels = load_dataset(dataset, DataConfig.model_validate(data)).split("train").labels
        else:
            return None
    except Exception:  # an unknown name or bad folder is reported by its own check
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return [int(c) for c in counts if c > 0]


def check_dataset_files(base: dict[str, Any], factors: dict[str, Any], report: Report) -> None:
    """What needs the data on disk: folder datasets that are not there, shots beyond every class's training images."""
    for where, path, value in _settings(base, factors):
        if path == "dataset" and isinstance(value, str) and value.startswith("folder:"):
            folder = Path(value.removeprefix("folder:")).expanduser()
            if not folder.is_dir():
                report(where, f"{value!r}: no folder {folder.resolve()} (relative paths are read from "
                              f"{Path.cwd()}); name an existing folder with one sub-folder of images per class")
    data = base.get("data") if isinstance(base.get("data"), dict) else {}
    datasets = [d for d in _choices(base, factors, "dataset", "world:shapes") if isinstance(d, str)]
    sizes = {d: train_class_sizes(d, data) for d in datasets}
    for where, path, shots in _settings(base, factors):
        if path != "shots" or not isinstance(shots, int) or isinstance(shots, bool):
            continue
        for dataset, counts in sizes.items():
            if counts and shots > max(counts):
                report(where, f"{shots}: {dataset} has at most {max(counts)} training images in a class, so no "
                              f"class can give {shots} shots; use shots <= {max(counts)} (or 0 for every image)")
                break
