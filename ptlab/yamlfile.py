"""Reading the YAML files users write (trial configs, dashboards), with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import yaml


def read_mapping(path: Path, kind: str, shape: str, error: type[Exception]) -> tuple[dict, str]:
    """Parsed mapping and raw text of a YAML file; every failure raises `error` naming file (and line).

    kind names the file for messages ("trial config"); shape says what its top level holds.
    An empty file is an empty mapping.
    """
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise error(f"{path}: no such {kind} file") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise error(f"{path}: a {kind} is {shape}")
    return data, text
