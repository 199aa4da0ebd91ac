"""Method recipes, by name. `run_trial` is the one entry point every runner uses."""

from __future__ import annotations

import importlib
import traceback

from ptlab.config import TrialConfig
from ptlab.methods.base import STATUS_FAILED, Timer, TrialContext, TrialRecord, provenance
from ptlab.resources import release_memory, resident_mb

# name -> module whose `run(cfg, ctx) -> TrialRecord` is the recipe; modules load
# on first use so that `ptlab --help` and study validation stay fast.
METHODS: dict[str, str] = {
    "zeroshot": "ptlab.methods.zeroshot",
    "coop": "ptlab.methods.coop",
    # Noisy-label analysis (PTNL); modules shared by several methods dispatch on cfg.method.
    "linear_probe": "ptlab.methods.linear_probe",
    "classifier_r": "ptlab.methods.classifier",
    "classifier_c": "ptlab.methods.classifier",
    "tenc_ft": "ptlab.methods.tenc_ft",
    "full_prompt": "ptlab.methods.variants",
    "cls_tuning": "ptlab.methods.variants",
    "ctx0": "ptlab.methods.variants",
    "upl": "ptlab.methods.upl",
    "robust_upl": "ptlab.methods.upl",
    # One protocol, three recipes (class shift; the module dispatches on cfg.method).
    "ueo": "ptlab.methods.ueo",
    "entropy_min": "ptlab.methods.ueo",
    "zeroshot_mcm": "ptlab.methods.ueo",
    # Long-tailed visual prompt tuning: LPT's two stages and its single-stage VPT baseline.
    "lpt": "ptlab.methods.lpt",
    "vpt": "ptlab.methods.lpt",
}
# Metrics each method reports per epoch or at the end, for validating study metrics.
METHOD_METRICS: dict[str, tuple[str, ...]] = {
    "zeroshot": ("test_acc", "test_macro_acc", "val_acc"),
    "coop": ("test_acc", "test_macro_acc", "val_acc", "train_loss", "train_acc_noisy", "train_acc_true", "grad_ratio"),
    "linear_probe": ("test_acc", "test_macro_acc", "val_acc", "train_acc_noisy", "train_acc_true", "lp_log10_c"),
    **dict.fromkeys(
        ("classifier_r", "classifier_c", "tenc_ft", "full_prompt", "cls_tuning"),
        ("test_acc", "test_macro_acc", "val_acc", "train_loss", "train_acc_noisy", "train_acc_true", "grad_ratio"),
    ),
    "ctx0": ("test_acc", "test_macro_acc", "val_acc"),
    **dict.fromkeys(
        ("upl", "robust_upl"),
        ("test_acc", "test_macro_acc", "val_acc", "train_loss", "train_acc_noisy", "train_acc_true", "grad_ratio",
         "pseudo_label_acc", "zeroshot_acc"),
    ),
    "ueo": ("test_acc", "test_macro_acc", "auroc", "train_loss", "weight_auroc"),
    "entropy_min": ("test_acc", "test_macro_acc", "auroc", "train_loss", "weight_auroc"),
    "zeroshot_mcm": ("test_acc", "test_macro_acc", "auroc"),
    "vpt": ("test_acc", "test_macro_acc", "many_acc", "medium_acc", "few_acc", "val_acc", "train_loss", "train_acc"),
    "lpt": ("test_acc", "test_macro_acc", "many_acc", "medium_acc", "few_acc", "val_acc", "train_loss", "train_acc",
            "key_loss", "stage1_test_acc", "stage1_many_acc", "stage1_medium_acc", "stage1_few_acc"),
}


class UnknownMethod(KeyError):
    pass


def recipe(name: str):
    if name not in METHODS:
        raise UnknownMethod(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name]).run


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
            cfg.canonical(),
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
