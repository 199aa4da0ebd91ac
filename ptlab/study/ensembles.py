"""The study's seed ensembles: once every trial has ended, rows for the ensembles its `ensemble` field asks for.

Each member trial saved its test logits in its artifacts folder as it ran
(TrialFiles.artifacts); the ensembles are computed from those files and the
trials' rows alone, so a resumed or re-run step gives the same rows, and the
store replaces the old ones rather than adding to them.
"""

from __future__ import annotations

from pathlib import Path

from ptlab.methods.ensemble import LOGITS_FILE, ensemble_rows
from ptlab.study.schema import KEY, TRIAL_ID
from ptlab.study.spec import StudySpec
from ptlab.study.store import ResultStore
from ptlab.study.trial import TrialPlan


def record_ensembles(spec: StudySpec, plan: TrialPlan) -> int:
    """Store the study's ensemble rows beside its trial rows; returns how many there are."""
    store = ResultStore(plan.study_dir)
    trials = store.results()
    rows = []
    if spec.ensemble and trials.height:
        # results rows name trials by config hash; their folders are named by Tune's trial id
        folder_of = dict(zip(trials[TRIAL_ID], trials[KEY], strict=True))

        def artifacts(trial_id: str) -> Path:
            folder = plan.files(folder_of[trial_id]).artifacts
            if not (folder / LOGITS_FILE).is_file():
                raise RuntimeError(f"trial {trial_id} saved no test logits ({folder / LOGITS_FILE} is missing), so its "
                                   f"seed ensemble cannot be computed; its results are stored in {plan.study_dir}. Run the "
                                   "study again in a new folder, or remove `ensemble` from its study.yaml")
            return folder

        for method, sizes in spec.ensemble.items():
            rows += ensemble_rows(trials, artifacts, sizes, methods=(method,))
    store.set_ensembles(rows)
    return len(rows)
