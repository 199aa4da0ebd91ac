"""Study folders built from hand-made tables, laid out as the study runner wrote them before results had a typed
schema (ptlab.study.schema): no study column or label, lists as JSON text, curves without a key or factor values.
So every report test also reads a folder of an earlier version.

Metric values follow simple formulas of the factors and the seed, so tests can
state the numbers a report must show.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from ptlab.config import TrialConfig

PROVENANCE = {
    "ptlab_version": "0.1.0",
    "torch_version": "2.9.0",
    "open_clip_version": "3.2.0",
    "ray_version": "2.60.0",
    "git_commit": "abc1234",
}
SEED_OFFSET = {1: -1.0, 2: 0.0, 3: 1.0}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """As ptlab.study.store wrote configs before the typed schema: dotted columns; method_options and lists as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "method_options":
            flat |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, dict | list | tuple):
            flat[prefix + key] = json.dumps(value, sort_keys=True)
        else:
            flat[prefix + key] = value
    return flat


def trial_row(config: dict[str, Any], metrics: dict[str, Any], status: str = "completed", error: str = "") -> dict:
    """One results.parquet row: ids, every TrialConfig field flattened, metrics, timings, provenance."""
    cfg = TrialConfig().with_updates(config)
    if status == "failed":
        metrics = dict.fromkeys(metrics)
    return {
        "trial_id": cfg.trial_id,
        "cell_id": cfg.with_updates({"seed": 0}).trial_id,
        "tune_trial_id": f"tune-{cfg.trial_id}",
        "status": status,
        "error": error,
        **_flatten(cfg.model_dump(mode="json")),
        **metrics,
        "wall_s": 30.0,
        "recipe_s": 25.0,
        "epochs_done": 5,
        **PROVENANCE,
    }


ZERO_SHOT_ACC = 45.0  # the zero-shot reference of noise_grid, below every trained cell but the noisiest CE ones


def write_reference(folder: Path, rows: list[dict]) -> None:
    """Zero-shot reference rows where ptlab.study.reference stores them: a results store of their own."""
    (folder / "reference").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(folder / "reference" / "results.parquet")


def curve_rows(trial_id: str, final: dict[str, float], epochs: int) -> list[dict]:
    """Per-epoch rows rising linearly to the trial's final values."""
    return [
        {"trial_id": trial_id, "epoch": e, **{k: v * (0.5 + 0.5 * e / epochs) for k, v in final.items()}}
        for e in range(1, epochs + 1)
    ]


def write_study(folder: Path, spec: dict, rows: list[dict], curves: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if rows:
        pl.DataFrame(rows, infer_schema_length=None).write_parquet(folder / "results.parquet")
    if curves:
        pl.DataFrame(curves, infer_schema_length=None).write_parquet(folder / "curves.parquet")
    return folder


def grid_accuracy(noise_type: str, rate: float, loss: str, n_ctx: int, seed: int) -> float:
    slope = (60.0 if loss == "ce" else 20.0) * (1.2 if noise_type == "pair" else 1.0)
    return 80.0 + (2.0 if n_ctx == 16 else 0.0) - slope * rate + SEED_OFFSET[seed]


GRID_FACTORS = {
    "noise_type": ["symmetric", "pair"],
    "noise_rate": [0.0, 0.25, 0.5],
    "loss": ["ce", "gce"],
    "n_ctx": [4, 16],
}
# The one cell whose seed 3 diverged and whose seed 2 crashed.
BROKEN_CELL = ("symmetric", 0.5, "ce", 16)


def noise_grid(folder: Path, keep: int | None = None) -> Path:
    """2 noise types x 3 rates x 2 losses x 2 context lengths x 3 seeds: 72 grid points, 60 trials, as a study
    stores them: at noise_rate 0 the pair cells compute what the symmetric ones do and have no trials of their
    own. ``keep`` cuts it short."""
    spec = {
        "name": folder.name,
        "method": "coop",
        "factors": GRID_FACTORS,
        "seeds": [1, 2, 3],
        "report": "dashboards/robustness.yaml",
        "planned_trials": 60,
    }
    rows, curves = [], []
    for noise_type, rate, loss, n_ctx in itertools.product(*GRID_FACTORS.values()):
        for seed in (1, 2, 3):
            config = {"noise_type": noise_type, "noise_rate": rate, "loss": loss, "n_ctx": n_ctx, "seed": seed}
            if TrialConfig().with_updates(config).trial_id in {r["trial_id"] for r in rows}:
                continue  # the same trial as an earlier grid point, run once
            acc = grid_accuracy(noise_type, rate, loss, n_ctx, seed)
            metrics = {
                "test_acc": acc,
                "test_macro_acc": acc - 1.0,
                "val_acc": acc + 1.0,
                "grad_ratio": 1.0 + rate * (2.0 if loss == "ce" else 0.5),
            }
            status, error = "completed", ""
            if (noise_type, rate, loss, n_ctx) == BROKEN_CELL and seed == 3:
                status, error, metrics = (
                    "flagged_nan",
                    "loss became NaN at epoch 3",
                    {**metrics, "test_acc": float("nan")},
                )
            if (noise_type, rate, loss, n_ctx) == BROKEN_CELL and seed == 2:
                status, error = "failed", "RuntimeError: CUDA out of memory"
            row = trial_row(config, metrics, status, error)
            rows.append(row)
            if status == "completed":
                curves += curve_rows(row["trial_id"], {"val_acc": acc + 1.0, "train_loss": 1.0 + rate}, epochs=5)
    if keep is not None:
        rows = rows[:keep]
        kept = {r["trial_id"] for r in rows}
        curves = [c for c in curves if c["trial_id"] in kept]
    else:
        zero_shot = {"test_acc": ZERO_SHOT_ACC, "test_macro_acc": ZERO_SHOT_ACC - 1.0, "val_acc": ZERO_SHOT_ACC + 1.0}
        write_reference(folder, [trial_row({"method": "zeroshot"}, zero_shot)])
    return write_study(folder, spec, rows, curves)


def search_study(folder: Path, n_trials: int = 12) -> Path:
    """An Optuna search over lr and gce_q with an optuna.db; every third trial was pruned by ASHA at epoch 2."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": folder.name,
        "method": "coop",
        "factors": {"loss": ["gce"]},
        "seeds": [1],
        "search": {
            "metric": "val_acc",
            "mode": "max",
            "samples": n_trials,
            "space": {"lr": {"log_uniform": [1e-4, 1e-1]}, "gce_q": {"uniform": [0.1, 1.0]}},
        },
        "planned_trials": n_trials,
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=folder.name,
        storage=f"sqlite:///{folder / 'optuna.db'}",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    rows, curves = [], []
    for i in range(n_trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        q = trial.suggest_float("gce_q", 0.1, 1.0)
        val = 70.0 - 3.0 * abs(math.log10(lr) + 2.5) + 4.0 * q
        pruned = i % 3 == 2
        epochs = 2 if pruned else 10
        if pruned:
            trial.report(val * 0.6, step=epochs)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, val)
        config = {"loss": "gce", "gce_q": q, "train.lr": lr, "train.epochs": 10}
        row = trial_row(config, {"val_acc": val, "test_acc": val - 2.0}, "pruned" if pruned else "completed")
        row["epochs_done"] = epochs
        rows.append(row)
        curves += curve_rows(row["trial_id"], {"val_acc": val}, epochs=epochs)
    return write_study(folder, spec, rows, curves)


def _family(
    folder: Path, method: str, factors: dict[str, list], metrics_of, epoch_metrics: tuple[str, ...] = ()
) -> Path:
    spec = {"name": folder.name, "method": method, "factors": factors, "seeds": [1, 2, 3]}
    rows, curves = [], []
    for values in itertools.product(*factors.values()):
        for seed in (1, 2, 3):
            config = dict(zip(factors, values, strict=True)) | {"seed": seed}
            metrics = metrics_of(config, SEED_OFFSET[seed])
            row = trial_row(config, metrics)
            rows.append(row)
            per_epoch = {"val_acc": metrics["test_acc"], "train_loss": 2.0 - metrics["test_acc"] / 100}
            per_epoch |= {k: metrics[k] for k in epoch_metrics}
            curves += curve_rows(row["trial_id"], per_epoch, 5)
    spec["planned_trials"] = len(rows)
    return write_study(folder, spec, rows, curves)


def ueo_study(folder: Path) -> Path:
    scenarios = ["closed", "partial", "open", "open_partial"]

    methods = ["zeroshot_mcm", "entropy_min", "ueo"]

    def metrics(config: dict, offset: float) -> dict:
        k = scenarios.index(config["data.scenario"])
        gain = 2.0 * methods.index(config["method"])
        return {
            "test_acc": 75.0 - 3 * k + gain + offset,
            "test_macro_acc": 73.0 - 3 * k + gain + offset,
            "auroc": 85.0 - 2 * k + gain + offset,
            "weight_auroc": 70.0 - k + offset,
        }

    factors = {"data.scenario": scenarios, "method": methods, "backbone": ["world:tiny-rn", "world:tiny-vit"]}
    return _family(folder, "ueo", factors, metrics, epoch_metrics=("test_acc", "auroc"))


def grad_ratio_study(folder: Path) -> Path:
    def metrics(config: dict, offset: float) -> dict:
        head = config["method"] == "classifier_r"
        rate = config["noise_rate"]
        return {
            "test_acc": 80.0 - (40 if head else 25) * rate + offset,
            "grad_ratio": 1.0 + rate * (3.0 if head else 1.5),
            "train_acc_noisy": 90.0 - 30 * rate,
            "train_acc_true": 88.0 - 10 * rate,
        }

    return _family(
        folder,
        "coop",
        {"method": ["coop", "classifier_r"], "noise_type": ["symmetric"], "noise_rate": [0.125, 0.25, 0.5]},
        metrics,
        epoch_metrics=("grad_ratio", "train_acc_noisy"),
    )


def lpt_study(folder: Path) -> Path:
    def metrics(config: dict, offset: float) -> dict:
        gain = 5.0 if config["method"] == "lpt" else 0.0
        hard = {10.0: 0.0, 50.0: 8.0, 100.0: 12.0}[config["data.imbalance"]]
        few = 40.0 + gain * 2 - hard + offset
        row = {
            "test_acc": 60.0 + gain - hard / 2 + offset,
            "many_acc": 70.0 + gain / 2 + offset,
            "medium_acc": 55.0 + gain - hard / 2 + offset,
            "few_acc": few,
        }
        if gain:  # only LPT has a stage 1 to report
            row |= {"stage1_test_acc": row["test_acc"] - 3.0, "stage1_few_acc": few - 6.0}
        return row

    return _family(folder, "lpt", {"method": ["linear_probe", "lpt"], "data.imbalance": [10.0, 50.0, 100.0]}, metrics)


ENSEMBLE_GAIN = 2.0  # an ensemble's accuracy over its members' mean, in upl_study


def ensemble_row(members: list[dict]) -> dict:
    """A seed ensemble's row as the study stores it (ptlab.methods.ensemble.ensemble_rows), from its members' rows."""
    first = members[0]
    config_columns = set(_flatten(TrialConfig().model_dump(mode="json"))) - {"seed"}
    row = {k: v for k, v in first.items() if k in config_columns}
    ids = ",".join(m["trial_id"] for m in members)
    mean = {k: sum(m[k] for m in members) / len(members) for k in ("test_acc", "pseudo_label_acc", "zeroshot_acc")}
    return row | {
        "trial_id": f"ens-{first['cell_id']}",
        "cell_id": f"{first['cell_id']}-ens{len(members)}",
        "method": f"{first['method']}_ensemble",
        "status": "completed",
        "ensemble_size": len(members),
        "ensemble_seeds": ",".join(str(m["seed"]) for m in members),
        "ensemble_members": ids,
        "member_test_acc": mean["test_acc"],
        "pseudo_label_acc": mean["pseudo_label_acc"],
        "zeroshot_acc": mean["zeroshot_acc"],
        "test_acc": mean["test_acc"] + ENSEMBLE_GAIN,
        "test_macro_acc": mean["test_acc"] + ENSEMBLE_GAIN,
    }


def upl_study(folder: Path) -> Path:
    """UPL and Robust UPL, 3 seeds each, and the ensemble of each method's 3 seeds."""

    def metrics(config: dict, offset: float) -> dict:
        robust = config["method"] == "robust_upl"
        return {
            "pseudo_label_acc": (83.0 if robust else 93.0) + offset / 2,
            "test_acc": (88.0 if robust else 86.0) + offset,
            "zeroshot_acc": 84.0,
        }

    _family(folder, "upl", {"method": ["upl", "robust_upl"]}, metrics)
    trials = pl.read_parquet(folder / "results.parquet")
    ensembles = [ensemble_row(cell.sort("seed").to_dicts()) for cell in trials.partition_by("cell_id", maintain_order=True)]
    rows = pl.concat([trials, pl.DataFrame(ensembles)], how="diagonal_relaxed")
    rows.write_parquet(folder / "results.parquet")
    return folder


def base_to_new_study(folder: Path) -> Path:
    def metrics(config: dict, offset: float) -> dict:
        conditional = config["method"] == "cocoop"
        base = 80.0 + config["n_ctx"] / 4 - conditional + offset
        new = 60.0 - config["n_ctx"] / 2 + 8 * conditional + offset
        return {"test_acc": base, "base_acc": base, "new_acc": new, "hm": 2 * base * new / (base + new)}

    return _family(folder, "coop", {"method": ["coop", "cocoop"], "n_ctx": [4, 16]}, metrics)


# Each shipped dashboard with the fixture that holds the columns it draws from.
DASHBOARD_FIXTURES = {
    "robustness": noise_grid,
    "search": search_study,
    "ueo": ueo_study,
    "lpt": lpt_study,
    "upl": upl_study,
    "gradient_ratio": grad_ratio_study,
    "base_to_new": base_to_new_study,
}
