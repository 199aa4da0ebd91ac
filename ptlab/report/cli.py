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
    study_dir: Path = typer.Argument(..., help="Study folder (runs/<study>) holding study.yaml and results.parquet."),
    dashboard: Path | None = typer.Option(
        None, "--dashboard", help="Dashboard YAML to use instead of the study's own."
    ),
    open_: bool = typer.Option(False, "--open", help="Open the report in the default browser."),
    fixed: Path | None = typer.Option(
        None, "--fixed", help="A tuned grid's fixed-hyperparameter twin (its study folder), shown beside it."
    ),
) -> None:
    """Write STUDY_DIR/report/index.html (self-contained, opens offline) and its CSV/Markdown tables."""
    # imported here: every `ptlab` command mounts this one, and the report's imports cost most of a second
    from ptlab.report.dashboard import DashboardError
    from ptlab.report.html import build_report

    try:
        page = build_report(study_dir, dashboard, fixed)
    except (DashboardError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"report: {page.resolve().as_uri()}")
    if open_:
        webbrowser.open(page.resolve().as_uri())
