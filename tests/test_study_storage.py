"""Study storage (ptlab.study.storage) on a local folder and on an S3-compatible server on 127.0.0.1 (moto)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from ptlab.study.storage import StorageMirror, StudyStorage, storage_problem
from ptlab.study.trial import TrialFiles


@pytest.fixture(params=["local", "s3"])
def storage_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "shared")
    request.getfixturevalue("s3_server")
    return f"s3://ptlab/{request.node.name.replace('[', '-').rstrip(']')}-{time.time_ns()}"


def test_files_and_folders_round_trip(storage_uri, tmp_path):
    storage = StudyStorage(storage_uri)
    assert storage.read_bytes("trials/none/record.json") is None and storage.files_under("trials/none") == []
    local = tmp_path / "here"
    (local / "artifacts").mkdir(parents=True)
    (local / "record.json").write_text("{}")
    (local / "artifacts" / "logits.npz").write_bytes(b"\0" * 1000)
    assert storage.put_tree(local, "trials/k1") == 2
    assert storage.files_under("trials/k1") == ["artifacts/logits.npz", "record.json"]
    back = tmp_path / "back"
    assert storage.get_tree("trials/k1", back) == 2
    assert (back / "artifacts" / "logits.npz").read_bytes() == b"\0" * 1000
    storage.write_bytes("trials/k1/record.json", b'{"a": 1}')  # replaced whole
    assert storage.read_bytes("trials/k1/record.json") == b'{"a": 1}'
    assert not list(back.rglob("*.partial"))


def test_a_trial_works_on_its_node_and_its_files_reach_the_driver(storage_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("PTLAB_NODE_DIR", str(tmp_path / "node-b"))
    driver_view = TrialFiles(tmp_path / "study" / "trials" / "k1", storage_uri, "trials/k1")
    on_node = driver_view.on_node()
    assert on_node.folder != driver_view.folder and on_node.folder.is_relative_to(tmp_path / "node-b")
    assert on_node.count_attempt() == 1
    on_node.append_curve({"epoch": 1, "val_acc": 50.0})
    on_node.save_checkpoint({"epoch": 1, "ctx": torch.ones(2)})
    assert json.loads(on_node.read_remote_curve(0))["val_acc"] == 50.0
    on_node.append_curve({"epoch": 2, "val_acc": 60.0})
    first_line = len(json.dumps({"epoch": 1, "val_acc": 50.0})) + 1
    assert json.loads(on_node.read_remote_curve(first_line))["epoch"] == 2

    # a retry on another node starts from what the storage holds: attempts, curve, checkpoint
    monkeypatch.setenv("PTLAB_NODE_DIR", str(tmp_path / "node-c"))
    retry = driver_view.on_node()
    assert retry.attempts() == 1 and [r["epoch"] for r in retry.read_curve()] == [1, 2]
    assert torch.equal(retry.load_checkpoint()["ctx"], torch.ones(2))
    retry.write_record({"status": "completed", "metrics": {"test_acc": 70.0}})

    assert driver_view.read_record() is None  # the driver reads the storage once the trial ended
    driver_view.pull()
    assert driver_view.read_record()["metrics"] == {"test_acc": 70.0}
    assert driver_view.attempts() == 1


def test_without_a_storage_a_trial_folder_is_only_itself(tmp_path):
    files = TrialFiles(tmp_path / "t")
    assert files.on_node() is files
    files.folder.mkdir()
    files.append_curve({"epoch": 1, "val_acc": 1.0})
    files.pull()
    assert files.read_curve() == [{"epoch": 1, "val_acc": 1.0}]


def test_nodes_share_computed_features_through_the_storage(storage_uri, tmp_path, random_tiny_clip):
    from ptlab.data.features import FeatureCache
    from ptlab.data.sources import load_dataset
    from ptlab.models.backbone import load_backbone

    backbone = load_backbone(random_tiny_clip)
    split = load_dataset("world:shapes").split("val")
    shared = StorageMirror(storage_uri, "features")
    first = FeatureCache(tmp_path / "node-a", backbone, shared=shared)
    a = first.features(split, np.arange(20))
    assert first.images_encoded == 20
    # another node: its own cache is empty, the storage has what the first computed
    second = FeatureCache(tmp_path / "node-b", backbone, shared=shared)
    assert torch.equal(second.features(split, np.arange(20)), a) and second.images_encoded == 0
    assert second.path(split, 0).is_file()  # kept on the node: the next trial there reads its own disk
    # a larger request computes only what neither has, and publishes the union
    second.features(split, np.arange(30))
    assert second.images_encoded == 10
    third = FeatureCache(tmp_path / "node-c", backbone, shared=shared)
    third.features(split, np.arange(30))
    assert third.images_encoded == 0


@pytest.mark.parametrize("written, problem", [
    ("runs/shared", "relative path"),
    ("s3://", "names no bucket"),
    ("nosuchscheme://bucket/p", "nosuchscheme://"),
])
def test_a_storage_that_cannot_work_is_refused_before_anything_runs(written, problem, tmp_path):
    from ptlab.study.spec import StudyError, validate_study

    assert problem in storage_problem(written)
    study = {"name": "s", "method": "zeroshot", "dataset": "world:shapes", "backbone": "world:tiny-rn",
             "storage": written}
    with pytest.raises(StudyError) as err:
        validate_study(study, tmp_path / "s.yaml")
    assert "storage" in str(err.value) and problem in str(err.value)


def test_the_storage_is_where_a_study_is_kept_not_what_it_computes(tmp_path):
    from ptlab.study.spec import validate_study

    study = {"name": "s", "method": "zeroshot", "dataset": "world:shapes", "backbone": "world:tiny-rn"}
    here = validate_study(study)
    there = validate_study({**study, "storage": "s3://bucket/studies/s"})
    assert here.content_hash() == there.content_hash()
    assert "storage" not in here.as_run() and there.as_run()["storage"] == "s3://bucket/studies/s"
    assert validate_study(there.as_run()).storage == "s3://bucket/studies/s"


def _study_commands(text: str) -> list[list[str]]:
    """The `ptlab study run` command lines of a recipe, as words without their shell quotes."""
    return [[word.strip("'\"") for word in line[line.index("ptlab study run"):].split()]
            for line in text.replace("\\\n", " ").splitlines() if "ptlab study run" in line]


def test_the_cluster_recipes_run_a_shipped_study_with_object_storage():
    import subprocess
    from pathlib import Path

    import yaml

    from ptlab.study.spec import load_study

    root = Path(__file__).resolve().parent.parent
    recipes = root / "docs" / "cluster"
    job = yaml.safe_load((recipes / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    cluster = yaml.safe_load((recipes / "ray-up.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert subprocess.run(["bash", "-n", str(recipes / "slurm.sbatch")]).returncode == 0
    commands = _study_commands(job["spec"]["entrypoint"]) + _study_commands((recipes / "ray-up.yaml").read_text())
    commands += _study_commands((recipes / "slurm.sbatch").read_text())
    assert len(commands) == 3
    for command in commands:
        study = command[3]
        if study.startswith("$"):  # the SLURM script's default
            study = "studies/noise_grid.yaml"
        assert "--address" in command and "--storage" in command
        storage = command[command.index("--storage") + 1]
        if not storage.startswith("$"):
            assert storage.startswith("s3://") and storage_problem(storage) is None
        assert load_study(root / study, [f"storage={storage if '://' in storage else 's3://b/p'}"]).storage
