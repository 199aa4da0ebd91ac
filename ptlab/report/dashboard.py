"""Dashboard files: which figures a report holds, from which columns, with which facets.

A dashboard is YAML in dashboards/. Column fields take one column or a list of
candidates, of which the first that varies in the study is used, so that one
dashboard serves every grid of its kind (a surface over noise rate x context
length, or x q, or x shots, whichever the study varies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import ptlab
from ptlab.yamlfile import read_mapping

# dashboards/ sits beside the package in the repository.
SHIPPED = Path(ptlab.__file__).resolve().parent.parent / "dashboards"

Columns = str | list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Figure(_Strict):
    title: str | None = None
    description: str = ""


class Curve(_Figure):
    """A metric against one factor (noise rate by default), a line per value of ``color``, with its CI band."""

    kind: Literal["curve"]
    x: Columns = "noise_rate"
    y: str = "test_acc"
    color: Columns | None = None
    facet: Columns | None = None
    band: bool = True


class _OverTwoFactors(_Figure):
    x: Columns = "noise_rate"
    y: Columns
    z: str = "test_acc"
    facet: Columns | None = None


class Surface(_OverTwoFactors):
    """A metric over two numeric factors; one 3D surface per value of ``facet``."""

    kind: Literal["surface"]


class Heatmap(_OverTwoFactors):
    """A metric over two factors of any type, mean ± CI written in each cell."""

    kind: Literal["heatmap"]


class Bars(_Figure):
    """Several metrics side by side per value of ``x`` (e.g. many/medium/few accuracy per method)."""

    kind: Literal["bars"]
    x: Columns | None = None
    ys: list[str] = Field(min_length=1)


class Scatter(_Figure):
    """One point per completed trial: metric against metric (e.g. pseudo-label vs test accuracy)."""

    kind: Literal["scatter"]
    x: str
    y: str = "test_acc"
    color: Columns | None = None


class LearningCurves(_Figure):
    """Per-trial metric by epoch from curves.parquet; trials that ASHA stopped end in a cross."""

    kind: Literal["learning_curves"]
    y: str = "val_acc"
    color: Columns | None = None


class ParamImportance(_Figure):
    """Optuna's hyperparameter importance (PED-ANOVA) from the study's Optuna storage."""

    kind: Literal["param_importance"]


class ParallelCoordinates(_Figure):
    """Optuna's parallel-coordinates plot of every completed trial."""

    kind: Literal["parallel_coordinates"]


Figure = Annotated[
    Curve | Surface | Heatmap | Bars | Scatter | LearningCurves | ParamImportance | ParallelCoordinates,
    Field(discriminator="kind"),
]


class Summary(_Strict):
    """The report's summary table."""

    metrics: list[str] = ["test_acc"]
    sort_by: str | None = None  # a metric; cells best first
    descending: bool = True
    limit: int | None = Field(None, ge=1)


class Dashboard(_Strict):
    title: str
    description: str = ""
    summary: Summary = Summary()
    figures: list[Figure] = Field(min_length=1)


class DashboardError(ValueError):
    """A dashboard file that does not load; the message names file, line and field."""


def _line(node: yaml.Node, loc: tuple[Any, ...]) -> int:
    """1-based line of the YAML node at a pydantic error location, or of its nearest parent."""
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        # No child: a missing field (report its parent) or a union's tag such as
        # ``curve`` in ``figures.0.curve.x``, which names no node of its own.
        node = child if child is not None else node
    return node.start_mark.line + 1


def load_dashboard(path: str | Path) -> Dashboard:
    path = Path(path)
    data, text = read_mapping(path, "dashboard", "a mapping with title and figures", DashboardError)
    tree = yaml.compose(text)
    try:
        return Dashboard.model_validate(data)
    except ValidationError as err:
        lines = [f"{path}: invalid dashboard"]
        for e in err.errors():
            field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in e["loc"]).replace(".[", "[")
            line = _line(tree, e["loc"])
            lines.append(f"  line {line}, field {field or '(top level)'}: {e['msg']}")
        raise DashboardError("\n".join(lines)) from err


def _find(name: str, origin: str) -> Path:
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, SHIPPED.parent / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DashboardError(f"{origin}: dashboard {name} not found (looked in {', '.join(map(str, candidates))})")


def choose_dashboard(spec: dict[str, Any], spec_path: Path, override: str | Path | None = None) -> Path:
    """The command line's choice, else the study's ``report`` field, else the shipped
    dashboard of the study's method family, of its search, or of its noise grid."""
    if override is not None:
        return _find(str(override), "--dashboard")
    if spec.get("report"):
        return _find(str(spec["report"]), f"{spec_path}: field report")
    family = SHIPPED / f"{spec.get('method')}.yaml"
    if family.is_file():
        return family
    return SHIPPED / ("search.yaml" if spec.get("search") else "robustness.yaml")
