"""Long-tailed data: exponential subsampling, list-file datasets, class-balanced batches, shot groups."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ptlab.config import DataConfig
from ptlab.data.longtail import exponential_profile, exponential_subsample
from ptlab.data.sampling import ClassBalancedSampler, instance_batches
from ptlab.data.sources import DataError, class_counts, load_dataset
from ptlab.methods.lpt import shot_metrics
from ptlab.metrics import shot_groups


def test_exponential_profile_runs_from_the_largest_class_down_by_the_ratio():
    labels = np.repeat(np.arange(5), [40, 40, 40, 3, 40])
    # n_c = 40 * 16^(-c/4) = 40, 20, 10, 5, 2.5 -> rounded, and class 3 keeps all 3 it has
    assert exponential_profile(labels, 5, 16.0).tolist() == [40, 20, 10, 3, 2]


def test_subsets_are_fixed_by_the_dataset_and_nest_across_ratios():
    labels = np.repeat(np.arange(4), 50)
    mild = exponential_subsample(labels, 4, 10.0, "some-dataset")
    steep = exponential_subsample(labels, 4, 100.0, "some-dataset")
    assert np.array_equal(mild, exponential_subsample(labels, 4, 10.0, "some-dataset"))
    assert set(steep) < set(mild)
    assert class_counts(labels[steep], 4).tolist() == [50, 11, 2, 1]
    assert not np.array_equal(mild, exponential_subsample(labels, 4, 10.0, "other-dataset"))


def test_lt_source_cuts_only_the_training_split():
    balanced = load_dataset("world:shapes")
    lt = load_dataset("lt:world:shapes", DataConfig(imbalance=10))
    assert class_counts(lt.split("train").labels, 10).tolist() == [64, 50, 38, 30, 23, 18, 14, 11, 8, 6]
    assert np.array_equal(lt.split("test").labels, balanced.split("test").labels)
    assert lt.split("train").images.identity != balanced.split("train").images.identity
    first = int(np.flatnonzero(lt.split("train").labels == 9)[0])
    assert np.array(lt.split("train").images.load(first)).shape == (32, 32, 3)
    with pytest.raises(DataError, match="long-tailed already"):
        load_dataset("lt:world:color-shapes-lt")


def _places_like(root, lines: dict[str, list[str]]):
    for split_lines in lines.values():
        for line in split_lines:
            path = root / line.rsplit(maxsplit=1)[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)
    for split, split_lines in lines.items():
        (root / f"Places_LT_{split}.txt").write_text("\n".join(split_lines) + "\n")


def test_list_files_in_places_lt_format(tmp_path):
    lines = {
        "train": ["data/a/airfield/1.jpg 0", "data/a/airfield/2.jpg 0", "data/c/church/outdoor/1.jpg 1",
                  "data/a/apartment_building/outdoor/1.jpg 2"],
        "val": ["data/a/airfield/3.jpg 0", "data/c/church/outdoor/2.jpg 1", "data/a/apartment_building/outdoor/2.jpg 2"],
        "test": ["data/a/airfield/4.jpg 0", "data/c/church/outdoor/3.jpg 1", "data/a/apartment_building/outdoor/3.jpg 2"],
    }
    _places_like(tmp_path, lines)
    bundle = load_dataset(f"list:{tmp_path}")
    # folder names, extended by the parent folder where "outdoor" alone is ambiguous
    assert bundle.classnames == ["a airfield", "church outdoor", "apartment building outdoor"]
    assert bundle.split("train").labels.tolist() == [0, 0, 1, 2]
    assert set(bundle.splits) == {"train", "val", "test"}
    (tmp_path / "classnames.txt").write_text("airfield\nn0001 church outside\nflat block\n")
    assert load_dataset(f"list:{tmp_path}", DataConfig(val_shots=1)).classnames == ["airfield", "n0001 church outside",
                                                                                    "flat block"]


def test_list_files_drop_a_leading_folder_key_from_class_names(tmp_path):
    lines = {"train": ["train/n01/a.JPEG 0", "train/n02/b.JPEG 1"], "test": ["val/n01/c.JPEG 0", "val/n02/d.JPEG 1"]}
    _places_like(tmp_path, lines)
    (tmp_path / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    assert load_dataset(f"list:{tmp_path}").classnames == ["tench", "goldfish"]


def test_list_file_problems_name_file_and_line(tmp_path):
    (tmp_path / "X_train.txt").write_text("a.jpg 0\n")
    with pytest.raises(DataError, match=r"no \*_test.txt"):
        load_dataset(f"list:{tmp_path}")
    (tmp_path / "X_test.txt").write_text("a.jpg zero\n")
    with pytest.raises(DataError, match=r"X_test.txt:1: 'a.jpg zero'; expected `relative/path label`"):
        load_dataset(f"list:{tmp_path}")


def test_class_balanced_batches_hold_per_class_images_of_distinct_classes():
    labels = np.repeat(np.arange(3), [10, 3, 1])
    sampler = ClassBalancedSampler(labels, np.random.default_rng(0), per_class=2)
    batches = [sampler.batch(4) for _ in range(3)]  # 6 class draws: two rounds over the 3 classes
    drawn = []
    for batch in batches:
        batch_labels = labels[batch]
        assert len(batch) == 4 and batch_labels[0] == batch_labels[1] and batch_labels[2] == batch_labels[3]
        assert batch_labels[0] != batch_labels[2]
        drawn += [batch_labels[0], batch_labels[2]]
    assert sorted(drawn[:3]) == [0, 1, 2] and sorted(drawn[3:]) == [0, 1, 2]
    rare = np.concatenate(batches)[np.concatenate([labels[b] for b in batches]) == 2]
    assert rare.tolist() == [13, 13, 13, 13]  # a one-image class repeats its image
    medium = np.concatenate(batches)[np.concatenate([labels[b] for b in batches]) == 1]
    assert sorted(medium[:3].tolist()) == [10, 11, 12]  # a class cycles through all its images before repeating


def test_instance_batches_cover_the_set_once():
    batches = instance_batches(10, 4, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_shot_group_boundaries_and_percent_metrics():
    assert shot_groups([101, 100, 20, 19]).tolist() == ["many", "medium", "few", "few"]
    counts = np.array([101, 100, 20, 19])
    labels = np.array([0, 0, 1, 2, 3, 3])
    pred = np.array([0, 1, 1, 0, 3, 0])
    metrics = shot_metrics(pred, labels, counts)
    assert metrics["many_acc"] == 50.0  # class 0: 1 of 2
    assert metrics["medium_acc"] == 100.0  # class 1
    assert metrics["few_acc"] == 25.0  # mean of class 2 (0%, its 20 images make it few) and class 3 (50%)
    decoupling = shot_metrics(pred, labels, counts, few_at_most=19)
    assert decoupling["medium_acc"] == 50.0 and decoupling["few_acc"] == 50.0  # 20 is medium there
    assert metrics["test_acc"] == pytest.approx(100 * 3 / 6)


def test_any_supervised_trial_on_long_tailed_data_reports_shot_groups(feature_cache, random_tiny_clip):
    import math

    from ptlab.config import TrialConfig
    from ptlab.methods import run_trial
    from ptlab.methods.base import TrialContext

    def probe(dataset):
        cfg = TrialConfig(method="linear_probe", backbone=random_tiny_clip, dataset=dataset, shots=0,
                          data={"imbalance": 10}, method_options={"search_steps": 0})
        return run_trial(cfg, TrialContext(cache_dir=feature_cache))

    record = probe("lt:world:shapes")  # 64, 50, 38, 30, 23 medium; 18, 14, 11, 8, 6 few
    per_class = np.array(record.details["per_class_acc"])
    m = record.metrics
    assert (m["many_classes"], m["medium_classes"], m["few_classes"]) == (0, 5, 5)
    assert math.isnan(m["many_acc"])
    assert m["medium_acc"] == pytest.approx(per_class[:5].mean())
    assert m["few_acc"] == pytest.approx(per_class[5:].mean())
    assert "few_acc" not in probe("world:shapes").metrics
