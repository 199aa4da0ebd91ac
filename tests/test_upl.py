import numpy as np
import pytest

from ptlab.config import TrainConfig, TrialConfig
from ptlab.methods import run_trial
from ptlab.methods.base import TrialContext
from ptlab.methods.ensemble import (
    LOGITS_FILE,
    ensemble_metrics,
    ensemble_rows,
    load_test_logits,
    save_test_logits,
)
from ptlab.methods.upl import select_confident, select_random
from ptlab.metrics import accuracy


def test_confident_selection_keeps_top_k_per_predicted_class():
    pred = np.array([0, 0, 0, 1, 1, 2, 0])
    conf = np.array([0.5, 0.9, 0.7, 0.2, 0.3, 0.99, 0.9])
    # class 0: 0.9 at 1 and 6 tie (lower index first), then 0.7 at 2; class 1 has 2; class 2 has 1; class 3 absent
    assert select_confident(pred, conf, 2, 4).tolist() == [1, 3, 4, 5, 6]
    assert select_confident(pred, conf, 0, 4).tolist() == list(range(7))


def test_random_selection_is_seeded_and_per_predicted_class():
    pred = np.repeat(np.arange(3), 50)
    a = select_random(pred, 4, 3, seed=1, identity="d")
    assert np.bincount(pred[a]).tolist() == [4, 4, 4]
    assert np.array_equal(a, select_random(pred, 4, 3, seed=1, identity="d"))
    assert not np.array_equal(a, select_random(pred, 4, 3, seed=2, identity="d"))


def test_ensemble_is_the_mean_of_the_members_logits():
    labels = np.array([0, 1, 2, 0])
    # each member gets one sample wrong; only the mean gets all right
    a = np.array([[3.0, 0, 0], [0, 3, 0], [0, 0, 3], [0, 4, 0]])
    b = np.array([[0.0, 4, 0], [0, 3, 0], [0, 0, 3], [5, 0, 0]])
    c = np.array([[3.0, 0, 0], [0, 0, 4], [0, 0, 3], [2, 0, 0]])
    assert [accuracy(m, labels) for m in (a, b, c)] == [0.75, 0.75, 0.75]
    assert ensemble_metrics([a, b, c], labels)["test_acc"] == 100.0
    assert ensemble_metrics([a, b], labels)["test_acc"] == 100 * accuracy((a + b) / 2, labels)


def test_a_cell_whose_members_all_failed_records_that_no_ensemble_could_be_formed(tmp_path):
    rows = [{"trial_id": f"t{seed}", "cell_id": "c", "seed": seed, "method": "upl", "status": "failed", "loss": "ce"}
            for seed in (1, 2)]
    rows.append({"trial_id": "t3", "cell_id": "d", "seed": 1, "method": "upl", "status": "completed", "loss": "gce"})
    save_test_logits(tmp_path / "t3", np.eye(3), np.arange(3))
    out = {r["cell_id"]: r for r in ensemble_rows(rows, tmp_path, sizes=[2])}
    assert out["c-ens2"]["status"] == "failed" and out["c-ens2"]["ensemble_size"] == 2
    assert "no ensemble could be formed: none of the cell's 2 trials completed (failed)" in out["c-ens2"]["error"]
    assert out["c-ens2"]["loss"] == "ce" and out["c-ens2"]["method"] == "upl_ensemble"
    assert out["d-ens1"]["status"] == "completed" and out["d-ens1"]["test_acc"] == 100.0


def _upl_cfg(backbone, method, seed, **kw):
    base = dict(method=method, backbone=backbone, dataset="world:shapes", shots=4, n_ctx=4, seed=seed,
                train=TrainConfig(epochs=1, views=2))
    base.update(kw)
    return TrialConfig(**base)


def _row(record):
    cfg = TrialConfig.model_validate(record.config)
    return {"trial_id": record.trial_id, "cell_id": cfg.with_updates({"seed": 0}).trial_id, "status": record.status,
            "seed": cfg.seed, "method": cfg.method, "loss": cfg.loss, "train.epochs": cfg.train.epochs, **record.metrics}


def test_upl_trials_store_logits_and_ensemble_over_seeds(feature_cache, random_tiny_clip, tmp_path):
    records = []
    for seed in (1, 2, 3):
        cfg = _upl_cfg(random_tiny_clip, "robust_upl", seed, loss="gce")
        record = run_trial(cfg, TrialContext(cache_dir=feature_cache, artifacts_dir=tmp_path / cfg.trial_id))
        record.status = "completed"  # a random backbone collapses; the ensemble arithmetic is what is tested here
        records.append(record)
        logits, labels = load_test_logits(tmp_path / cfg.trial_id)
        assert 100 * accuracy(logits, labels) == pytest.approx(record.metrics["test_acc"])
        assert record.metrics["pseudo_label_acc"] == pytest.approx(100 * (1 - record.metrics["noise_realised"]))
        assert {"zeroshot_acc", "pseudo_label_classes"} <= set(record.metrics)
    rows = [_row(r) for r in records]
    rows.append({**rows[0], "trial_id": "other", "method": "coop"})  # other methods are not ensembled
    out = ensemble_rows(rows, tmp_path, sizes=[2, 3])
    assert [r["ensemble_size"] for r in out] == [2, 3]
    members = [load_test_logits(tmp_path / r.trial_id)[0] for r in records]
    labels = load_test_logits(tmp_path / records[0].trial_id)[1]
    assert out[1]["test_acc"] == pytest.approx(100 * accuracy(np.mean(members, axis=0), labels))
    assert out[0]["test_acc"] == pytest.approx(100 * accuracy(np.mean(members[:2], axis=0), labels))
    assert out[1]["method"] == "robust_upl_ensemble" and out[1]["ensemble_seeds"] == [1, 2, 3]
    assert out[1]["loss"] == "gce" and "seed" not in out[1]
    assert out[1]["member_test_acc"] == pytest.approx(np.mean([r.metrics["test_acc"] for r in records]))


def test_upl_rejects_label_noise(feature_cache, random_tiny_clip):
    cfg = _upl_cfg(random_tiny_clip, "upl", 1, noise_type="symmetric", noise_rate=0.25)
    with pytest.raises(ValueError, match="pseudo-labels"):
        run_trial(cfg, TrialContext(cache_dir=feature_cache))


def test_saved_logits_round_trip(tmp_path):
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_test_logits(tmp_path, logits, np.array([2, 1]))
    back, labels = load_test_logits(tmp_path)
    assert np.array_equal(back, logits) and labels.tolist() == [2, 1]
    assert [p.name for p in tmp_path.iterdir()] == [LOGITS_FILE]
