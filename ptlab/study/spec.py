"""The study file: schema, loading, and validation that points at the offending line.

A study YAML holds study keys (name, method, factors, seeds, search, ...) and,
beside them, any TrialConfig field (backbone, dataset, shots, train, ...) as
the base config every trial starts from. Validation runs before anything
else and reports every problem at once as `FILE:LINE: field F: what is wrong;
what is allowed`; it never loads weights or data.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from ptlab.config import TrialConfig
from ptlab.models.backbone import backbone_problem
from ptlab.study import guards
from ptlab.study.space import (
    Dist,
    FieldPathError,
    PlannedTrial,
    expand_grid,
    is_integer_field,
    resolve_field,
)

STUDY_KEYS = (
    "name", "description", "method", "factors", "seeds", "ensemble", "search", "selection", "resources", "runner",
    "retries", "max_concurrent", "report", "storage", "planned_trials", "spec_hash",
)
TRIAL_KEYS = tuple(k for k in TrialConfig.model_fields if k not in ("method", "seed"))
# Keys that change which trials run or what they compute; the rest is how they run. The
# ensembles are left out: computed from the stored trials, they may be changed in a stored
# study and are computed afresh when it resumes.
HASHED_KEYS = ("method", "base", "factors", "seeds", "search")
# Fewer validation images than this rank accuracies in steps of over half a point:
# ASHA and the selection then judge configurations on ties.
MIN_VALIDATION_IMAGES = 200


@dataclass(frozen=True)
class StudyKind:
    """What a study does, asked by the tuner, the trial, the progress view, the CLI and the validator.

    grid: every cell x seed at fixed hyperparameters. search: one cell, Optuna
    samples of `search.space`, one seed. tuned_grid: for every cell a search
    (phase "search"), then the cell's selected configuration re-run for every
    seed (phase "rerun"); only the re-runs are the cell's result.
    """

    name: Literal["grid", "search", "tuned_grid"]

    @property
    def searches(self) -> bool:
        """Trials are Optuna samples, stream their epochs and may be stopped by ASHA."""
        return self.name != "grid"

    @property
    def has_cells(self) -> bool:
        """Trials fall into factor cells, each run for every seed."""
        return self.name != "search"

    @property
    def reruns(self) -> bool:
        return self.name == "tuned_grid"

    def __str__(self) -> str:
        return self.name.replace("_", " ")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(Frozen):
    """Per trial; with runner: train, cpu and gpu are per worker."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    workers: int = Field(1, ge=1)

    @field_validator("gpu")
    @classmethod
    def _whole_gpus(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("a trial takes a fraction of one GPU (e.g. 0.25) or whole GPUs (1, 2, ...)")
        return gpu


class Asha(Frozen):
    """ASHA on the trial's own `epoch`: rungs at grace_period * reduction_factor^k epochs."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class Search(Frozen):
    space: dict[str, Dist] = Field(min_length=1)
    samples: int = Field(ge=1)
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    asha: Asha | None = Asha()
    sampler_seed: int | None = None  # default: the study's seed


class StudySpec(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    description: str = ""
    method: str
    base: TrialConfig
    factors: dict[str, list[Any]] = {}
    seeds: list[int] = Field([1], min_length=1)
    # method -> sizes of the seed ensembles computed once the trials end, each over a
    # cell's lowest seeds (ptlab.methods.ensemble); one size may be written without a list.
    ensemble: dict[str, list[PositiveInt]] = {}
    search: Search | None = None
    # How a tuned grid picks each cell's configuration: by search.metric on validation,
    # or (oracle, labelled so wherever shown) by the matching test metric.
    selection: Literal["val", "oracle"] = "val"
    resources: Resources = Resources()
    runner: Literal["train", "inline"] = "train"
    retries: int = Field(1, ge=0)
    max_concurrent: int | None = Field(None, ge=1)
    report: str | None = None
    # Where trials' files and the study's results go when several nodes run it (ptlab.study.storage):
    # where a study is kept, not what it computes, so outside its hash.
    storage: str | None = None
    planned_trials: int | None = None
    spec_hash: str | None = None

    @field_validator("ensemble", mode="before")
    @classmethod
    def _one_size_is_a_list(cls, ensemble: Any) -> Any:
        if not isinstance(ensemble, dict):
            return ensemble
        return {m: [n] if isinstance(n, int) and not isinstance(n, bool) else n for m, n in ensemble.items()}

    @property
    def kind(self) -> StudyKind:
        if self.search is None:
            return StudyKind("grid")
        return StudyKind("tuned_grid" if self.factors else "search")

    def trials(self) -> list[PlannedTrial]:
        """The grid's distinct trials (a tuned grid's re-runs at its base config); searches' come from their samplers."""
        return expand_grid(self.base, self.cell_groups(), self.seeds)

    def cell_groups(self) -> list[list[dict[str, Any]]]:
        """Every cell of the grid, grouped with the cells that compute the same thing (space.cell_groups)."""
        from ptlab.study.space import cell_groups

        return cell_groups(self.base, self.factors, self.search.space if self.kind.reruns else None)

    def cells(self) -> list[dict[str, Any]]:
        """The distinct cells, each the first of its group: what a tuned grid searches and re-runs once."""
        return [first for first, *_ in self.cell_groups()]

    def n_planned(self) -> int:
        kind = self.kind
        if kind.name == "grid":
            return len(self.trials())
        if kind.name == "search":
            return self.search.samples
        return len(self.cells()) * (self.search.samples + len(self.seeds))

    def n_cells(self) -> int:
        return self.search.samples if self.kind.name == "search" else len(self.cells())

    @property
    def selection_metric(self) -> str:
        """The column a tuned grid's selection ranks by: the search metric, or its test twin for oracle."""
        metric = self.search.metric
        return metric if self.selection == "val" else "test_" + metric.removeprefix("val_")

    def content_hash(self) -> str:
        keys = set(HASHED_KEYS) | ({"selection"} if self.kind.reruns else set())
        blob = json.dumps(self.model_dump(mode="json", include=keys), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_run(self) -> dict[str, Any]:
        """The spec as it runs: every base field spelled out, with its hash and planned trial count."""
        base = guards.without_paths(self.base.model_dump(mode="json"), ["seed", "method", *self.factors])
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["method"] = self.method
        out.update(base)
        out["factors"] = self.factors
        out["seeds"] = self.seeds
        if self.ensemble:
            out["ensemble"] = self.ensemble
        if self.search:
            search = self.search.model_dump(mode="json", exclude={"space"})
            search["space"] = {k: d.to_yaml() for k, d in self.search.space.items()}
            out["search"] = search
        if self.kind.reruns:
            out["selection"] = self.selection
        out["resources"] = self.resources.model_dump(mode="json")
        out.update(runner=self.runner, retries=self.retries)
        if self.max_concurrent:
            out["max_concurrent"] = self.max_concurrent
        out["report"] = self.report
        if self.storage:
            out["storage"] = self.storage
        out.update(planned_trials=self.n_planned(), spec_hash=self.content_hash())
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_run(), sort_keys=False, default_flow_style=None, width=100)


class StudyError(ValueError):
    """A study that does not validate; each line names file, line, field and the fix."""


# --- YAML with line numbers --------------------------------------------------

Path_ = tuple[Any, ...]


def _line_map(root: yaml.Node | None) -> dict[Path_, int]:
    """1-based line of every key and list item, by its path from the document root."""
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if root is not None:
        lines[()] = root.start_mark.line + 1
        walk(root, ())
    return lines


def _field_name(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Issues:
    def __init__(self, source: str, lines: dict[Path_, int], origins: dict[Path_, str]):
        self.source, self.lines, self.origins, self.items = source, lines, origins, []
        # resolved path -> path as written, for renamed factor and search keys
        self.written: dict[Path_, Path_] = {}

    def _as_written(self, path: Path_) -> Path_:
        for n in range(len(path), 0, -1):
            if path[:n] in self.written:
                return self.written[path[:n]] + path[n:]
        return path

    def add(self, path: Path_, message: str) -> None:
        path = self._as_written(tuple(path))
        origin = next((self.origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.origins), None)
        line = next((self.lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self.lines), 0)
        where = f"{self.source}:{line}" if line else self.source
        if origin:
            where, line = f"{self.source} ({origin})", 0
        self.items.append((line, f"{where}: field {_field_name(path)}: {message}"))

    def add_pydantic(self, err: ValidationError) -> None:
        for e in err.errors():
            loc = tuple(e["loc"])
            # base fields are written at the top level of the study file
            loc = loc[1:] if loc[:1] == ("base",) else loc
            # pydantic names the union member or validator it tried; the user never wrote those
            loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
            message = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                message = "unknown field" + (_allowed_keys(loc) or "")
            elif e["type"] != "missing" and not isinstance(e.get("input"), dict | list):
                message = f"{e.get('input')!r}: {message}"
            self.add(loc, message)

    def raise_if_any(self) -> None:
        if self.items:
            lines = list(dict.fromkeys(text for _, text in sorted(self.items, key=lambda item: item[0])))
            raise StudyError("\n".join([f"{self.source}: invalid study ({len(lines)} problems)"] + lines))


def _allowed_keys(path: Path_) -> str:
    """'; allowed: ...' for an unknown key inside one of the study's nested mappings."""
    parent = path[:-1]
    models = {("resources",): Resources, ("search",): Search, ("search", "asha"): Asha,
              ("train",): TrialConfig.model_fields["train"].annotation,
              ("data",): TrialConfig.model_fields["data"].annotation}
    model = Dist if parent[:2] == ("search", "space") and len(parent) == 3 else models.get(parent)
    if model is None:
        return ""
    names = [info.alias or name for name, info in model.model_fields.items()]
    near = difflib.get_close_matches(str(path[-1]), names, n=1)
    hint = f" did you mean {near[0]!r}?" if near else ""
    return f";{hint} allowed: {', '.join(names)}"


# --- names that need no loading (backbones: ptlab.models.backbone.backbone_problem) ----


def dataset_problem(source: str) -> str | None:
    """Why a dataset source cannot name a dataset, judged from its scheme and name only (no files read)."""
    from ptlab.data.sources import COOP_ALIASES, SOURCE_NAMES, TORCHVISION_ALIASES, DataError, parse_source

    try:
        scheme, name = parse_source(source)
    except DataError as err:
        return str(err)
    if scheme not in SOURCE_NAMES:
        return None
    known = SOURCE_NAMES[scheme]()
    aliases = {"coop": COOP_ALIASES, "torchvision": TORCHVISION_ALIASES}.get(scheme, {})
    if name.lower() not in {n.lower() for n in [*known, *aliases]}:
        return f"unknown {scheme} dataset {name!r}; allowed: {', '.join(f'{scheme}:{n}' for n in known)}"
    return None


# --- validation -------------------------------------------------------------------


def _resolve_keys(data: dict, where: Path_, issues: _Issues, forbid_seed: bool = True) -> dict:
    """Rename shorthand field names under `where` to full paths, remembering how they were written."""
    node = data
    for part in where[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    mapping = node.get(where[-1]) if isinstance(node, dict) else None
    if not isinstance(mapping, dict):
        return data
    resolved = {}
    for name, value in mapping.items():
        if not isinstance(name, str):
            issues.add(where + (name,), "field names are strings")
            continue
        if forbid_seed and name == "seed":
            issues.add(where + (name,), "seeds are not a factor: list them under `seeds:`")
            continue
        try:
            full = resolve_field(name)
        except FieldPathError as err:
            issues.add(where + (name,), str(err))
            continue
        if full in resolved:
            issues.add(where + (name,), f"names the same field as another entry ({full})")
            continue
        issues.written[where + (full,)] = where + (name,)
        resolved[full] = value
    node[where[-1]] = resolved
    return data


def _split_keys(data: dict, issues: _Issues) -> dict:
    study, base = {}, {}
    for key, value in data.items():
        if key in STUDY_KEYS:
            study[key] = value
        elif key in TRIAL_KEYS:
            base[key] = value
        elif key == "seed":
            issues.add((key,), "a study lists its seeds: write `seeds: [1, 2, 3]`")
        else:
            near = difflib.get_close_matches(str(key), STUDY_KEYS + TRIAL_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            issues.add((key,), f"unknown field; {hint}allowed: study keys ({', '.join(STUDY_KEYS)}) "
                               f"or trial config fields ({', '.join(TRIAL_KEYS)})")
    study["base"] = {**base, "method": data["method"]} if isinstance(data.get("method"), str) else base
    return study


def _check_value(base: TrialConfig, path: str, value: Any, alone: bool = False) -> str | None:
    """What is wrong with setting `path` to `value` on the base config.

    With alone=True only the value itself is judged; rules that tie several
    fields together are left to the cell that combines them.
    """
    if path == "backbone" and isinstance(value, str):
        return backbone_problem(value)
    if path == "dataset" and isinstance(value, str):
        return dataset_problem(value)
    try:
        base.with_updates({path: value})
    except ValidationError as err:
        errors = [e for e in err.errors() if e["loc"] or not alone]
        if errors:
            return f"{value!r}: {errors[0]['msg'].removeprefix('Value error, ')}"
    return None


def _check_factors(spec: StudySpec, issues: _Issues) -> bool:
    ok = True
    for path, values in spec.factors.items():
        if not values:
            issues.add(("factors", path), "empty list: every factor needs at least one value (an empty factor empties the grid)")
            ok = False
            continue
        seen = []
        for i, value in enumerate(values):
            if value in seen:
                issues.add(("factors", path, i), f"{value!r} is listed twice")
                ok = False
            seen.append(value)
            problem = _check_value(spec.base, path, value, alone=True)
            if problem:
                issues.add(("factors", path, i), problem)
                ok = False
    return ok


def _check_cells(spec: StudySpec, issues: _Issues) -> None:
    from ptlab.study.space import grid_cells

    bad = []
    for cell in grid_cells(spec.factors):
        try:
            spec.base.with_updates(cell)
        except ValidationError as err:
            bad.append(f"{json.dumps(cell)} ({err.errors()[0]['msg'].removeprefix('Value error, ')})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        issues.add(("factors",), f"{len(bad)} cells are not valid trials: {'; '.join(bad[:3])}{more}; "
                                 "change the factor values so every combination is valid")


def _check_unread(spec: StudySpec, written: dict[str, Path_], issues: _Issues) -> None:
    """A field the study sets that none of its trials reads: an error, not a silent no-op.

    (An option the study's method does not take is refused by TrialConfig itself.)
    """
    from ptlab.methods.registry import LOSS_PARAMS, METHODS, OPTIONAL_FIELDS

    methods = [METHODS[m] for m in dict.fromkeys(spec.factors.get("method", [spec.method])) if m in METHODS]
    if len(methods) < len(set(spec.factors.get("method", [spec.method]))):
        return  # an unknown method is the problem reported; what it would read is unknown
    losses = set(spec.factors.get("loss", [spec.base.loss]))
    if spec.search and "loss" in spec.search.space:
        losses |= set(spec.search.space["loss"].probe_values())
    for path, where in written.items():
        if path in OPTIONAL_FIELDS and not any(path in m.uses for m in methods):
            issues.add(where, f"method {', '.join(m.name for m in methods)} does not read {path}; remove it "
                              "(a field a method ignores would only make trials that compute the same thing)")
        elif any(path in params.values() for params in LOSS_PARAMS.values()) and any(path in m.uses for m in methods):
            owners = [name for name, params in LOSS_PARAMS.items() if path in params.values()]
            if not losses & set(owners):
                issues.add(where, f"{path} is a parameter of loss {' or '.join(owners)}, which no trial of this study "
                                  f"uses (losses: {', '.join(sorted(map(str, losses)))}); remove it or set loss")


def _check_base_to_new(spec: StudySpec, issues: _Issues) -> None:
    """Base-to-new needs a classifier rebuilt from the held-out names and a context shared by every class."""
    from ptlab.methods.registry import METHODS

    where = ("factors", "data.base_to_new") if "data.base_to_new" in spec.factors else ("data", "base_to_new")
    if not (spec.base.data.base_to_new or True in spec.factors.get("data.base_to_new", [])):
        return
    methods = [m for m in spec.factors.get("method", [spec.method]) if m in METHODS]
    unable = [m for m in methods if not METHODS[m].new_classes]
    if unable:
        able = ", ".join(sorted(m for m, reg in METHODS.items() if reg.new_classes))
        issues.add(where, f"method {', '.join(unable)} cannot classify classes it was not trained on; "
                          f"base-to-new runs with {able}")
    for field in ("csc", "learn_classnames"):
        if getattr(spec.base, field) or True in spec.factors.get(field, []):
            issues.add(where, f"{field}: true learns something per training class, which new classes lack; "
                              f"set {field}: false")


def _written_fields(study: dict, spec: StudySpec) -> dict[str, Path_]:
    """Trial fields the study sets, by full path, with where they are written.

    A fixed field written at its default changes no trial (a stored as-run
    spec spells every field out), so it is not counted as set; a factor or a
    searched field always is.
    """
    written: dict[str, Path_] = {}
    for key, value in study["base"].items():
        if key != "method" and value != getattr(TrialConfig.model_fields.get(key), "default", None):
            written[key] = (key,)
    written.update({path: ("factors", path) for path in spec.factors if path != "method"})
    if spec.search:
        written.update({path: ("search", "space", path) for path in spec.search.space})
    return written


def _check_search(spec: StudySpec, issues: _Issues) -> None:
    from ptlab.methods.registry import METHODS

    search = spec.search
    for path, dist in search.space.items():
        if path in spec.factors:
            issues.add(("search", "space", path), "is also a factor; a field is either searched or a factor")
        if is_integer_field(path) and dist.kind in ("uniform", "log_uniform"):
            issues.add(("search", "space", path), f"{path} is an integer field: use int: [lo, hi] or log_int: [lo, hi]")
            continue
        if path == "train.epochs" and search.asha:
            issues.add(("search", "space", path), "ASHA schedules over epochs; search train.epochs only with asha: null")
            continue
        for value in dist.probe_values():
            problem = _check_value(spec.base, path, value)
            if problem:
                issues.add(("search", "space", path, dist.kind), problem)
    methods = spec.factors.get("method", [spec.method])
    for method in methods:
        produced = METHODS[method].metrics if method in METHODS else ()
        if method in METHODS and search.metric not in produced:
            issues.add(("search", "metric"), f"{search.metric!r} is not produced by method {method}; allowed: {', '.join(produced)}")
        elif method in METHODS and spec.kind.reruns and spec.selection_metric not in produced:
            issues.add(("selection",), f"oracle selection ranks by {spec.selection_metric!r}, which method {method} "
                                       f"does not produce; use selection: val or a search.metric with a test twin")
    if spec.kind.reruns:
        if search.metric.startswith("test_"):
            issues.add(("search", "metric"), f"{search.metric!r} is a test metric: a tuned grid selects on validation "
                                             "(e.g. val_acc); to select on test say so with `selection: oracle`")
    elif len(spec.seeds) > 1:
        issues.add(("seeds",), "a search study runs one seed (each sample is one trial); list a single seed, "
                               "or add `factors` to make it a tuned grid whose selected configurations run every seed")
    if search.asha:
        epochs = spec.base.train.epochs
        if search.asha.grace_period >= epochs:
            issues.add(("search", "asha", "grace_period"),
                       f"{search.asha.grace_period} must be below train.epochs ({epochs}): ASHA's rungs come before the last epoch")


def _check_ensemble(spec: StudySpec, issues: _Issues) -> None:
    from ptlab.methods.ensemble import ENSEMBLE_METHODS

    if spec.kind.searches:
        issues.add(("ensemble",), f"a {spec.kind} study has no fixed-config seeds to ensemble; remove `ensemble` "
                                  "or ensemble the selected configurations in a grid study")
        return
    methods = spec.factors.get("method", [spec.method])
    for method, sizes in spec.ensemble.items():
        if method not in ENSEMBLE_METHODS:
            issues.add(("ensemble", method), f"method {method!r} saves no test logits to ensemble; "
                                             f"allowed: {', '.join(ENSEMBLE_METHODS)}")
        elif method not in methods:
            issues.add(("ensemble", method), f"the study runs no {method} trials (its methods: {', '.join(methods)}); "
                                             "remove it here or add it to factors.method")
        too_big = [n for n in sizes if n > len(spec.seeds)]
        if too_big:
            issues.add(("ensemble", method), f"an ensemble of {max(too_big)} needs as many seeds but the study lists "
                                             f"{len(spec.seeds)}; add seeds or lower the size")


def _check_report(spec: StudySpec, source: Path | None, issues: _Issues) -> str | None:
    if spec.report is None:
        return None
    candidates = [Path(spec.report).expanduser()]
    if source is not None and not candidates[0].is_absolute():
        candidates = [source.parent / spec.report, source.parent.parent / spec.report, Path.cwd() / spec.report]
    for path in candidates:
        if path.is_file():
            return str(path.resolve())
    issues.add(("report",), f"no dashboard file {spec.report!r} (looked in {', '.join(str(c.parent) for c in candidates)}); "
                            "name a YAML file under dashboards/ or leave `report` out for the default")
    return None


def validate_study(data: Any, source: str | Path = "<study>", lines: dict[Path_, int] | None = None,
                   origins: dict[Path_, str] | None = None, check_data: bool = True) -> StudySpec:
    """A checked StudySpec from parsed YAML, or a StudyError listing every problem.

    `origins` names where a field came from when not from the file (a `--set`).
    check_data=False leaves out what needs the data on disk (guards.check_dataset_files), for
    judging a study file on a machine without its datasets.
    """
    path = Path(source) if source != "<study>" else None
    issues = _Issues(str(source), lines or {}, origins or {})
    if not isinstance(data, dict):
        issues.add((), "a study is a mapping of fields (name, method, factors, seeds, ...)")
        issues.raise_if_any()
    data = _resolve_keys(dict(data), ("factors",), issues)
    if isinstance(data.get("search"), dict):
        data["search"] = dict(data["search"])
        data = _resolve_keys(data, ("search", "space"), issues)
    study = _split_keys(data, issues)
    factors = study.get("factors") if isinstance(study.get("factors"), dict) else {}
    if not guards.check_study(study["base"], factors, study.get("seeds", [1]), issues.add,
                              stored="spec_hash" in study, check_data=check_data):
        issues.raise_if_any()  # a grid too large to look at: refused before anything else is judged
    # (an unknown method is TrialConfig's to refuse, once, with the nearest name)
    for key in ("backbone", "dataset"):
        problem = _check_value(TrialConfig(), key, data[key]) if isinstance(data.get(key), str) else None
        if problem:
            issues.add((key,), problem)
    try:
        spec = StudySpec.model_validate(study)
    except ValidationError as err:
        issues.add_pydantic(err)
    issues.raise_if_any()

    if len(set(spec.seeds)) != len(spec.seeds):
        issues.add(("seeds",), "a seed is listed twice")
    _check_unread(spec, _written_fields(study, spec), issues)
    _check_base_to_new(spec, issues)
    if _check_factors(spec, issues) and spec.kind.has_cells:
        _check_cells(spec, issues)
    if spec.kind.searches:
        _check_search(spec, issues)
    if "selection" in study and not spec.kind.reruns:
        issues.add(("selection",), f"a {spec.kind} study selects nothing: `selection` belongs to tuned grids "
                                   "(factors and search together); remove it")
    if spec.ensemble:
        _check_ensemble(spec, issues)
    if spec.resources.workers > 1 and spec.runner == "inline":
        issues.add(("resources", "workers"), "data-parallel workers need runner: train (inline runs one process)")
    report = _check_report(spec, path, issues)
    if spec.storage is not None:
        from ptlab.study.storage import storage_problem

        problem = storage_problem(spec.storage)
        if problem:
            issues.add(("storage",), problem)
    issues.raise_if_any()
    if spec.planned_trials is not None and spec.planned_trials != spec.n_planned():
        issues.add(("planned_trials",), f"says {spec.planned_trials} but the study plans {spec.n_planned()} trials; "
                                        "fix or remove planned_trials")
    if spec.spec_hash is not None and spec.spec_hash != spec.content_hash():
        issues.add(("spec_hash",), f"the study's trials changed since it was written (hash {spec.content_hash()}, "
                                   f"file says {spec.spec_hash}); undo the change to resume the study, or remove spec_hash and "
                                   "planned_trials and run it as a new study in a new folder (--out)")
    issues.raise_if_any()
    return spec.model_copy(update={"report": report}) if report else spec


def validation_images(cfg: TrialConfig) -> int | None:
    """How many images a trial validates on, where that is known without reading data (world tasks)."""
    from ptlab.data.fewshot import validation_shots
    from ptlab.data.sources import parse_source
    from ptlab.world.tasks import world_task

    scheme, name = parse_source(cfg.dataset)
    if scheme != "world":
        return None
    task = world_task(name)
    per_class = task.per_class["val"]
    shots = per_class if cfg.shots == 0 else min(validation_shots(cfg.shots, cfg.data.val_shots), per_class)
    return shots * len(task.classnames)


def study_warnings(spec: StudySpec) -> list[str]:
    """What is valid but likely to mislead: a search ranking configurations on too few validation images."""
    if not spec.kind.searches or not spec.search.metric.startswith("val_"):
        return []
    configs = [spec.base.with_updates(cell) for cell in spec.cells()]
    sizes = [n for n in map(validation_images, configs) if n is not None]
    if not sizes or min(sizes) >= MIN_VALIDATION_IMAGES:
        return []
    n = min(sizes)
    return [f"study {spec.name}: {spec.search.metric} is measured on {n} validation images, steps of {100 / n:.2g} "
            f"points: ASHA and the selection will often judge {spec.search.samples} configurations on ties; "
            f"validate on at least {MIN_VALIDATION_IMAGES} images (raise data.val_shots)"]


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        guards.check_yaml(root)
        return yaml.safe_load(text), _line_map(root)
    except guards.YamlRefused as err:
        raise StudyError(f"{source}:{err.line}: field {_field_name(err.path)}: {err.message}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise StudyError(f"{where}: not valid YAML: {problem}") from err


# --- command-line overrides -----------------------------------------------------

# Mappings whose keys are field paths with dots of their own: `factors.train.lr` sets the key `train.lr`.
PATH_KEYED = (("factors",), ("search", "space"))


def _override_path(field: str) -> Path_:
    parts = field.split(".")
    for prefix in PATH_KEYED:
        if tuple(parts[: len(prefix)]) == prefix and len(parts) > len(prefix):
            return prefix + (".".join(parts[len(prefix):]),)
    return tuple(parts)


def _same_field(a: Any, b: str) -> bool:
    try:
        return resolve_field(str(a)) == resolve_field(b)
    except FieldPathError:
        return False


def apply_overrides(data: Any, overrides: list[str], lines: dict[Path_, int]) -> tuple[Any, dict[Path_, str]]:
    """The study with each `FIELD=VALUE` (a YAML value) set, and where each override came from.

    Field paths are those of the study file (`train.lr`, `factors.noise_rate`,
    `search.samples`); validation then judges the result as if written there,
    naming the `--set` rather than a line.
    """
    origins: dict[Path_, str] = {}
    bad = []
    if not isinstance(data, dict):
        return data, origins
    for override in overrides:
        field, sep, text = override.partition("=")
        field = field.strip()
        if not sep or not field:
            bad.append(f"--set {override}: write FIELD=VALUE, e.g. --set train.lr=0.01 or --set factors.noise_rate='[0, 0.5]'")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            bad.append(f"--set {override}: the value is not valid YAML: {getattr(err, 'problem', None) or err}")
            continue
        path = _override_path(field)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                bad.append(f"--set {override}: field {'.'.join(map(str, path[: i + 1]))} is not a mapping "
                           f"(it is {child!r}); set it whole, e.g. --set {path[0]}=...")
                break
            node = child
        else:
            if path[:-1] in PATH_KEYED:
                # `--set factors.train.lr=...` replaces the file's `lr:` there: both name one field
                for key in [k for k in node if k != path[-1] and _same_field(k, path[-1])]:
                    del node[key]
            node[path[-1]] = value
            origins[path] = f"--set {override}"
            lines.pop(path, None)
    if bad:
        raise StudyError("\n".join(["invalid --set overrides"] + bad))
    return data, origins


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_data: bool = True) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise StudyError(f"{path}: no such study file") from err
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise StudyError(f"{path}: not a readable YAML study file: {err}") from err
    data, lines = parse_yaml(text, str(path))
    data, origins = apply_overrides(data, list(overrides), lines)
    return validate_study(data, path, lines, origins, check_data)


def stored_plan(data: Any) -> StudySpec | None:
    """The spec of a study folder's study.yaml as far as planning goes, for readers of stored results.

    No check of validate_study runs (a report reads what was run, on a
    machine that may lack its data or weights); None where the file is no
    spec this ptlab can plan.
    """
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        return None
    issues = _Issues("<stored>", {}, {})
    data = _resolve_keys(dict(data), ("factors",), issues)
    if isinstance(data.get("search"), dict):
        data["search"] = dict(data["search"])
        data = _resolve_keys(data, ("search", "space"), issues)
    study = _split_keys(data, issues)
    if issues.items:
        return None
    try:
        return StudySpec.model_validate(study)
    except ValidationError:
        return None
