"""Test-time ensembles over seeds: average the test logits of trials that differ only in seed.

UPL averages 16 prompts, Robust UPL 4 (methods.md section 6). A trial that
takes part saves its test logits and labels in its artifacts folder
(`save_test_logits`); after a study, `ensemble_rows` turns its results table
into one row per ensemble, which the study stores beside the trials' rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptlab.config import is_config_column
from ptlab.files import atomic_save
from ptlab.methods.base import STATUS_COMPLETED, STATUS_FAILED
from ptlab.methods.registry import METHODS
from ptlab.metrics import accuracy, mean_per_class_accuracy
from ptlab.study.schema import (
    CELL_ID,
    ENSEMBLE_MEMBERS,
    ENSEMBLE_SEEDS,
    ENSEMBLE_SIZE,
    ERROR,
    MEMBER_TEST_ACC,
    STATUS,
    TRIAL_ID,
)

LOGITS_FILE = "test_logits.npz"
# Methods whose trials save test logits, so that they can be ensembled.
ENSEMBLE_METHODS = tuple(name for name, method in METHODS.items() if method.seed_ensembles)
# Properties of the members' training sets, which an ensemble row carries as their mean.
CARRIED = ("pseudo_label_acc", "pseudo_label_classes", "zeroshot_acc", "noise_realised", "train_size")


def save_test_logits(folder: Path, logits: torch.Tensor | np.ndarray, labels: np.ndarray) -> Path:
    """Write `LOGITS_FILE` into `folder` atomically (float32 logits, int64 labels)."""
    logits = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    arrays = {"logits": logits.astype(np.float32), "labels": np.asarray(labels, dtype=np.int64)}
    return atomic_save(Path(folder) / LOGITS_FILE, lambda handle: np.savez(handle, **arrays))


def load_test_logits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(folder) / LOGITS_FILE) as data:
        return data["logits"], data["labels"]


def ensemble_metrics(member_logits: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Accuracies (percent) of the mean of the members' logits."""
    if not member_logits:
        raise ValueError("an ensemble needs at least one member")
    shapes = {m.shape for m in member_logits}
    if len(shapes) != 1:
        raise ValueError(f"members' logits differ in shape: {sorted(shapes)}")
    mean = np.mean(np.stack(member_logits).astype(np.float64), axis=0)
    n_classes = mean.shape[1]
    return {
        "test_acc": 100 * accuracy(mean, labels),
        "test_macro_acc": 100 * mean_per_class_accuracy(mean, labels, n_classes),
    }


def _rows(results: Any) -> list[dict[str, Any]]:
    return results.to_dicts() if hasattr(results, "to_dicts") else [dict(r) for r in results]


def ensemble_rows(
    results: Any,
    artifacts: Callable[[str], Path] | Path,
    sizes: Iterable[int] | None = None,
    methods: Sequence[str] = ENSEMBLE_METHODS,
) -> list[dict[str, Any]]:
    """One row per ensemble of the completed trials of each cell.

    results: the study's results table (a polars DataFrame or row dicts) with
        trial_id, cell_id (the trial id of the config with seed 0, shared by
        trials that differ only in seed), seed, method and status columns.
    artifacts: a trial id -> its artifacts folder, or a folder holding one
        sub-folder per trial id.
    sizes: ensemble sizes to report, each over the cell's lowest seeds (e.g.
        1, 2, 4, 8, 16 for accuracy against ensemble size); default: one
        ensemble of every seed.

    A cell none of whose trials completed gets one row per size with status
    failed and the reason in `error`: no ensemble could be formed.

    A row keeps the members' config columns but the seed (flattened as
    results tables hold them: "train.lr", "method_options"), names the
    method `<method>_ensemble`, and holds ensemble_size, ensemble_seeds and
    ensemble_members (lists of the members' seeds and trial_ids), test_acc
    and test_macro_acc of the averaged logits, member_test_acc (the members'
    mean) and the members' mean of each CARRIED metric under its own name
    (columns of ptlab.study.schema).
    """
    folder_of = artifacts if callable(artifacts) else (lambda trial_id: Path(artifacts) / trial_id)
    cells: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(results):
        if row.get("method") in methods:
            cells.setdefault(row[CELL_ID], []).append(row)
    out = []
    for cell_id, trials in cells.items():
        members = sorted((r for r in trials if r.get(STATUS) == STATUS_COMPLETED), key=lambda r: r["seed"])
        if not members:
            out += [_no_ensemble(cell_id, trials, n) for n in sorted(set(sizes or [len(trials)]))]
            continue
        loaded = [load_test_logits(folder_of(r[TRIAL_ID])) for r in members]
        labels = loaded[0][1]
        if any(not np.array_equal(lab, labels) for _, lab in loaded):
            raise ValueError(f"cell {cell_id}: members were tested on different labels; they are not one cell")
        wanted = sorted({min(n, len(members)) for n in sizes} if sizes else {len(members)})
        for n in wanted:
            out.append(_ensemble_row(cell_id, members[:n], [logits for logits, _ in loaded[:n]], labels))
    return out


def _is_config(column: str) -> bool:
    return column != "seed" and is_config_column(column)


def _no_ensemble(cell_id: str, trials: list[dict], size: int) -> dict[str, Any]:
    """The row saying that no member of a cell completed, so none of its ensembles could be formed."""
    first = trials[0]
    row = {k: v for k, v in first.items() if _is_config(k)}
    row.update({
        TRIAL_ID: "ens-" + hashlib.sha256(f"{cell_id}-none{size}".encode()).hexdigest()[:12],
        CELL_ID: f"{cell_id}-ens{size}",
        "method": f"{first['method']}_ensemble",
        STATUS: STATUS_FAILED,
        ENSEMBLE_SIZE: size,
        ENSEMBLE_SEEDS: [],
        ENSEMBLE_MEMBERS: [],
        ERROR: f"no ensemble could be formed: none of the cell's {len(trials)} trials completed "
               f"({', '.join(sorted({str(t.get(STATUS)) for t in trials}))})",
    })
    return row


def _ensemble_row(cell_id: str, members: list[dict], logits: list[np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    first = members[0]
    row = {k: v for k, v in first.items() if _is_config(k)}
    ids = [m[TRIAL_ID] for m in members]
    row.update({
        TRIAL_ID: "ens-" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:12],
        CELL_ID: f"{cell_id}-ens{len(members)}",
        "method": f"{first['method']}_ensemble",
        STATUS: STATUS_COMPLETED,
        ENSEMBLE_SIZE: len(members),
        ENSEMBLE_SEEDS: [m["seed"] for m in members],
        ENSEMBLE_MEMBERS: ids,
    })
    for key in ("test_acc", *CARRIED):
        values = [m[key] for m in members if isinstance(m.get(key), int | float)]
        if values:
            row[MEMBER_TEST_ACC if key == "test_acc" else key] = float(np.mean(values))
    row.update(ensemble_metrics(logits, labels))
    return row
