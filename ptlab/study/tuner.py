"""Ray Tune for a study: each trial's resources, search and scheduling, storage and resume.

A grid study is a Tune grid search over fully resolved trial configs with no
scheduler. A search study is Optuna (seeded TPE, journal storage in the study
folder) with ASHA on the trial's own `epoch`. A tuned grid runs in two phases,
each one Tune experiment: "search", every cell's own seeded Optuna study and
ASHA rungs behind one searcher and one scheduler, so the cells' searches share
the cluster; then, once each cell's configuration is selected (on validation,
`selection.json`, written once), "rerun": a grid of the selected configurations
x seeds, run to the end. Every trial's end is turned into one results row as it
happens (`Recorder`), and once more for every trial when a phase ends, so rows
lost to a killed driver are recovered on resume; then come the rows of the
study's seed ensembles, computed afresh on every resume.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ptlab.files import atomic_write
from ptlab.methods.base import STATUS_FAILED, STATUS_PRUNED
from ptlab.study.cluster import RayConnection, check_nodes_reach
from ptlab.study.ensembles import record_ensembles
from ptlab.study.layout import OPTUNA_JOURNAL, RERUN_DIR, SELECTION_FILE, STUDY_FILE, TUNE_DIR
from ptlab.study.planned import refuse_if_changed, write_planned
from ptlab.study.progress import Progress, write_driver
from ptlab.study.reference import record_references
from ptlab.study.schema import CELL_ID, CONFIG_JSON, KEY, PHASE, STATUS
from ptlab.study.spec import StudySpec
from ptlab.study.store import ResultStore, TrialOutcome
from ptlab.study.trial import FINAL, TrialPlan, run_trial_fn

SEARCH_PHASE, RERUN_PHASE = "search", "rerun"


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


def trial_plan(spec: StudySpec, study_dir: Path, phase: str = "") -> TrialPlan:
    r = spec.resources
    searching = spec.kind.searches and phase != RERUN_PHASE
    return TrialPlan(str(study_dir.resolve()), spec.base.model_dump(mode="json"), spec.runner, r.cpu, r.gpu, r.workers,
                     stream_epochs=searching, send_epochs=asha_rungs(spec) if searching else (), phase=phase,
                     cell_fields=tuple(spec.factors), study=spec.name, sampled=searching,
                     prunes=searching and spec.search.asha is not None, storage=spec.storage or "")


def asha_rungs(spec: StudySpec) -> tuple[int, ...]:
    """The epochs at which ASHA compares a search's trials; empty without ASHA.

    Ray's ASHA (one bracket) has a rung at grace_period x reduction_factor^k
    for every k that keeps it within max_t (`_asha`), and acts on no other
    epoch, so those are the only epochs a trial needs to send.
    """
    asha = spec.search.asha if spec.kind.searches else None
    if not asha:
        return ()
    max_t = max(spec.base.train.epochs - 1, asha.grace_period)
    rungs, epoch = [], asha.grace_period
    while epoch <= max_t:
        rungs.append(epoch)
        epoch *= asha.reduction_factor
    return tuple(rungs)


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
    cfg = plan.config(tune_config)
    files = plan.files(key)
    files.pull()  # with a storage: what the trial wrote there, on whichever node it ran
    curve = files.read_curve()
    record = files.read_record()
    common = dict(key=key, trial_id=cfg.trial_id, cell_id=plan.cell_id(cfg), config=cfg.model_dump(mode="json"), curve=curve,
                  phase=plan.phase)
    if error is not None:
        timings = {"wall_s": last_result.get("time_total_s"), "attempts": files.attempts(), "finished_at": time.time()}
        return TrialOutcome(status=STATUS_FAILED, metrics=dict(curve[-1]) if curve else {}, timings=timings,
                            provenance=_provenance(), error=failure_text(error), **common)
    if last_result.get(FINAL) and record is not None:
        return TrialOutcome(status=record["status"], metrics=record["metrics"], timings=record["timings"],
                            provenance=record["provenance"], error=record.get("error", ""), **common)
    if (curve or last_result) and (last_result.get(FINAL) or not plan.prunes):
        # It ended, yet no record of it reaches the driver: never called pruned where nothing prunes.
        timings = {"wall_s": last_result.get("time_total_s"), "attempts": files.attempts(), "finished_at": time.time()}
        return TrialOutcome(status=STATUS_FAILED, metrics=dict(curve[-1]) if curve else {}, timings=timings,
                            provenance=_provenance(), error=f"the trial ended but the driver cannot read its record "
                            f"{files.record}: on a cluster of several nodes the study folder must be a storage every "
                            "node reaches (--storage s3://BUCKET/PREFIX or a path every node mounts)", **common)
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
            publish_study(self.plan, throttle_s=PUBLISH_EVERY_S)


# A study's own files go to its storage at most this often while trials end (each is rewritten whole), and
# always when a phase ends; Tune's state of the phase (a file per trial and more) less often.
PUBLISH_EVERY_S = 10.0
PUBLISH_EXPERIMENT_EVERY_S = 60.0
_published_at: dict[tuple[str, bool], float] = {}


def publish_study(plan: TrialPlan, throttle_s: float = 0.0) -> None:
    """Copy the study's own files (results, curves, journal, selection...) to its storage, if it has one,
    and now and then Tune's state, from which `ptlab study resume URI` continues on another machine."""
    if not plan.storage:
        return
    now = time.monotonic()
    if now - _published_at.get((plan.study_dir, False), -math.inf) < throttle_s:
        return
    from ptlab.study.storage import open_storage, publish_study_files

    experiments = throttle_s == 0 or now - _published_at.get((plan.study_dir, True), -math.inf) >= PUBLISH_EXPERIMENT_EVERY_S
    publish_study_files(Path(plan.study_dir), open_storage(plan.storage), experiments=experiments)
    _published_at[(plan.study_dir, False)] = now
    if experiments:
        _published_at[(plan.study_dir, True)] = now


def spec_summary(spec: StudySpec, phase: str = "") -> dict[str, Any]:
    kind = spec.kind
    return {
        "name": spec.name,
        "kind": kind.name,
        "phase": phase,
        "planned": spec.n_planned(),
        "cells": spec.n_cells(),
        "seeds": len(spec.seeds),
        # a tuned grid's best so far is a search trial's, judged as its searches judge
        "metric": spec.search.metric if kind.searches else "test_acc",
        "mode": spec.search.mode if kind.searches else "max",
        "selection": spec.selection if kind.reruns else None,
    }


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna what really happened to each trial.

    Ray's integration tells a trial ASHA stopped as COMPLETE with its partial
    value, which TPE then trusts as a finished result. Here a trial is
    COMPLETE only if its final result arrived; stopped before that it is
    PRUNED, with the values it reported per epoch as intermediate values,
    the one it was stopped at included (Tune hands that result to the
    searcher's on_trial_complete only, never to on_trial_result).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported_steps: dict[str, set[int]] = {}

    def _told(self, trial_id: str) -> bool:
        """Whether Optuna already holds the trial's end: told by a driver killed after its last searcher save."""
        number = self._ot_trials[trial_id].number
        return any(t.number == number and t.state.is_finished() for t in self._ot_study.get_trials(deepcopy=False))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(FINAL) or self.metric not in result or trial_id not in self._ot_trials or self._told(trial_id):
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
        if self._told(trial_id):
            self._completed_trials.add(trial_id)
            return
        value = (result or {}).get(self.metric)
        if error:
            state, value = TrialState.FAIL, None
        elif (result or {}).get(FINAL):
            finite = isinstance(value, int | float) and math.isfinite(value)
            state, value = (TrialState.COMPLETE, float(value)) if finite else (TrialState.FAIL, None)
        else:
            if result and "epoch" in result:
                self.on_trial_result(trial_id, result)
            state, value = TrialState.PRUNED, None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)

    # The journal of the study folder the searcher works for: the one it was built for, or the
    # folder being resumed, which restore_tuner sets before Tune restores the searcher's state.
    journal: Path | None = None

    def restore(self, checkpoint_path: str) -> None:
        """Also point the searcher at the resumed folder's journal and fail the trials a killed driver left running."""
        journal = self.journal
        super().restore(checkpoint_path)
        self.journal = journal
        if journal is not None:
            self.use_journal(journal)
        self.fail_orphans()

    def use_journal(self, journal: Path) -> None:
        """The pickled state names the journal by the path it had when saved; a copied or
        moved study must write to its own journal, the one in its own folder. (Not the one
        beside the checkpoint: Tune restores a searcher from a staging copy under /tmp/ray.)"""
        from optuna.storages.journal import JournalFileBackend

        backend = getattr(self._ot_study._storage, "_backend", None)
        if isinstance(backend, JournalFileBackend) and Path(backend._file_path).resolve() != journal.resolve():
            backend.__init__(str(journal))  # the one backend every pickled reference shares: path and file lock

    def fail_orphans(self) -> None:
        """Fail the Optuna trials a killed driver asked for but never saved: nothing will finish them."""
        known = {t.number for t in self._ot_trials.values()}
        for orphan in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if orphan.number not in known:
                self._ot_study.tell(orphan.number, state=TrialState.FAIL)


def _optuna_search(spec: StudySpec, study_dir: Path, study_name: str, seed: int) -> PrunedAwareOptunaSearch:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ptlab.study.space import optuna_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = spec.search
    journal = study_dir.resolve() / OPTUNA_JOURNAL
    storage = JournalStorage(JournalFileBackend(str(journal)))
    # TPE's default of 10 random start-up samples would leave a per-cell budget below
    # 10 random search; half the budget (at least 2) explores, the rest is TPE's.
    startup = min(10, max(2, search.samples // 2))
    searcher = PrunedAwareOptunaSearch(
        optuna_space(search.space),
        metric=search.metric,
        mode=search.mode,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        study_name=study_name,
        storage=storage,
    )
    searcher.journal = journal
    return searcher


def cell_seed(base_seed: int, label: str) -> int:
    """A cell's sampler seed: fixed by the study's seed and the cell, different between cells."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{base_seed}/{label}".encode()).digest()[:4], "little")


def search_study_name(spec: StudySpec, label: str) -> str:
    """The name of a tuned grid cell's Optuna study in journal.log (what optuna-dashboard lists)."""
    return f"{spec.name}/{label}"


class CellSearches(Searcher):
    """A tuned grid's searches: one seeded Optuna study per cell behind the one searcher Tune drives.

    Cells are asked in turn, the one with fewest samples first, so every
    cell's search advances while the others run; each trial's results go to
    the search of its cell. Search trials train with the study's first seed.
    """

    def __init__(self, spec: StudySpec, study_dir: Path):
        from ptlab.study.space import cell_label

        super().__init__(metric=spec.search.metric, mode=spec.search.mode)
        base_seed = spec.search.sampler_seed if spec.search.sampler_seed is not None else spec.seeds[0]
        self.cells = {cell_label(cell): cell for cell in spec.cells()}
        self.searches = {label: _optuna_search(spec, study_dir, search_study_name(spec, label), cell_seed(base_seed, label))
                         for label in self.cells}
        self.budget, self.seed = spec.search.samples, spec.seeds[0]
        self.journal = study_dir.resolve() / OPTUNA_JOURNAL
        self.asked = dict.fromkeys(self.cells, 0)
        self.cell_of: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # every search was set up with the study's metric and space

    def suggest(self, trial_id: str):
        if trial_id in self.cell_of:
            label = self.cell_of[trial_id]
        else:
            open_cells = [label for label in self.cells if self.asked[label] < self.budget]
            if not open_cells:
                return Searcher.FINISHED
            label = min(open_cells, key=lambda c: self.asked[c])
            self.asked[label] += 1
            self.cell_of[trial_id] = label
        return {**self.searches[label].suggest(trial_id), **self.cells[label], "seed": self.seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.cell_of:
            self.searches[self.cell_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.cell_of:
            self.searches[self.cell_of[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    journal: Path | None = None  # as PrunedAwareOptunaSearch.journal

    def restore(self, checkpoint_path: str) -> None:
        journal = self.journal
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.journal = journal
        for search in self.searches.values():
            if journal is not None:
                search.use_journal(journal)
            search.fail_orphans()


class PerCellScheduler(FIFOScheduler):
    """ASHA per cell of a tuned grid: a trial is compared only with the other samples of its own cell."""

    def __init__(self, spec: StudySpec):
        super().__init__()
        self.spec = spec
        self.cells: dict[str, Any] = {}

    def _asha(self, trial):
        from ptlab.study.space import cell_label

        label = cell_label({path: trial.config.get(path) for path in self.spec.factors})
        if label not in self.cells:
            self.cells[label] = _asha(self.spec)
        return self.cells[label]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA in each of {len(self.cells)} cells"


def _searcher(spec: StudySpec, study_dir: Path):
    if spec.kind.reruns:
        return CellSearches(spec, study_dir)
    seed = spec.search.sampler_seed if spec.search.sampler_seed is not None else spec.seeds[0]
    return _optuna_search(spec, study_dir, spec.name, seed)


def _asha(spec: StudySpec):
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


def _scheduler(spec: StudySpec):
    return PerCellScheduler(spec) if spec.kind.reruns else _asha(spec)


def _trainable(plan: TrialPlan):
    trainable = tune.with_parameters(run_trial_fn, plan=plan)
    if plan.runner == "inline":
        resources = {"cpu": plan.cpu, "gpu": plan.gpu}
    else:
        # The function only drives the Train job, whose workers reserve the CPUs and
        # GPUs; it reserves a little memory so Tune can place it (a bundle cannot be empty).
        resources = {"cpu": 0, "memory": 256 * 2**20}
    return tune.with_resources(trainable, resources)


def phase_dir(phase: str) -> str:
    return RERUN_DIR if phase == RERUN_PHASE else TUNE_DIR


def phase_planned(spec: StudySpec, phase: str) -> int:
    if phase == SEARCH_PHASE:
        return len(spec.cells()) * spec.search.samples
    if phase == RERUN_PHASE:
        return len(spec.cells()) * len(spec.seeds)
    return spec.n_planned()


def build_tuner(spec: StudySpec, study_dir: Path, connection: RayConnection, phase: str = ""):
    plan = trial_plan(spec, study_dir, phase)
    slots = trial_slots(spec, connection)
    searching = spec.kind.searches and phase != RERUN_PHASE
    # A new trial reuses the process of one that ended: Ray start-up and imports are paid
    # once per slot, not once per trial. Not where ASHA stops trials: a stopped trial's
    # recipe (or Train job) runs on in its process until Tune gives up on reusing it.
    reuse_actors = not (searching and spec.search.asha)
    common = dict(max_concurrent_trials=slots, trial_name_creator=_trial_dirname,
                  trial_dirname_creator=_trial_dirname, reuse_actors=reuse_actors)
    if searching:
        tune_config = tune.TuneConfig(
            search_alg=_searcher(spec, study_dir),
            scheduler=_scheduler(spec) if spec.search.asha else None,
            num_samples=phase_planned(spec, phase),
            **common,
        )
        param_space: dict[str, Any] = {}
    else:
        configs = rerun_configs(spec, read_selection(study_dir)) if phase == RERUN_PHASE else \
            [t.config for t in spec.trials()]
        tune_config = tune.TuneConfig(**common)
        param_space = {"trial": tune.grid_search([c.model_dump(mode="json") for c in configs])}
    run_config = tune.RunConfig(
        name=phase_dir(phase),
        storage_path=str(study_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        callbacks=_callbacks(spec, plan, phase),
        verbose=0,
    )
    return tune.Tuner(_trainable(plan), param_space=param_space, tune_config=tune_config, run_config=run_config)


def _callbacks(spec: StudySpec, plan: TrialPlan, phase: str) -> list[tune.Callback]:
    return [Recorder(plan), Progress(plan, spec_summary(spec, phase))]


def restore_tuner(spec: StudySpec, study_dir: Path, phase: str = ""):
    plan = trial_plan(spec, study_dir, phase)
    tuner = tune.Tuner.restore(
        str((study_dir / phase_dir(phase)).resolve()),
        trainable=_trainable(plan),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
    # The run config comes back from Tune's pickle with callbacks that write to the folder
    # it was saved in, the original of a copy or the old place of a moved study: this one's instead.
    # (Through Ray Client the tuner lives on the cluster, out of reach: resume there in place.)
    if tuner._local_tuner is not None:
        tuner._local_tuner.get_run_config().callbacks = _callbacks(spec, plan, phase)
        searcher = tuner._local_tuner._tune_config.search_alg
        if searcher is not None:
            searcher.journal = study_dir.resolve() / OPTUNA_JOURNAL
    return tuner


def record_all(spec: StudySpec, study_dir: Path, results, phase: str = "") -> int:
    """Rows for every ended trial of a finished run that has none yet (e.g. lost to a killed driver)."""
    plan = trial_plan(spec, study_dir, phase)
    store = ResultStore(study_dir)
    done = store.keys()
    added = 0
    for result in results:
        # Tune's trial id, not its folder's name: a trial restored from older Tune state than its folder
        # (a study continued from its storage) gets a folder with a suffix
        key = (result.metrics or {}).get("trial_id") or Path(result.path).name
        if key in done:
            continue
        error = str(result.error) if result.error else None
        found = outcome(plan, key, result.config or {}, result.metrics or {}, error)
        if found is not None:
            store.add(found)
            added += 1
    return added


# --- a tuned grid's selection -------------------------------------------------------


def select_configs(spec: StudySpec, study_dir: Path) -> dict[str, Any]:
    """Each cell's configuration from its search trials, by the study's selection rule.

    Candidates are the cell's search trials that ran to the end (not pruned,
    not failed) with a finite `spec.selection_metric`; only that column is
    read, so with `selection: val` no test metric can sway the choice. Ties
    go to the trial Tune started first. A cell that computes what another
    does (StudySpec.cell_groups) was not searched: it has that cell's
    selection, under its own label, naming the cell in `same_as`.
    """
    import polars as pl

    from ptlab.config import TrialConfig
    from ptlab.study.space import cell_label, field_value

    metric = spec.selection_metric
    rows = ResultStore(study_dir).results()
    rows = rows.filter(pl.col(PHASE) == SEARCH_PHASE) if PHASE in rows.columns else rows.clear()
    base = trial_plan(spec, study_dir, SEARCH_PHASE)
    cells: dict[str, Any] = {}
    problems = []
    for cell, *repeats in spec.cell_groups():
        label = cell_label(cell)
        trials = rows.filter(pl.col(CELL_ID) == base.cell_id(spec.base.with_updates(cell))).sort(KEY)
        ended = trials.filter(~pl.col(STATUS).is_in([STATUS_PRUNED, STATUS_FAILED]))
        if metric in ended.columns:
            ended = ended.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite())
        else:
            ended = ended.clear()
        if not ended.height:
            problems.append(f"{label} ({trials.height} search trials, none ended with a {metric})")
            continue
        row = ended.sort([metric, KEY], descending=[spec.search.mode == "max", False]).row(0, named=True)
        config = TrialConfig.model_validate(json.loads(row[CONFIG_JSON]))
        statuses = trials[STATUS].to_list()
        cells[label] = {
            "cell": cell,
            "params": {path: field_value(config, path) for path in spec.search.space},
            "trial": row[KEY],
            "value": float(row[metric]),
            "samples": trials.height,
            "pruned": statuses.count(STATUS_PRUNED),
            "failed": statuses.count(STATUS_FAILED),
        }
        for repeat in repeats:
            cells[cell_label(repeat)] = {**cells[label], "cell": repeat, "same_as": label}
    if problems:
        raise RuntimeError(f"study {spec.name}: no configuration to select in {len(problems)} cells: "
                           f"{'; '.join(problems)}. Its search trials are stored in {study_dir}; see their errors "
                           "in results.parquet, fix the study and run it in a new folder")
    return {"selection": spec.selection, "metric": metric, "mode": spec.search.mode, "cells": cells}


def read_selection(study_dir: Path) -> dict[str, Any]:
    return json.loads((study_dir / SELECTION_FILE).read_text())


def rerun_configs(spec: StudySpec, selection: dict[str, Any]):
    """Every cell's selected configuration x every seed, cells in factor order, seeds innermost."""
    from ptlab.study.space import cell_label

    return [spec.base.with_updates({**cell, **selection["cells"][cell_label(cell)]["params"], "seed": seed})
            for cell in spec.cells() for seed in spec.seeds]


# --- running ---------------------------------------------------------------------------


def _run_phase(spec: StudySpec, study_dir: Path, connection: RayConnection, phase: str) -> bool:
    """One Tune experiment of the study, restored if an earlier driver started it; True once every trial ended."""
    started = (study_dir / phase_dir(phase) / "tuner.pkl").is_file()
    tuner = restore_tuner(spec, study_dir, phase) if started else build_tuner(spec, study_dir, connection, phase)
    grid = tuner.fit()
    finished = grid.num_terminated + grid.num_errors == len(grid) >= phase_planned(spec, phase)
    if finished:
        record_all(spec, study_dir, grid, phase)
    publish_study(trial_plan(spec, study_dir, phase))
    return finished


def run_study(spec: StudySpec, study_dir: Path, connection: RayConnection, resume: bool = False) -> bool:
    """Run (or resume) every trial of the study; True once all planned trials have ended.

    Each phase resumes where its Tune experiment was left, and a tuned grid's
    selection is made once: a resumed study with a selection.json re-runs
    what it names.
    """
    study_dir = study_dir.resolve()
    slots = trial_slots(spec, connection)  # a study that cannot fit fails before it leaves a folder
    if resume:
        refuse_if_changed(spec, study_dir)
    check_nodes_reach(study_dir, spec.storage, connection)  # before any trial can write where the driver cannot read
    if not resume:
        study_dir.mkdir(parents=True, exist_ok=True)
        write_planned(spec, study_dir)
        atomic_write(study_dir / STUDY_FILE, spec.to_yaml().encode())
    write_driver(study_dir, connection.dashboard_url, slots)
    # Tune's advice on interruption (Tuner.restore, trials without results yet) is
    # replaced by ptlab's own: `ptlab study resume DIR`.
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not spec.kind.reruns:
        finished = _run_phase(spec, study_dir, connection, "")
        if finished:
            record_ensembles(spec, trial_plan(spec, study_dir))
            record_references(spec, trial_plan(spec, study_dir))
            publish_study(trial_plan(spec, study_dir))
        return finished
    if not (study_dir / SELECTION_FILE).is_file():
        if not _run_phase(spec, study_dir, connection, SEARCH_PHASE):
            return False
        atomic_write(study_dir / SELECTION_FILE, json.dumps(select_configs(spec, study_dir), indent=1).encode())
    finished = _run_phase(spec, study_dir, connection, RERUN_PHASE)
    if finished:
        record_references(spec, trial_plan(spec, study_dir, RERUN_PHASE))
        publish_study(trial_plan(spec, study_dir, RERUN_PHASE))
    return finished
