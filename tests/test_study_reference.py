"""The zero-shot reference: which studies get one, of which config, and how it is stored and reused."""


from ptlab.study import reference
from ptlab.study.reference import record_references, reference_configs, reference_key, reference_store
from ptlab.study.spec import validate_study
from ptlab.study.store import ResultStore
from ptlab.study.tuner import trial_plan


def spec(**fields):
    """A small CoOp grid; a field given as None is left out (so that it can be a factor)."""
    study = {
        "name": "s", "method": "coop", "backbone": "world:tiny-rn", "dataset": "world:shapes", "shots": 2,
        "noise_type": "symmetric", "train": {"epochs": 1}, "runner": "inline", "seeds": [3, 4, 5],
        "factors": {"noise_rate": [0.0, 0.5], "loss": ["ce", "gce"]}, **fields,
    }
    return validate_study({k: v for k, v in study.items() if v is not None})


def test_one_zero_shot_per_backbone_data_and_template():
    [cfg] = reference_configs(spec())
    assert (cfg.method, cfg.backbone, cfg.dataset, cfg.seed) == ("zeroshot", "world:tiny-rn", "world:shapes", 3)
    # what training changes (shots, noise, loss) is no part of it
    assert (cfg.noise_rate, cfg.loss) == (0.0, "ce")
    assert len(reference_configs(spec(shots=None, factors={"shots": [1, 2, 4], "noise_rate": [0.0, 0.5]}))) == 1
    two = reference_configs(spec(backbone=None, factors={"backbone": ["world:tiny-rn", "world:tiny-vit"], "noise_rate": [0.0, 0.5]}))
    assert [c.backbone for c in two] == ["world:tiny-rn", "world:tiny-vit"]
    styles = reference_configs(spec(factors={"data.domain": ["photo", "outline"], "n_ctx": [4, 16]}))
    assert [c.data.domain for c in styles] == ["photo", "outline"]


def test_no_reference_where_zero_shot_does_not_apply():
    assert reference_configs(spec(factors={"method": ["coop", "zeroshot"]})) == []
    assert reference_configs(spec(method="ueo", noise_type=None, factors={"data.scenario": ["open", "closed"]})) == []
    assert reference_configs(spec(method="vpt", backbone="timm:vit_tiny_patch16_224", factors={"noise_rate": [0.0]})) == []


class InlineRay:
    """ray.remote/ray.get that run the task in this process, counting the runs."""

    def __init__(self, monkeypatch, fail: bool = False):
        import ray

        self.runs, self.fail = 0, fail
        monkeypatch.setattr(ray, "remote", lambda **resources: lambda fn: self.task(fn))
        monkeypatch.setattr(ray, "get", lambda value: value)

    def task(self, fn):
        outer = self

        class Task:
            @staticmethod
            def remote(*args):
                outer.runs += 1
                if outer.fail:
                    raise RuntimeError("worker died")
                return fn(*args)

        return Task


def test_reference_is_run_once_stored_as_a_marked_row_and_kept_apart(tmp_path, monkeypatch):
    from ptlab.study.schema import read_label

    study = spec(factors={"noise_rate": [0.0]})
    (tmp_path / "study.yaml").write_text(study.to_yaml())
    plan = trial_plan(study, tmp_path)
    fake = InlineRay(monkeypatch)
    assert record_references(study, plan) == 1
    [row] = reference_store(tmp_path).results().to_dicts()
    assert row["method"] == "zeroshot" and row["status"] == "completed"
    # labelled with the study it is the reference of
    assert row["study"] == study.name and read_label(tmp_path / "reference" / "results.parquet").factors == ("noise_rate",)
    assert 0 < row["test_acc"] <= 100 and row["tune_trial_id"] == reference_key(reference_configs(study)[0])
    assert (tmp_path / "reference" / "trials" / row["tune_trial_id"] / "record.json").is_file()
    # The study's own store holds no trace of it: not a trial, not counted.
    assert ResultStore(tmp_path).rows().is_empty()
    # A resumed study finds the row and runs nothing again.
    assert record_references(study, plan) == 0 and fake.runs == 1


def test_a_failed_reference_is_stored_as_failed(tmp_path, monkeypatch):
    study = spec(factors={"noise_rate": [0.0]})
    InlineRay(monkeypatch, fail=True)
    assert record_references(study, trial_plan(study, tmp_path)) == 1
    [row] = reference_store(tmp_path).results().to_dicts()
    assert row["status"] == "failed" and "worker died" in row["error"] and row["method"] == reference.ZERO_SHOT
