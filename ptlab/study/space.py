"""From a study to its trials: grid cells x seeds, and the Optuna search space.

Factor and search names are TrialConfig field paths with dots ("train.lr",
"gce_q", "method_options.alpha"); a unique leaf name ("lr") is accepted as a
shorthand and resolved here, so every other module sees full paths only.
"""

from __future__ import annotations

import difflib
import itertools
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ptlab.config import TrialConfig

# Dict-valued fields take any key below them.
OPEN_FIELDS = ("method_options",)


def _field_kinds(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            kinds.update(_field_kinds(annotation, f"{prefix}{name}."))
        else:
            kinds[f"{prefix}{name}"] = annotation
    return kinds


FIELD_KINDS: dict[str, Any] = _field_kinds(TrialConfig)


class FieldPathError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def resolve_field(name: str) -> str:
    """Full dotted path of a TrialConfig field, from the path itself or a unique leaf name."""
    if name in FIELD_KINDS or any(name.startswith(f"{f}.") and len(name) > len(f) + 1 for f in OPEN_FIELDS):
        return name
    leaves = [path for path in FIELD_KINDS if path.rsplit(".", 1)[-1] == name]
    if len(leaves) == 1:
        return leaves[0]
    if len(leaves) > 1:
        raise FieldPathError(f"{name!r} is ambiguous: write one of {', '.join(leaves)}")
    near = difflib.get_close_matches(name, list(FIELD_KINDS), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    raise FieldPathError(
        f"{name!r} is not a trial config field; {hint}allowed: {', '.join(FIELD_KINDS)}, "
        f"or {', '.join(f + '.<key>' for f in OPEN_FIELDS)}"
    )


def is_integer_field(path: str) -> bool:
    kind = FIELD_KINDS.get(path)
    options = set(typing.get_args(kind)) - {type(None)} or {kind}
    return options == {int}


class Dist(BaseModel):
    """One search dimension, written as a one-key mapping: {log_uniform: [1e-4, 1e-1]}."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    log_int: tuple[int, int] | None = None
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Dist:
        given = [k for k in ("uniform", "log_uniform", "int_", "log_int", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a search dimension is exactly one of {uniform: [lo, hi]}, {log_uniform: [lo, hi]}, "
                "{int: [lo, hi]}, {log_int: [lo, hi]} or {choice: [a, b, ...]}"
            )
        if self.kind != "choice":
            lo, hi = self.bounds
            if not lo < hi:
                raise ValueError(f"{self.kind}: [{lo}, {hi}] needs lo < hi")
            if self.kind.startswith("log") and lo <= 0:
                raise ValueError(f"{self.kind}: [{lo}, {hi}] needs lo > 0 (a log scale)")
        return self

    @property
    def kind(self) -> Literal["uniform", "log_uniform", "int", "log_int", "choice"]:
        for k in ("uniform", "log_uniform", "log_int", "choice"):
            if getattr(self, k) is not None:
                return k
        return "int"

    @property
    def bounds(self) -> tuple[Any, Any]:
        return getattr(self, "int_" if self.kind == "int" else self.kind)

    def probe_values(self) -> list[Any]:
        """Values whose validity stands for the whole dimension: the bounds or every choice."""
        return list(self.choice) if self.kind == "choice" else list(self.bounds)

    def optuna(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.choice)
        lo, hi = self.bounds
        if self.kind in ("int", "log_int"):
            return IntDistribution(lo, hi, log=self.kind == "log_int")
        return FloatDistribution(lo, hi, log=self.kind == "log_uniform")

    def to_yaml(self) -> dict[str, Any]:
        value = self.bounds if self.kind != "choice" else self.choice
        return {self.kind: list(value)}


def cell_id(cfg: TrialConfig) -> str:
    """Same for trials that differ only in their seed."""
    return cfg.with_updates({"seed": 0}).trial_id


def field_value(cfg: TrialConfig, path: str) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def cell_of(cfg: TrialConfig, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The factor values of a trial's cell."""
    return {path: field_value(cfg, path) for path in fields}


def cell_label(cell: dict[str, Any]) -> str:
    """A cell as people read it, and as its search's Optuna study and Train runs are named: noise_rate=0.25,loss=gce."""
    return ",".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in cell.items()) or "base"


@dataclass(frozen=True)
class PlannedTrial:
    config: TrialConfig
    cell: dict[str, Any]  # factor path -> value of this trial's cell
    # Other cells of the grid whose configs compute the same thing (one canonical form,
    # TrialConfig.canonical): this trial is their result too, run once.
    repeats: tuple[dict[str, Any], ...] = ()

    @property
    def trial_id(self) -> str:
        return self.config.trial_id

    @property
    def cell_id(self) -> str:
        return cell_id(self.config)


def grid_cells(factors: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(factors)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(factors[n] for n in names))]


def cell_groups(base: TrialConfig, factors: dict[str, list[Any]],
                space: dict[str, Dist] | None = None) -> list[list[dict[str, Any]]]:
    """The grid's cells grouped by what they compute (their cell id), each group in grid order.

    A group of several is one computation written several ways, e.g. noise
    types at noise_rate 0, where no label is flipped: its first cell is the
    one a study runs, and the others repeat it. With a search `space`, cells
    are one only if they are so at every probe value of it (each bound and
    choice, the values where what a field decides can change: a sampled loss
    that reads a factor, a sampled noise rate above 0).
    """
    probes = [dict(zip(space, values, strict=True))
              for values in itertools.product(*(d.probe_values() for d in space.values()))] if space else [{}]
    groups: dict[Any, list[dict[str, Any]]] = {}
    for i, cell in enumerate(grid_cells(factors)):
        try:
            key = tuple(cell_id(base.with_updates({**cell, **probe})) for probe in probes)
        except ValidationError:  # a cell no sample can run is the tuner's to report, and repeats nothing
            key = i
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def differing_fields(cell: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """The factor values of `cell` that `other` does not share: what tells a repeated cell from the one it repeats."""
    return {path: value for path, value in cell.items() if other.get(path) != value}


def expand_grid(base: TrialConfig, groups: list[list[dict[str, Any]]], seeds: list[int]) -> list[PlannedTrial]:
    """Every distinct cell x seed, from `cell_groups`: cells in factor order (the last factor varies fastest),
    seeds innermost. A cell that computes what an earlier one does is no trial of its own but one of that
    trial's `repeats`."""
    return [
        PlannedTrial(base.with_updates({**first, "seed": seed}), first, tuple(repeats))
        for first, *repeats in groups
        for seed in seeds
    ]


def sampled_config(base: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    return base.with_updates(params)


def optuna_space(space: dict[str, Dist]) -> dict[str, Any]:
    return {path: dist.optuna() for path, dist in space.items()}
