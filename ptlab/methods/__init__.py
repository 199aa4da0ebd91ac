"""Running a trial: `run_trial` is the one entry point every runner uses; methods are registered in ptlab.methods.registry."""

from __future__ import annotations

import traceback

from ptlab.config import TrialConfig
from ptlab.methods.base import STATUS_FAILED, Timer, TrialContext, TrialRecord, provenance
from ptlab.methods.registry import METHODS, UnknownMethod, method_of
from ptlab.resources import release_memory, resident_mb

__all__ = ["METHODS", "UnknownMethod", "recipe", "run_trial"]


def recipe(name: str):
    """The recipe `run(cfg, ctx)` of method `name` (ptlab.methods.registry), its module imported on first use."""
    return method_of(name).run


def run_trial(cfg: TrialConfig, ctx: TrialContext | None = None, catch: bool = False) -> TrialRecord:
    """Run one trial; with catch=True an exception becomes a failed record instead of propagating."""
    import torch

    ctx = ctx or TrialContext.for_config(cfg)
    timer = Timer()
    try:
        run = recipe(cfg.method)
        # Importing the method's module and open_clip, which the backbone loader imports only
        # when it builds a model (with torchvision and timm: seconds in a fresh process), is
        # start-up cost, which studies count as per-trial overhead, not as recipe time.
        import open_clip  # noqa: F401

        timer = Timer()
        record = run(cfg, ctx)
    except Exception as err:
        if not catch:
            raise
        record = TrialRecord(
            cfg.trial_id,
            cfg.model_dump(mode="json"),
            {},
            status=STATUS_FAILED,
            error=f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}",
        )
    record.timings.setdefault("recipe_s", round(timer.elapsed(), 3))
    release_memory()
    # what the recipe time was measured with, and what a reused worker holds after it
    record.timings.update(threads=torch.get_num_threads(), rss_mb=resident_mb())
    record.provenance = provenance()
    return record
