"""What a study folder was started with, so that resuming an edited study is refused, naming what changed.

Tune restores the trials it was first given, whatever study.yaml says now:
resuming after an edit would run the old settings under the new file's name,
or loop on cells Tune never heard of. `planned.json`, written when the study
starts and never rewritten, holds the fields that decide which trials run
(spec.HASHED_KEYS); `ptlab study resume` compares study.yaml with it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptlab.files import atomic_write
from ptlab.study.layout import PLANNED
from ptlab.study.spec import HASHED_KEYS, StudySpec


def _hashed(spec: StudySpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", include=set(HASHED_KEYS))


def write_planned(spec: StudySpec, study_dir: Path) -> None:
    atomic_write(Path(study_dir) / PLANNED, json.dumps({"spec_hash": spec.content_hash(), **_hashed(spec)}).encode())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}." if prefix or key != "base" else ""))
        return out
    return {prefix.rstrip("."): tree}


def changes(spec: StudySpec, study_dir: Path) -> list[str]:
    """'field: before -> now' for each field deciding the trials that differs from when the study started."""
    path = Path(study_dir) / PLANNED
    if not path.is_file():  # started by a ptlab that kept no plan: nothing to compare with
        return []
    started = json.loads(path.read_text())
    if started.get("spec_hash") == spec.content_hash():
        return []
    before, now = _flat({k: started.get(k) for k in HASHED_KEYS}), _flat(_hashed(spec))
    return [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(before.keys() | now.keys())
            if before.get(key) != now.get(key)]


def refuse_if_changed(spec: StudySpec, study_dir: Path) -> None:
    found = changes(spec, study_dir)
    if found:
        raise RuntimeError(
            f"{study_dir}/study.yaml changed since the study started, and its stored trials were planned without "
            f"the change ({'; '.join(found[:8])}{'; ...' if len(found) > 8 else ''}). Resuming would run the old "
            f"settings or never run the new cells: undo the edit to resume, or run the changed study in a new "
            f"folder (remove its spec_hash and planned_trials lines, then ptlab study run {study_dir}/study.yaml "
            "--out NEW_FOLDER)")
