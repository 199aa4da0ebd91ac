"""The study's zero-shot reference: CLIP with its hand prompt on the same backbone, data and template.

Every prompt-tuning paper draws this line; without it a reader cannot see
whether a learned prompt beats the hand-written one. Once the study's trials
have ended, each distinct (backbone, dataset, data, template) of its trials
gets one zero-shot trial, run on the cluster like any trial and stored like
one, in a store of its own beside the study's (`reference/results.parquet`,
its files in `reference/trials/<key>/`), so that it never counts as one of the
study's trials. It shares the study's feature cache. A resumed study finds
the row and does not run it again.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from ptlab.config import TrialConfig
from ptlab.study.layout import REFERENCE_DIR, TRIALS_DIR
from ptlab.study.schema import KEY
from ptlab.study.spec import StudySpec
from ptlab.study.store import ResultStore, TrialOutcome
from ptlab.study.trial import TrialFiles, TrialPlan, execute

ZERO_SHOT = "zeroshot"
# What a zero-shot prediction depends on; everything else of a trial config (shots included: the
# evaluation splits do not depend on them) is training.
_SHARED = ("backbone", "dataset", "data", "template", "templates", "precision", "device")
# The untrained baselines a study may already run itself, which need no reference.
_UNTRAINED = (ZERO_SHOT, "zeroshot_mcm")


def reference_configs(spec: StudySpec) -> list[TrialConfig]:
    """One zero-shot config per distinct backbone/data/template of the study's trials; none where it does not apply.

    It does not apply to backbones without CLIP's text side (timm ViTs, SigLIP, ...), to class-shift scenarios
    (the test set holds classes with no prompt) or to a study that runs the
    zero-shot baseline as one of its own methods.
    """
    bases = [spec.base] if spec.search else [t.config for t in spec.trials()]
    methods = set(spec.factors.get("method", [spec.method]))
    if methods & set(_UNTRAINED):
        return []
    configs: dict[str, TrialConfig] = {}
    for base in bases:
        if _image_only(base.backbone) or base.data.scenario != "none":
            continue
        shared = {name: getattr(base, name) for name in _SHARED}
        cfg = TrialConfig(method=ZERO_SHOT, seed=spec.seeds[0], **shared)
        configs.setdefault(cfg.trial_id, cfg)
    return list(configs.values())


def _image_only(backbone: str) -> bool:
    from ptlab.models.backbone import describe_backbone

    info = describe_backbone(backbone)
    return info is not None and info.kind == "image"


def reference_key(cfg: TrialConfig) -> str:
    """The reference's folder and its key in the reference store, apart from Tune's trial ids."""
    return f"reference-{cfg.trial_id}"


def reference_store(study_dir: str | Path) -> ResultStore:
    return ResultStore(Path(study_dir) / REFERENCE_DIR, study_dir)  # labelled with the study it is the reference of


def _execute_on_node(cfg: TrialConfig, files: TrialFiles, plan: TrialPlan) -> None:
    execute(cfg, files.on_node(), plan, None, writer=True)


def record_references(spec: StudySpec, plan: TrialPlan) -> int:
    """Run (on Ray) and store the zero-shot reference rows the study still lacks; returns how many it added."""
    import ray

    # here, not at the top: reports read REFERENCE_DIR and must not pay for torch
    from ptlab.methods.base import STATUS_FAILED, provenance

    store = reference_store(plan.study_dir)
    store.folder.mkdir(parents=True, exist_ok=True)
    stored = store.results()
    have = set(stored[KEY].to_list()) if stored.height else set()
    run_remote = ray.remote(num_cpus=plan.cpu, num_gpus=plan.gpu)(_execute_on_node)
    added = 0
    for cfg in reference_configs(spec):
        key = reference_key(cfg)
        if key in have:
            continue
        # beside the outcome.json the store keeps, and with a storage in the same place there
        files = TrialFiles(store.folder / TRIALS_DIR / key, plan.storage, f"{REFERENCE_DIR}/{TRIALS_DIR}/{key}")
        files.pull()
        started, error = time.perf_counter(), ""
        if files.read_record() is None:
            try:
                ray.get(run_remote.remote(cfg, files, plan))
            except Exception:  # a failed reference is stored as failed; the study's own results stand
                error = traceback.format_exc()[-4000:]
            files.pull()
        record = files.read_record()
        timings = {"wall_s": round(time.perf_counter() - started, 3), "finished_at": time.time(), "attempts": 1}
        common = dict(key=key, trial_id=cfg.trial_id, cell_id=cfg.trial_id, config=cfg.model_dump(mode="json"), curve=[])
        if record is None:
            outcome = TrialOutcome(status=STATUS_FAILED, metrics={}, timings=timings, provenance=provenance(),
                                   error=error or "the zero-shot reference wrote no record", **common)
        else:
            outcome = TrialOutcome(status=record["status"], metrics=record["metrics"],
                                   timings={**record["timings"], **timings}, provenance=record["provenance"],
                                   error=record.get("error", ""), **common)
        store.add(outcome)
        added += 1
    return added
