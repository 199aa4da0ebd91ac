"""`ptlab study ...`: validate, run, resume and inspect studies."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ptlab.study.layout import STUDY_FILE

app = typer.Typer(no_args_is_help=True, help="Robustness grids and hyperparameter searches, every trial on Ray.")

ADDRESS_HELP = (
    "Join an existing Ray cluster (HOST:PORT, 'auto' or ray://HOST:10001); default: start a local one. "
    "Clusters with token authentication (Ray's default) need RAY_AUTH_MODE=token and their token in "
    "RAY_AUTH_TOKEN or ~/.ray/auth_token."
)
CPUS_HELP = "CPUs of the local Ray cluster (default: all cores). Ignored with --address."
STORAGE_HELP = (
    "Where trials' files and the study's results go, for a cluster of several nodes: s3://BUCKET/PREFIX, gs://..., "
    "or a path every node mounts (endpoint and credentials from the usual environment, e.g. AWS_ENDPOINT_URL). "
    "Default: the study's `storage`, else only the study folder."
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


SET_HELP = ("Override a study field, FIELD=VALUE with a YAML value (repeatable): --set train.lr=0.01 "
            "--set factors.noise_rate='[0, 0.5]'. Field paths are the study file's; the study folder keeps the result.")


def _load(path: Path, overrides: list[str] | None = None):
    from ptlab.study.spec import StudyError, load_study, study_warnings

    try:
        spec = load_study(path, overrides or [])
    except StudyError as err:
        _fail(str(err))
    for warning in study_warnings(spec):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    return spec


def _describe(spec) -> None:
    from ptlab.study.space import differing_fields

    kind = spec.kind
    typer.echo(f"study {spec.name}: {kind}, method {spec.method}, runner {spec.runner}, "
               f"resources {spec.resources.model_dump()}")
    if kind.searches:
        s = spec.search
        asha = f"ASHA {s.asha.model_dump()}" if s.asha else "no early stopping"
        per = " per cell" if kind.reruns else ""
        typer.echo(f"  search{per}: {s.samples} samples of {', '.join(s.space)}; {s.mode} {s.metric}; {asha}")
    if kind.reruns:
        rule = ("ORACLE selection by " + spec.selection_metric + " (test data: an upper bound, not a fair result)"
                if spec.selection == "oracle" else f"selection by {spec.selection_metric} on validation")
        typer.echo(f"  then {rule}; the selected configuration of each cell re-run for seeds {spec.seeds}")
    groups = spec.cell_groups() if kind.has_cells else []
    repeats = sum(len(group) - 1 for group in groups)
    if kind.has_cells:
        seeds = f"{len(spec.seeds)} seeds ({spec.seeds})"
        if repeats:
            fields = [path for path in spec.factors
                      if any(path in differing_fields(cell, first) for first, *others in groups for cell in others)]
            typer.echo(f"  {sum(map(len, groups))} cells x {seeds}; {len(groups)} distinct: {repeats} cells compute "
                       f"what another does (they differ from it only in {', '.join(fields)}) and share its trials")
        else:
            typer.echo(f"  {len(groups)} cells x {seeds}")
        shown = spec.trials()[:: len(spec.seeds)]
        for trial in shown[:20]:
            cell = ", ".join(f"{k}={v}" for k, v in trial.cell.items()) or "(the base config)"
            also = "; ".join(", ".join(f"{k}={v}" for k, v in differing_fields(other, trial.cell).items())
                             for other in trial.repeats)
            typer.echo(f"    cell {trial.cell_id}: {cell}" + (f"  (also {also})" if also else ""))
        if len(shown) > 20:
            typer.echo(f"    ... and {len(shown) - 20} more cells")
    if repeats:
        # every distinct cell plans as many trials (its seeds, or its samples and re-runs)
        written = spec.n_planned() // len(groups) * sum(map(len, groups))
        typer.echo(f"  planned trials: {spec.n_planned()} distinct ({written} as the grid is written, "
                   f"{written - spec.n_planned()} of them repeats)")
    else:
        typer.echo(f"  planned trials: {spec.n_planned()}")
    for method, sizes in spec.ensemble.items():
        typer.echo(f"  then seed ensembles of {method} over {', '.join(map(str, sizes))} seeds per cell")


@app.command()
def validate(
    study: Path = typer.Argument(..., help="Study YAML file."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
):
    """Check a study without running anything; print its cells and trial count."""
    spec = _load(study, overrides)
    _describe(spec)
    typer.secho(f"{study}: valid", fg=typer.colors.GREEN)


def _execute(spec, study_dir: Path, address: str | None, cpus: int | None, command: str) -> None:
    """Run (command "run") or continue ("resume") the study in study_dir, holding the folder's lock throughout."""
    from ptlab.study.layout import TUNE_DIR
    from ptlab.study.lock import StudyLocked, study_lock

    try:
        with study_lock(study_dir, f"ptlab study {command}") as lock:
            if command == "run" and (study_dir / STUDY_FILE).is_file():
                _fail(f"{study_dir} already holds a study; continue it with `ptlab study resume {study_dir}` "
                      "or choose another folder with --out")
            _clean_up_after_dead_driver(lock)
            # a driver killed before Tune saved anything leaves nothing to restore: start over in place
            resume = command == "resume" and (study_dir / TUNE_DIR / "tuner.pkl").is_file()
            _drive(spec, study_dir, address, cpus, resume, lock)
    except StudyLocked as err:
        _fail(str(err))
    _summarise(spec, study_dir)


def _clean_up_after_dead_driver(lock) -> None:
    from ptlab.study.cluster import end_cluster

    previous = lock.previous
    if not lock.previous_holder_died():
        return
    left = end_cluster(previous.get("cluster_id"), previous.get("session_dir"))
    typer.echo(f"the study's last driver (pid {previous['pid']}) died without releasing it"
               + (f"; ended {left} processes of the Ray cluster it had started" if left else ""))


def _drive(spec, study_dir: Path, address: str | None, cpus: int | None, resume: bool, lock) -> None:
    from ptlab.study.cluster import connect, dashboard_help, disconnect
    from ptlab.study.tuner import run_study

    try:
        connection = connect(address, cpus, study=spec.name)
    except (ConnectionError, RuntimeError, ValueError) as err:
        hint = ""
        if address and "RAY_AUTH_MODE" not in os.environ:
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token "
                    "in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        _fail(f"could not {'join the Ray cluster at ' + address if address else 'start Ray'}: {err}{hint}")
    if connection.started_here:
        lock.note(cluster_id=connection.cluster_id, session_dir=connection.session_dir)
    typer.echo(dashboard_help(connection))
    typer.echo(f"study folder: {study_dir}")
    try:
        finished = run_study(spec, study_dir, connection, resume=resume)
    except RuntimeError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        finished = False
    finally:
        disconnect(connection)
    if not finished:
        _fail(f"interrupted: finished trials are stored in {study_dir}. "
              f"Continue with: ptlab study resume {study_dir}", code=130)


def _summarise(spec, study_dir: Path) -> None:
    from rich.console import Console

    from ptlab.study.status import render_status, study_status

    Console().print(render_status(study_status(study_dir)))
    typer.echo(f"results: {study_dir / 'results.parquet'}, curves: {study_dir / 'curves.parquet'}")
    try:
        from ptlab.report.html import build_report
    except ImportError:
        return
    try:
        html = build_report(study_dir, dashboard=spec.report)
    except Exception as err:  # the results are stored; only the view of them failed
        _fail(f"the study finished but its report failed: {type(err).__name__}: {err}\n"
              f"results are in {study_dir}; rebuild the report with `ptlab report {study_dir}`", code=1)
    typer.echo(f"report: {html.resolve().as_uri()}\n  (rebuild and open it in a browser: ptlab report {study_dir} --open)")
    if spec.storage:
        from ptlab.study.storage import open_storage, publish_study_files

        storage = open_storage(spec.storage)
        publish_study_files(study_dir, storage)
        typer.echo(f"stored in {storage.uri} (results, curves, report; trials under trials/); "
                   f"a report from there alone: ptlab report {storage.uri}")


@app.command()
def run(
    study: Path = typer.Argument(..., help="Study YAML file, e.g. studies/noise_grid.yaml."),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    out: Path = typer.Option(None, help="Study folder (default runs/<study name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show the plan; run nothing."),
    cpus: int = typer.Option(None, help=CPUS_HELP),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    storage: str = typer.Option(None, help=STORAGE_HELP),
):
    """Validate, run every trial on Ray, store results and write the report."""
    if storage is not None:
        from ptlab.study.storage import normalise_uri

        # a --set like any other, so the study folder keeps it and its errors read the same
        overrides = [*(overrides or []), f"storage={normalise_uri(storage)}"]
    spec = _load(study, overrides)
    _describe(spec)
    if dry_run:
        return
    study_dir = (out or Path("runs") / spec.name).resolve()
    _execute(spec, study_dir, address, cpus, "run")


@app.command()
def resume(
    study: str = typer.Argument(..., help="Study folder of an interrupted run, or the storage URI it ran with "
                                "(s3://BUCKET/PREFIX: continued in --out, e.g. after its driver's machine is gone)."),
    address: str = typer.Option(None, help=ADDRESS_HELP),
    cpus: int = typer.Option(None, help=CPUS_HELP),
    out: Path = typer.Option(None, help="With a storage URI: the study folder to continue in (default runs/<study name>)."),
):
    """Continue an interrupted study: finished trials are kept, unfinished ones resume from their checkpoints."""
    from ptlab.study.storage import is_uri

    study_dir = _from_storage(study, out) if is_uri(study) else Path(study).resolve()
    if not (study_dir / STUDY_FILE).is_file():
        _fail(f"{study_dir}: not a study folder (no study.yaml); start a study with `ptlab study run STUDY.yaml`")
    spec = _load(study_dir / STUDY_FILE)
    _execute(spec, study_dir, address, cpus, "resume")


def _from_storage(uri: str, out: Path | None) -> Path:
    """A study folder made from what the storage holds: the study's files and Tune's state of each phase."""
    import shutil
    import tempfile

    import yaml

    from ptlab.study.layout import RERUN_DIR, TUNE_DIR
    from ptlab.study.storage import StorageError, fetch_study_files, open_storage

    try:
        storage = open_storage(uri)
        text = storage.read_bytes(STUDY_FILE)
    except (OSError, StorageError) as err:
        _fail(f"storage {uri}: {err}")
    if text is None:
        _fail(f"{uri}: no study there (no {STUDY_FILE}); give the --storage URI the study ran with")
    name = (yaml.safe_load(text) or {}).get("name", "study")
    study_dir = (out or Path("runs") / name).resolve()
    if (study_dir / STUDY_FILE).is_file():
        _fail(f"{study_dir} already holds a study; resume it with `ptlab study resume {study_dir}`, "
              "or give another folder with --out")
    if study_dir.exists() and any(study_dir.iterdir()):
        _fail(f"{study_dir} is not empty; give an empty or new folder with --out")
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{study_dir.name}-from-storage-", dir=study_dir.parent))
    try:
        fetch_study_files(storage, staging, experiments=True)
        # Tune's state is published once a minute: a phase can have begun before its first state reached the storage
        unsaved = [d.name for d in (staging / TUNE_DIR, staging / RERUN_DIR)
                   if (d / "tuner.pkl").is_file() and not any(d.glob("experiment_state-*.json"))]
        if unsaved:
            _fail(f"{uri}: Ray Tune's state of {', '.join(unsaved)} never reached the storage (it is copied there once a "
                  "minute): this study cannot be continued from the storage; its finished trials are in "
                  f"{storage.display('results.parquet')}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if study_dir.exists():
        study_dir.rmdir()
    staging.rename(study_dir)  # whole or not at all: a failed copy leaves no half study folder
    typer.echo(f"copied {uri} into {study_dir}")
    return study_dir


@app.command()
def watch(
    study_dir: Path = typer.Argument(..., help="Study folder of a running (or finished) study."),
    every: float = typer.Option(2.0, min=0.1, help="Seconds between refreshes."),
):
    """Follow a study live, from any terminal: the status the report's banner shows, until no driver runs it."""
    import time
    from contextlib import nullcontext

    from rich.console import Console
    from rich.live import Live

    from ptlab.study.status import render_status, study_status

    if not (study_dir / STUDY_FILE).is_file():
        _fail(f"{study_dir}: not a study folder (no study.yaml)")
    console = Console()
    summary, printed = study_status(study_dir), None
    # In a terminal the table redraws in place; piped to a file, it is printed again whenever a trial ends.
    with Live(console=console, auto_refresh=False) if console.is_terminal else nullcontext() as live:
        while True:
            if live is not None:
                live.update(render_status(summary), refresh=True)
            elif printed != (summary["state"], summary["done"]):
                console.print(render_status(summary))
                console.file.flush()
                printed = (summary["state"], summary["done"])
            if summary["state"] != "running":
                break
            time.sleep(every)
            summary = study_status(study_dir)
    if summary["state"] == "interrupted":
        typer.echo(f"no driver is running this study; continue it with: ptlab study resume {study_dir}")


@app.command()
def status(study_dir: Path = typer.Argument(..., help="Study folder.")):
    """Trials done, running, failed and pruned; best so far; time spent."""
    from rich.console import Console

    from ptlab.study.status import render_status, study_status

    if not (study_dir / STUDY_FILE).is_file():
        _fail(f"{study_dir}: not a study folder (no study.yaml)")
    summary = study_status(study_dir)
    Console().print(render_status(summary))
    if summary["state"] == "interrupted":
        typer.echo(f"no driver is running this study; continue it with: ptlab study resume {study_dir}")
