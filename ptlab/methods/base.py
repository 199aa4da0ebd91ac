"""What every method recipe takes and returns.

A recipe is `run(cfg, ctx) -> TrialRecord`. The context carries everything
that depends on where the trial runs (device, cache folder, how to report an
epoch, how to checkpoint); the same recipe runs from the CLI, from a test and
inside a Ray worker.

Nothing here imports torch at module level: the study driver and `ptlab
study status` read the statuses and provenance without paying for it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptlab.config import TrialConfig
from ptlab.files import SharedFiles
from ptlab.metrics import FEW_SHOT_AT_MOST, SHOT_GROUPS, shot_group_accuracy, shot_groups

if TYPE_CHECKING:
    import torch

STATUS_COMPLETED = "completed"
STATUS_NAN = "flagged_nan"
STATUS_COLLAPSED = "flagged_collapse"
STATUS_FAILED = "failed"
STATUS_PRUNED = "pruned"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PTLAB_CACHE", Path.home() / ".cache" / "ptlab"))


def pick_device(requested: str) -> torch.device:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available here; use device: auto or cpu")
    return device


@dataclass
class TrialContext:
    device: torch.device = field(default_factory=lambda: pick_device("cpu"))
    cache_dir: Path = field(default_factory=default_cache_dir)
    report: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None
    # Checkpointing: `save_checkpoint(epoch, state)` persists a resumable state;
    # `resume_state` is the last one saved, handed back after a retry.
    save_checkpoint: Callable[[int, dict[str, Any]], None] | None = None
    resume_state: dict[str, Any] | None = None
    log: Callable[[str], None] = lambda message: None
    # The trial's own folder for files beyond its record (e.g. test logits that a
    # study-level ensemble averages later). The runner names a folder per trial
    # that outlives the worker, inside the study folder; None keeps no files.
    artifacts_dir: Path | None = None
    # Features other nodes of a cluster computed (ptlab.data.features.FeatureCache.shared); None: this node's cache only.
    shared_cache: SharedFiles | None = None

    def feature_cache(self, backbone, **options):
        """The frozen-feature cache trials of this context share."""
        from ptlab.data.features import FeatureCache

        return FeatureCache(self.cache_dir, backbone, shared=self.shared_cache, **options)

    @classmethod
    def for_config(cls, cfg: TrialConfig, **kwargs) -> TrialContext:
        return cls(device=pick_device(cfg.device), **kwargs)

    def close_epoch(self, curves: list[dict[str, float]], metrics: dict[str, float], epoch: int,
                    state: Callable[[], dict[str, Any]], where: str = "") -> bool:
        """Append an epoch's metrics, report them, checkpoint; False when the loss diverged and training must stop.

        A diverged epoch stays in the curves (the record shows where it broke)
        but is neither reported to a scheduler nor checkpointed for a retry.
        """
        metrics["epoch"] = epoch
        curves.append(metrics)
        if not math.isfinite(metrics["train_loss"]):
            self.log(f"{where or f'epoch {epoch}'}: training loss is not finite; stopping this trial")
            return False
        self.report(epoch, metrics)
        if self.save_checkpoint is not None:
            self.save_checkpoint(epoch, state())
        return True


@dataclass
class TrialRecord:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    curves: list[dict[str, float]] = field(default_factory=list)
    status: str = STATUS_COMPLETED
    error: str = ""
    # Per-class and other structured outputs (kept beside the flat metrics).
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)


@functools.cache
def git_commit() -> str:
    """The commit checked out where ptlab's code lives ("" outside a git checkout), read once per process.

    Read from the repository's files rather than by running `git`: a
    subprocess per trial cost 0.6-1.1 s on loaded cores.
    """
    here = Path(__file__).resolve().parent
    dot_git = next((folder / ".git" for folder in (here, *here.parents) if (folder / ".git").exists()), None)
    if dot_git is None:
        return ""
    try:
        git_dir = dot_git
        if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git_dir = (dot_git.parent / dot_git.read_text().split(":", 1)[1].strip()).resolve()
        common = git_dir / "commondir"
        common = (git_dir / common.read_text().strip()).resolve() if common.is_file() else git_dir
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head  # detached HEAD
        ref = head.removeprefix("ref:").strip()
        for folder in (git_dir, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()
        packed = common / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else []:
            commit, _, name = line.partition(" ")
            if name.strip() == ref:
                return commit
    except (OSError, IndexError):
        pass
    return ""


def _version(module: str, distribution: str) -> str:
    """A package's version without importing it: the loaded module's if it is loaded, else its installed metadata."""
    if module in sys.modules:
        return getattr(sys.modules[module], "__version__", "")
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def provenance() -> dict[str, str]:
    """What produced a result; imports none of the packages it names (Ray's import alone took 0.7 s per trial)."""
    import ptlab

    return {
        "ptlab": getattr(ptlab, "__version__", ""),
        "torch": _version("torch", "torch"),
        "open_clip": _version("open_clip", "open_clip_torch"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "ray": _version("ray", "ray"),
    }


def shot_group_metrics(
    pred: np.ndarray, labels: np.ndarray, counts: np.ndarray, prefix: str = "", few_at_most: int = FEW_SHOT_AT_MOST
) -> dict[str, float]:
    """Many/medium/few-shot test accuracy in percent (groups by training images: ptlab.metrics.shot_groups)."""
    return {f"{prefix}{g}_acc": 100 * v for g, v in shot_group_accuracy(pred, labels, counts, few_at_most).items()}


def shot_group_sizes(counts: np.ndarray, few_at_most: int = FEW_SHOT_AT_MOST) -> dict[str, float]:
    """How many classes fall in each shot group, so a report can tell an empty group from a bad one."""
    groups = shot_groups(counts, few_at_most)
    return {f"{g}_classes": float((groups == g).sum()) for g in SHOT_GROUPS}


def sanity_status(metrics: dict[str, float], curves: list[dict[str, float]], n_classes: int) -> str:
    """Flag runs that no average should silently include: NaN losses and chance-level collapse."""
    losses = [c.get("loss") for c in curves if c.get("loss") is not None]
    if any(not math.isfinite(v) for v in losses):
        return STATUS_NAN
    acc = metrics.get("test_acc")
    if acc is not None and n_classes > 1 and acc <= 1.5 * 100.0 / n_classes:
        return STATUS_COLLAPSED
    return STATUS_COMPLETED


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
