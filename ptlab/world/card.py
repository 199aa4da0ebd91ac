"""Model cards of the shipped tiny CLIPs: measured zero-shot accuracy per world task."""

from __future__ import annotations

import json
from pathlib import Path

from ptlab.config import TrialConfig
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.models.backbone import WORLD_ASSETS

CARD_TASKS = ("colors", "shapes", "color-shapes", "patterns", "sizes")
CARD_DOMAINS = ("photo", "outline", "pixel")


def zero_shot_table(backbone: str, cache_dir: Path, tasks=CARD_TASKS, domains=CARD_DOMAINS) -> dict[str, float]:
    """Single-template test accuracy (%) for every task, keyed 'task' (photo) or 'task@domain'."""
    table = {}
    for domain in domains:
        for task in tasks:
            cfg = TrialConfig(method="zeroshot", backbone=backbone, dataset=f"world:{task}", data={"domain": domain})
            record = run_trial(cfg, TrialContext(cache_dir=cache_dir))
            key = task if domain == "photo" else f"{task}@{domain}"
            table[key] = round(record.metrics["test_acc"], 2)
    return table


def card_path(backbone: str) -> Path:
    return WORLD_ASSETS / backbone / "model_card.json"


def write_card(backbone: str, record: dict, zero_shot: dict[str, float], folder: Path | None = None) -> Path:
    path = (folder / "model_card.json") if folder else card_path(backbone)
    weights = path.parent / "open_clip_model.safetensors"
    card = {
        "backbone": f"world:{backbone}",
        "zero_shot_test_acc": zero_shot,
        "weights_bytes": weights.stat().st_size if weights.is_file() else None,
        **record,
    }
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def read_card(backbone: str) -> dict:
    return json.loads(card_path(backbone).read_text())
