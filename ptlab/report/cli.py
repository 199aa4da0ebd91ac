"""`ptlab report DIR [--dashboard FILE] [--open]`: rebuild a study's report from stored results.

The top-level CLI mounts the command function: ``app.command("report")(report)``.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path

import typer

app = typer.Typer(help="Build a study's HTML report from its stored results (never trains).")


@app.command("report")
def report(
    study: str = typer.Argument(..., help="Study folder (runs/<study>) holding study.yaml and results.parquet, "
                                "or the storage URI a study ran with (s3://BUCKET/PREFIX)."),
    dashboard: Path | None = typer.Option(
        None, "--dashboard", help="Dashboard YAML to use instead of the study's own."
    ),
    open_: bool = typer.Option(False, "--open", help="Open the report in the default browser."),
    fixed: Path | None = typer.Option(
        None, "--fixed", help="A tuned grid's fixed-hyperparameter twin (its study folder), shown beside it."
    ),
    into: Path | None = typer.Option(
        None, "--into", help="With a storage URI: the local folder its results are copied to and the report written "
        "in (default: a folder in the temporary directory)."
    ),
) -> None:
    """Write STUDY/report/index.html (self-contained, opens offline) and its CSV/Markdown tables."""
    # imported here: every `ptlab` command mounts this one, and the report's imports cost most of a second
    from ptlab.report.dashboard import DashboardError
    from ptlab.report.html import build_report
    from ptlab.study.storage import StorageError, is_uri

    storage = None
    study_dir = Path(study)
    try:
        if is_uri(study):
            storage, study_dir = _fetch(study, into)
        page = build_report(study_dir, dashboard, fixed)
    except (DashboardError, FileNotFoundError, StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"report: {page.resolve().as_uri()}")
    if storage is not None:
        from ptlab.study.layout import REPORT_DIR

        storage.put_tree(study_dir / REPORT_DIR, REPORT_DIR)
        typer.echo(f"  and {storage.display(REPORT_DIR + '/index.html')}")
    if open_:
        webbrowser.open(page.resolve().as_uri())


def _fetch(uri: str, into: Path | None):
    """The study's own files from its storage into a local folder."""
    import hashlib
    import tempfile

    from ptlab.study.storage import StorageError, fetch_study_files, open_storage

    folder = into or Path(tempfile.gettempdir()) / "ptlab-reports" / hashlib.sha256(uri.encode()).hexdigest()[:12]
    try:
        storage = open_storage(uri)
    except OSError as err:
        raise StorageError(f"storage {uri}: {err}") from None
    fetch_study_files(storage, folder)
    return storage, folder
