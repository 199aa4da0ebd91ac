"""A study folder's layout: every file and folder name in it, in one place.

    study.yaml         the study as it runs (overrides included), with its hash
    planned.json       the planned trials, written before anything runs
    driver.json        who drives this run (host, pid, dashboard), progress.json its live counts
    study.lock         held by the one driver of the folder
    selection.json     a tuned grid's selected configuration per cell
    journal.log        the Optuna storage of every search (optuna-dashboard opens it)
    tune/, tune_reruns/  Ray Tune's experiments (searches or grid; a tuned grid's re-runs)
    trials/<key>/      a trial's curve, checkpoint, record and outcome.json
    results.parquet, curves.parquet, ensembles.json   built from the trial folders (columns: schema.py)
    reference/         the zero-shot reference trials, kept apart
    report/            the HTML report and its tables

Nothing here imports torch, Ray or Polars: reports and third-party readers use it.
"""

STUDY_FILE = "study.yaml"
PLANNED = "planned.json"
DRIVER = "driver.json"  # who drives the study in this run: written before Tune starts
PROGRESS = "progress.json"
LOCK_FILE = "study.lock"
SELECTION_FILE = "selection.json"
OPTUNA_JOURNAL = "journal.log"
TUNE_DIR = "tune"  # a grid's or search's experiment, and a tuned grid's search phase
RERUN_DIR = "tune_reruns"
TRIALS_DIR = "trials"
OUTCOME = "outcome.json"  # in each trial's folder: what its results and curve rows are built from
RESULTS = "results.parquet"
CURVES = "curves.parquet"
ENSEMBLES = "ensembles.json"  # in the study folder: the ensemble rows, likewise
REFERENCE_DIR = "reference"
REPORT_DIR = "report"
