"""Ray Tune for a study: each trial's resources, search and scheduling, storage and resume.

A grid study is a Tune grid search over fully resolved trial configs with no
scheduler. A search study is Optuna (seeded TPE, journal storage in the study
folder) with ASHA on the trial's own `epoch`. Every trial's end is turned into
one results row as it happens (`Recorder`), and once more for every trial when
the run ends, so rows lost to a killed driver are recovered on resume; then
come the rows of the study's seed ensembles, computed afresh on every resume.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ptlab.methods.base import STATUS_FAILED, STATUS_PRUNED
from ptlab.study.cluster import RayConnection
from ptlab.study.ensembles import record_ensembles
from ptlab.study.planned import refuse_if_changed, write_planned
from ptlab.study.progress import Progress, write_driver
from ptlab.study.reference import record_references
from ptlab.study.spec import StudySpec
from ptlab.study.store import ResultStore, TrialOutcome
from ptlab.study.trial import FINAL, TrialPlan, atomic_write, run_trial_fn

TUNE_DIR = "tune"
OPTUNA_JOURNAL = "journal.log"
def trial_slots(spec: StudySpec, connection: RayConnection) -> int:
    """How many trials fit on the cluster at once."""
    r = spec.resources
    slots = math.floor(connection.cpus / (r.cpu * r.workers) + 1e-9)
    if r.gpu:
        slots = min(slots, math.floor(connection.gpus / (r.gpu * r.workers) + 1e-9))
    if slots < 1:
        need = f"{r.cpu * r.workers:g} CPUs" + (f" and {r.gpu * r.workers:g} GPUs" if r.gpu else "")
        have = f"{connection.cpus:g} CPUs and {connection.gpus:g} GPUs"
        raise RuntimeError(f"a trial needs {need} (resources x workers) but the Ray cluster has {have}; "
                           "lower `resources` in the study or join a larger cluster with --address")
    return min(slots, spec.max_concurrent or slots)


def trial_plan(spec: StudySpec, study_dir: Path) -> TrialPlan:
    r = spec.resources
    return TrialPlan(str(study_dir.resolve()), spec.base.canonical(), spec.runner, r.cpu, r.gpu, r.workers,
                     stream_epochs=spec.search is not None)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _provenance() -> dict[str, str]:
    from ptlab.methods.base import provenance

    return provenance()


# How Ray (its memory monitor), torch and Python report a trial killed or stopped for memory.
OUT_OF_MEMORY = ("OutOfMemoryError", "MemoryError", "out of memory", "running low on memory")


def failure_text(error: str) -> str:
    """A failed trial's stored error, led by its cause where it is known ("out of memory"); at most 4000 characters."""
    if any(marker in error for marker in OUT_OF_MEMORY):
        return "out of memory: " + error[-3985:]
    return error[-4000:]


def outcome(plan: TrialPlan, key: str, tune_config: dict, last_result: dict, error: str | None) -> TrialOutcome | None:
    """One trial's outcome from what Tune knows of it and what the trial wrote; None if it has not ended."""
    from ptlab.study.space import cell_id

    cfg = plan.config(tune_config)
    files = plan.files(key)
    curve = files.read_curve()
    record = files.read_record()
    common = dict(key=key, trial_id=cfg.trial_id, cell_id=cell_id(cfg), config=cfg.canonical(), curve=curve)
    if error is not None:
        timings = {"wall_s": last_result.get("time_total_s"), "attempts": files.attempts(), "finished_at": time.time()}
        return TrialOutcome(status=STATUS_FAILED, metrics=dict(curve[-1]) if curve else {}, timings=timings,
                            provenance=_provenance(), error=failure_text(error), **common)
    if last_result.get(FINAL) and record is not None:
        return TrialOutcome(status=record["status"], metrics=record["metrics"], timings=record["timings"],
                            provenance=record["provenance"], error=record.get("error", ""), **common)
    if curve or last_result:
        # Ended without its final result: the scheduler stopped it. Epochs it ran past
        # the result it was stopped at are not part of what the scheduler saw.
        seen = last_result.get("epoch", curve[-1]["epoch"] if curve else 0)
        curve = [point for point in curve if point["epoch"] <= seen]
        timings = {"wall_s": last_result.get("time_total_s"), "attempts": files.attempts(), "finished_at": time.time()}
        return TrialOutcome(status=STATUS_PRUNED, metrics=dict(curve[-1]) if curve else {}, timings=timings,
                            provenance=_provenance(), **{**common, "curve": curve})
    return None


def _error_text(trial, wait_s: float = 5.0) -> str:
    # On a loaded machine Tune reports the error before its error.txt lands in the
    # trial folder: wait briefly for the file rather than store a failure without its cause.
    deadline = time.monotonic() + wait_s
    error_file = Path(trial.local_path) / "error.txt"
    while True:
        error = trial.get_error() or (error_file.read_text() if error_file.is_file() else None)
        if error or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return str(error or f"trial {trial.trial_id} failed (no error text; see {trial.local_path})")


class Recorder(tune.Callback):
    """Writes a results row the moment Tune declares a trial over."""

    def __init__(self, plan: TrialPlan):
        self.plan = plan

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, _error_text(trial))

    def _record(self, trial, error):
        result = outcome(self.plan, trial.trial_id, trial.config, trial.last_result or {}, error)
        if result is not None:
            ResultStore(self.plan.study_dir).add(result)


def spec_summary(spec: StudySpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "planned": spec.n_planned(),
        "cells": spec.n_cells(),
        "seeds": len(spec.seeds),
        "metric": spec.search.metric if spec.search else "test_acc",
        "mode": spec.search.mode if spec.search else "max",
    }


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna what really happened to each trial.

    Ray's integration tells a trial ASHA stopped as COMPLETE with its partial
    value, which TPE then trusts as a finished result. Here a trial is
    COMPLETE only if its final result arrived; stopped before that it is
    PRUNED, with the values it reported per epoch as intermediate values.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported_steps: dict[str, set[int]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(FINAL) or self.metric not in result or trial_id not in self._ot_trials:
            return
        step = int(result["epoch"])
        steps = self._reported_steps.setdefault(trial_id, set())
        # a trial resumed from a checkpoint reports some epochs again
        if step not in steps:
            self._ot_trials[trial_id].report(float(result[self.metric]), step)
            steps.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = (result or {}).get(self.metric)
        if error:
            state, value = TrialState.FAIL, None
        elif (result or {}).get(FINAL):
            finite = isinstance(value, int | float) and math.isfinite(value)
            state, value = (TrialState.COMPLETE, float(value)) if finite else (TrialState.FAIL, None)
        else:
            state, value = TrialState.PRUNED, None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Also fail the Optuna trials a killed driver asked for but never saved: nothing will finish them.

        The pickled state names the journal by the path it had when saved; a copied or
        moved study must write to its own journal, the one beside this checkpoint.
        """
        from optuna.storages.journal import JournalFileBackend

        super().restore(checkpoint_path)
        journal = Path(checkpoint_path).resolve().parent.parent / OPTUNA_JOURNAL
        backend = getattr(self._ot_study._storage, "_backend", None)
        if isinstance(backend, JournalFileBackend) and Path(backend._file_path) != journal:
            backend.__init__(str(journal))  # the one backend every pickled reference shares: path and file lock
        known = {t.number for t in self._ot_trials.values()}
        for orphan in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if orphan.number not in known:
                self._ot_study.tell(orphan.number, state=TrialState.FAIL)


def _searcher(spec: StudySpec, study_dir: Path) -> PrunedAwareOptunaSearch:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ptlab.study.space import optuna_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = spec.search
    storage = JournalStorage(JournalFileBackend(str(study_dir.resolve() / OPTUNA_JOURNAL)))
    seed = search.sampler_seed if search.sampler_seed is not None else spec.seeds[0]
    return PrunedAwareOptunaSearch(
        optuna_space(search.space),
        metric=search.metric,
        mode=search.mode,
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=spec.name,
        storage=storage,
    )


def _scheduler(spec: StudySpec):
    from ray.tune.schedulers import ASHAScheduler

    asha = spec.search.asha
    # Rungs lie before the last epoch and trials reaching max_t are not stopped: a
    # trial that trained every epoch always sends its final result.
    return ASHAScheduler(
        time_attr="epoch",
        metric=spec.search.metric,
        mode=spec.search.mode,
        max_t=max(spec.base.train.epochs - 1, asha.grace_period),
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
        stop_last_trials=False,
    )


def _trainable(plan: TrialPlan):
    trainable = tune.with_parameters(run_trial_fn, plan=plan)
    if plan.runner == "inline":
        resources = {"cpu": plan.cpu, "gpu": plan.gpu}
    else:
        # The function only drives the Train job, whose workers reserve the CPUs and
        # GPUs; it reserves a little memory so Tune can place it (a bundle cannot be empty).
        resources = {"cpu": 0, "memory": 256 * 2**20}
    return tune.with_resources(trainable, resources)


def build_tuner(spec: StudySpec, study_dir: Path, connection: RayConnection):
    plan = trial_plan(spec, study_dir)
    slots = trial_slots(spec, connection)
    # A new trial reuses the process of one that ended: Ray start-up and imports are paid
    # once per slot, not once per trial. Not where ASHA stops trials: a stopped trial's
    # recipe (or Train job) runs on in its process until Tune gives up on reusing it.
    reuse_actors = not (spec.search and spec.search.asha)
    if spec.search:
        tune_config = tune.TuneConfig(
            search_alg=_searcher(spec, study_dir),
            scheduler=_scheduler(spec) if spec.search.asha else None,
            num_samples=spec.search.samples,
            max_concurrent_trials=slots,
            trial_name_creator=_trial_dirname,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=reuse_actors,
        )
        param_space: dict[str, Any] = {}
    else:
        tune_config = tune.TuneConfig(
            max_concurrent_trials=slots,
            trial_name_creator=_trial_dirname,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=reuse_actors,
        )
        param_space = {"trial": tune.grid_search([t.config.canonical() for t in spec.trials()])}
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(study_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        callbacks=_callbacks(spec, plan),
        verbose=0,
    )
    return tune.Tuner(_trainable(plan), param_space=param_space, tune_config=tune_config, run_config=run_config)


def _callbacks(spec: StudySpec, plan: TrialPlan) -> list[tune.Callback]:
    return [Recorder(plan), Progress(plan, spec_summary(spec))]


def restore_tuner(spec: StudySpec, study_dir: Path):
    plan = trial_plan(spec, study_dir)
    tuner = tune.Tuner.restore(
        str((study_dir / TUNE_DIR).resolve()),
        trainable=_trainable(plan),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
    # The run config comes back from Tune's pickle with callbacks that write to the folder
    # it was saved in, the original of a copy or the old place of a moved study: this one's instead.
    # (Through Ray Client the tuner lives on the cluster, out of reach: resume there in place.)
    if tuner._local_tuner is not None:
        tuner._local_tuner.get_run_config().callbacks = _callbacks(spec, plan)
    return tuner


def record_all(spec: StudySpec, study_dir: Path, results) -> int:
    """Rows for every ended trial of a finished run that has none yet (e.g. lost to a killed driver)."""
    plan = trial_plan(spec, study_dir)
    store = ResultStore(study_dir)
    done = store.keys()
    added = 0
    for result in results:
        key = Path(result.path).name
        if key in done:
            continue
        error = str(result.error) if result.error else None
        found = outcome(plan, key, result.config or {}, result.metrics or {}, error)
        if found is not None:
            store.add(found)
            added += 1
    return added


STUDY_FILE = "study.yaml"


def run_study(spec: StudySpec, study_dir: Path, connection: RayConnection, resume: bool = False) -> bool:
    """Run (or resume) every trial of the study; True once all planned trials have ended."""
    study_dir = study_dir.resolve()
    slots = trial_slots(spec, connection)  # a study that cannot fit fails before it leaves a folder
    if resume:
        refuse_if_changed(spec, study_dir)
    else:
        study_dir.mkdir(parents=True, exist_ok=True)
        write_planned(spec, study_dir)
        atomic_write(study_dir / STUDY_FILE, spec.to_yaml().encode())
    write_driver(study_dir, connection.dashboard_url, slots)
    # Tune's advice on interruption (Tuner.restore, trials without results yet) is
    # replaced by ptlab's own: `ptlab study resume DIR`.
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tuner = restore_tuner(spec, study_dir) if resume else build_tuner(spec, study_dir, connection)
    grid = tuner.fit()
    finished = grid.num_terminated + grid.num_errors == len(grid) >= spec.n_planned()
    if finished:
        record_all(spec, study_dir, grid)
        record_ensembles(spec, trial_plan(spec, study_dir))
        record_references(spec, trial_plan(spec, study_dir))
    return finished
