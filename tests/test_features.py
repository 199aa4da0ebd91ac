import numpy as np
import torch

from ptlab.data.features import FeatureCache
from ptlab.data.sources import load_dataset
from ptlab.models.backbone import load_backbone


def test_second_cache_computes_nothing_and_matches(tmp_path, random_tiny_clip):
    bb = load_backbone(random_tiny_clip)
    split = load_dataset("world:shapes").split("val")
    first = FeatureCache(tmp_path, bb)
    a = first.features(split, np.arange(20))
    assert first.images_encoded == 20
    second = FeatureCache(tmp_path, bb)
    b = second.features(split, np.arange(20))
    assert second.images_encoded == 0 and torch.equal(a, b)
    # only the missing part of a larger request is computed
    c = second.features(split, np.arange(30))
    assert second.images_encoded == 10 and torch.equal(c[:20], a)


def test_views_are_deterministic_and_distinct(tmp_path, random_tiny_clip):
    bb = load_backbone(random_tiny_clip)
    split = load_dataset("world:shapes").split("val")
    idx = np.arange(5)
    v1 = FeatureCache(tmp_path / "a", bb).view_features(split, idx, 2)
    v2 = FeatureCache(tmp_path / "b", bb).view_features(split, idx, 2)
    assert v1.shape[:2] == (2, 5) and torch.equal(v1, v2)
    assert not torch.equal(v1[0], v1[1])


def test_corrupt_and_partial_files_are_rebuilt(tmp_path, random_tiny_clip):
    bb = load_backbone(random_tiny_clip)
    split = load_dataset("world:shapes").split("val")
    cache = FeatureCache(tmp_path, bb)
    good = cache.features(split, np.arange(8))
    path = cache.path(split, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a crash mid-write
    again = FeatureCache(tmp_path, bb)
    assert torch.equal(again.features(split, np.arange(8)), good) and again.images_encoded == 8
    # bytes flipped inside the tensor payload: the checksum catches it
    payload = torch.load(path, weights_only=True)
    payload["features"][0, 0] += 1.0
    torch.save(payload, path)
    third = FeatureCache(tmp_path, bb)
    assert torch.equal(third.features(split, np.arange(8)), good) and third.images_encoded == 8


def test_different_weights_use_different_files(tmp_path, random_tiny_clip):
    bb = load_backbone(random_tiny_clip)
    split = load_dataset("world:shapes").split("val")
    path_a = FeatureCache(tmp_path, bb).path(split, 0)
    with torch.no_grad():
        bb.model.visual.attnpool.c_proj.bias.add_(1.0)
    assert FeatureCache(tmp_path, bb).path(split, 0) != path_a
