"""The trainable: one Tune trial runs one recipe call, inline or as a Ray Train job.

Both runners share `execute`, which builds the recipe's TrialContext. Every
trial owns a folder `trials/<key>/` (key = Tune's trial id) in the study:

  curve.jsonl     one line per reported epoch, written before Ray sees it
  checkpoint.pt   the recipe's last resumable state (atomic replace)
  record.json     the finished TrialRecord, written once the recipe returns
  log.txt         the recipe's log lines
  artifacts/      files the recipe keeps beyond its record (test logits for seed ensembles)

The files, not Ray's memory, are what results are built from, so a driver
killed at any moment loses nothing a trial finished: a restarted trial finds
its record and only reports it again, or finds its checkpoint and resumes.

With a study storage (ptlab.study.storage) the trial works in a copy of its
folder on its own node's disk, pulled from the storage when it starts, and
copies each file there as it changes: the curve at every epoch, the
checkpoint when saved, artifacts and then the record at the end. A retry on
another node thus resumes from the last checkpoint, and the driver reads the
folder from the storage once the trial ends.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptlab.config import TrialConfig
from ptlab.files import atomic_save, atomic_write
from ptlab.study.layout import TRIALS_DIR

FINAL = "final"  # set on the one result a trial sends after its recipe returned


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


@dataclass(frozen=True)
class TrialFiles:
    folder: Path
    # The study storage's URI and the folder's path in it; empty: the folder is all there is.
    storage: str = ""
    remote: str = ""

    @property
    def _storage(self):
        from ptlab.study.storage import open_storage

        return open_storage(self.storage) if self.storage else None

    def on_node(self) -> TrialFiles:
        """This node's working copy of the folder, filled from the storage; the folder itself without one."""
        storage = self._storage
        if storage is None:
            return self
        files = TrialFiles(storage.node_folder(self.remote), self.storage, self.remote)
        files.folder.mkdir(parents=True, exist_ok=True)
        files.pull()
        return files

    def pull(self) -> None:
        """Replace the local files with the storage's copies (nothing without a storage)."""
        storage = self._storage
        if storage is not None:
            storage.get_tree(self.remote, self.folder)

    def push(self, *paths: Path) -> None:
        """Copy files (a folder: every file below it) of this folder to the storage."""
        storage = self._storage
        if storage is None:
            return
        for path in paths:
            relative = f"{self.remote}/{path.relative_to(self.folder).as_posix()}"
            if path.is_dir():
                storage.put_tree(path, relative)
            elif path.is_file():
                storage.put_file(path, relative)

    def read_remote_curve(self, offset: int) -> bytes:
        """curve.jsonl from byte `offset` on as the storage holds it (the local file without a storage)."""
        storage = self._storage
        if storage is None:
            if not self.curve.is_file():
                return b""
            with open(self.curve, "rb") as f:
                f.seek(offset)
                return f.read()
        return (storage.read_bytes(f"{self.remote}/{self.curve.name}") or b"")[offset:]

    @property
    def curve(self) -> Path:
        return self.folder / "curve.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def record(self) -> Path:
        return self.folder / "record.json"

    @property
    def log(self) -> Path:
        return self.folder / "log.txt"

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    @property
    def attempts_file(self) -> Path:
        return self.folder / "attempts"

    def attempts(self) -> int:
        """How many times the trial has been started, retries and resumes included."""
        return int(self.attempts_file.read_text() or 0) if self.attempts_file.is_file() else 0

    def count_attempt(self) -> int:
        attempts = self.attempts() + 1
        self.attempts_file.write_text(str(attempts))
        self.push(self.attempts_file)
        return attempts

    def append_curve(self, row: dict[str, Any]) -> None:
        with open(self.curve, "a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.push(self.curve)

    def read_curve(self) -> list[dict[str, Any]]:
        """Reported epochs, the latest report of an epoch winning (a resumed trial repeats some)."""
        if not self.curve.is_file():
            return []
        by_epoch: dict[int, dict[str, Any]] = {}
        for line in self.curve.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            by_epoch[int(row["epoch"])] = row
        return [by_epoch[e] for e in sorted(by_epoch)]

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        atomic_save(self.checkpoint, lambda handle: torch.save(state, handle))
        self.push(self.checkpoint, self.log)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved state; tensors and plain containers only, so a planted file cannot run code."""
        if not self.checkpoint.is_file():
            return None
        import pickle

        import torch

        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise RuntimeError(f"{self.checkpoint}: refused to load, not a checkpoint of tensors and plain values "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); delete the file "
                               "to start this trial over") from err

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write(self.record, json.dumps(record, default=_jsonable).encode())
        self.push(self.record)

    def read_record(self) -> dict[str, Any] | None:
        if not self.record.is_file():
            return None
        return json.loads(self.record.read_text())


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a study shares; the trial's own config comes from Tune."""

    study_dir: str
    base: dict[str, Any]  # TrialConfig of search studies, before sampled params
    runner: str
    cpu: float
    gpu: float
    workers: int
    # Send epochs' metrics to Tune, for a searcher or scheduler to act on; grids, where
    # nothing listens, send none. Every epoch is in curve.jsonl either way.
    stream_epochs: bool
    # The epochs sent when streaming, e.g. ASHA's rungs, the only epochs it decides at;
    # empty: every epoch. Each result sent is a round trip through the Tune driver.
    send_epochs: tuple[int, ...] = ()
    # A tuned grid's "search" or "rerun" (StudyKind); empty for grids and searches.
    phase: str = ""
    # The study's factor paths: they name a trial's cell, and a tuned grid's search
    # trials and re-runs of one cell share one cell id.
    cell_fields: tuple[str, ...] = ()
    study: str = ""
    # Sampled trials (searches) are named by their Tune key, the others by their seed.
    sampled: bool = False
    # A scheduler (ASHA) may stop trials: only then is a trial without its final result pruned.
    prunes: bool = False
    # The study storage every node reaches (ptlab.study.storage); empty: the study folder is shared or one node's.
    storage: str = ""

    @property
    def cache_dir(self) -> Path:
        """The feature cache's root (its files are under features/): the study folder, or with a
        storage this node's own cache, content-keyed and shared by every study on the node."""
        if self.storage:
            from ptlab.study.storage import node_dir

            return node_dir() / "cache"
        return Path(self.study_dir)

    def shared_cache(self):
        """Where nodes share the features they computed (the storage's features/); None without a storage."""
        if not self.storage:
            return None
        from ptlab.study.storage import FEATURES, StorageMirror

        return StorageMirror(self.storage, FEATURES)

    def files(self, key: str) -> TrialFiles:
        """The trial's folder in the study folder (the driver's view; trials work in `files(key).on_node()`)."""
        return TrialFiles(Path(self.study_dir) / TRIALS_DIR / key, self.storage, f"{TRIALS_DIR}/{key}")

    def sends(self, epoch: int) -> bool:
        """Whether the metrics of `epoch` go to Tune."""
        return self.stream_epochs and (not self.send_epochs or epoch in self.send_epochs)

    def cell_id(self, cfg: TrialConfig) -> str:
        from ptlab.study.space import cell_id, cell_of

        if not self.phase:
            return cell_id(cfg)
        return cell_id(TrialConfig.model_validate(self.base).with_updates(cell_of(cfg, self.cell_fields)))

    def run_name(self, cfg: TrialConfig, key: str) -> str:
        """The trial's Ray Train run, as the dashboard lists it: study/cell/seed or study/cell/sample."""
        from ptlab.study.space import cell_label, cell_of

        last = f"sample={key}" if self.sampled else f"seed={cfg.seed}"
        return "/".join([self.study, cell_label(cell_of(cfg, self.cell_fields)), last])

    def config(self, tune_config: dict[str, Any]) -> TrialConfig:
        if "trial" in tune_config:  # grid: the whole config is the grid value
            return TrialConfig.model_validate(tune_config["trial"])
        return TrialConfig.model_validate(self.base).with_updates(tune_config)


def final_result(record: dict[str, Any]) -> dict[str, Any]:
    """The last result a trial sends: its final metrics, marked so searchers know it was not stopped."""
    numbers = {k: v for k, v in record["metrics"].items() if isinstance(v, int | float)}
    epochs = int(numbers.get("epochs_done", len(record.get("curves", []))))
    return {**numbers, "epoch": epochs, FINAL: 1, "status": record["status"]}


def execute(cfg: TrialConfig, files: TrialFiles, plan: TrialPlan, send: Callable[[dict], None] | None,
            writer: bool) -> None:
    """Run the recipe once; `send`, if given, forwards the epochs the plan sends to Tune.

    Only the writer (rank 0) touches the trial's files. The final result is
    sent by `run_trial_fn` from the record, for both runners.
    """
    from ptlab.methods import run_trial
    from ptlab.methods.base import TrialContext, pick_device
    from ptlab.resources import size_torch_threads

    size_torch_threads(plan.cpu)
    files.folder.mkdir(parents=True, exist_ok=True)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        row = {**metrics, "epoch": epoch}
        if writer:
            files.append_curve(row)
        if send is not None and plan.sends(epoch):
            send(row)

    def log(message: str) -> None:
        if writer:
            with open(files.log, "a") as f:
                f.write(message.rstrip() + "\n")

    ctx = TrialContext(
        device=pick_device(cfg.device),
        cache_dir=plan.cache_dir,
        shared_cache=plan.shared_cache(),
        report=report,
        save_checkpoint=(lambda epoch, state: files.save_checkpoint(state)) if writer else None,
        resume_state=files.load_checkpoint(),
        log=log,
        artifacts_dir=files.artifacts if writer else None,
    )
    record = asdict(run_trial(cfg, ctx))
    if writer:
        files.push(files.artifacts, files.log)  # before the record, which says the trial is done
        files.write_record(record)


def _train_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    plan = TrialPlan(**loop_config["plan"])
    cfg = TrialConfig.model_validate(loop_config["trial"])
    rank = ray.train.get_context().get_world_rank()
    # No ray.train.report: each one waits for the controller's next poll of the workers,
    # and relaying it to Tune takes a queue actor (a process) per trial. Tune gets the
    # epochs from curve.jsonl instead (`_relay_curve`).
    # the worker may run on another node than the trial's function: its own copy of the folder
    execute(cfg, plan.files(loop_config["key"]).on_node(), plan, None, writer=rank == 0)


def _train_job(plan: TrialPlan, **options):
    """Ray Train's trainer for a trial's job, without the parts a ptlab trial never uses.

    One worker needs no torch process group, and the plain trainer keeps torch
    out of the controller, which imports whatever backend config it is handed.
    Ray Train also starts a DatasetManager actor for every run, with datasets
    or without; ptlab passes none, and that actor's import of ray.data
    (seconds of CPU) competes with the worker's start-up.
    """
    if plan.workers > 1:
        from ray.train.torch import TorchConfig
        from ray.train.torch import TorchTrainer as base

        options["torch_config"] = TorchConfig(backend="nccl" if plan.gpu > 0 else "gloo")
    else:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as base

    class Trainer(base):
        def _create_default_callbacks(self):
            # matched by name: a Ray version without this callback keeps every callback
            return [cb for cb in super()._create_default_callbacks() if type(cb).__name__ != "DatasetsCallback"]

    return Trainer(**options)


def _run_train_job(cfg: TrialConfig, files: TrialFiles, key: str, plan: TrialPlan) -> None:
    import ray.train

    trainer = _train_job(
        plan,
        train_loop_per_worker=_train_worker,
        train_loop_config={"plan": asdict(plan), "trial": cfg.model_dump(mode="json"), "key": key},
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.gpu > 0,
            resources_per_worker={"CPU": plan.cpu, "GPU": plan.gpu} if plan.gpu > 0 else {"CPU": plan.cpu},
        ),
        run_config=ray.train.RunConfig(
            # the run's folder, trials/<key>/<study>/<cell>/<seed or sample>, is named like it
            name=plan.run_name(cfg, key),
            storage_path=str(files.folder),
            # Tune retries the whole trial (FailureConfig of the study); Train must not retry inside it.
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    if not plan.stream_epochs:
        trainer.fit()
        return
    failed: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # raised again in the trial's own thread
            failed.append(err)

    # daemon: a trial Tune stops ends with its process, the Train job (owned by it) with it
    job = threading.Thread(target=fit, name="train-job", daemon=True)
    offset = _size(files.curve)
    job.start()
    _relay_curve(files, plan, offset, job)
    if failed:
        raise failed[0]


RELAY_POLL_S = 0.05
# With a storage the rank 0 may be on another node: its curve is read from there, less often.
REMOTE_RELAY_POLL_S = 0.5


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _relay_curve(files: TrialFiles, plan: TrialPlan, offset: int, job: threading.Thread) -> None:
    """Send Tune the epochs the Train job's rank 0 appends to curve.jsonl, until the job ends.

    Lines before `offset` are an earlier attempt's, sent then; a resumed
    recipe reports again from its checkpoint's epoch on.
    """
    from ray import tune

    poll_s = REMOTE_RELAY_POLL_S if files.storage else RELAY_POLL_S
    while True:
        running = job.is_alive()
        chunk = files.read_remote_curve(offset)
        if chunk:
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
            offset += len(complete)
            for line in complete.decode().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # joined to the line a killed attempt cut short
                    continue
                if plan.sends(int(row["epoch"])):
                    tune.report(row)
        if not running:
            return
        job.join(poll_s)


def run_trial_fn(config: dict[str, Any], plan: TrialPlan) -> None:
    """The Tune function of every study trial."""
    from ray import tune

    started = time.perf_counter()
    key = tune.get_context().get_trial_id()
    files = plan.files(key).on_node()
    files.folder.mkdir(parents=True, exist_ok=True)
    record = files.read_record()
    if record is not None:  # finished before the driver went down: report, do not rerun
        tune.report(final_result(record))
        return
    attempts = files.count_attempt()
    cfg = plan.config(config)
    if plan.runner == "inline":
        execute(cfg, files, plan, tune.report if plan.stream_epochs else None, writer=True)
    else:
        _run_train_job(cfg, files, key, plan)
        files.pull()  # the record its rank 0 wrote, perhaps on another node
    record = files.read_record()
    record["timings"].update(wall_s=round(time.perf_counter() - started, 3), attempts=attempts, finished_at=time.time())
    files.write_record(record)
    tune.report(final_result(record))
