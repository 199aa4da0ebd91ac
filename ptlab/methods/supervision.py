"""The labelled few-shot setting shared by supervised recipes.

Builds, from a trial config: the backbone, the K-shot training set with its
(possibly noisy) labels and true labels, the validation sample, the test
split, and the frozen image features of all three from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ptlab.config import TrialConfig
from ptlab.data.base_new import base_and_new
from ptlab.data.features import FeatureCache, encode_images, load_pixels
from ptlab.data.fewshot import few_shot_indices, validation_indices
from ptlab.data.noise import PTNL_KINDS, NoisyLabels, add_label_noise, ptnl_noise
from ptlab.data.sources import DatasetBundle, Split, load_dataset
from ptlab.data.templates import resolve_templates
from ptlab.methods.base import TrialContext
from ptlab.models.backbone import Backbone, load_backbone
from ptlab.models.text import class_text_features


@dataclass
class SupervisedSetup:
    cfg: TrialConfig
    bundle: DatasetBundle
    backbone: Backbone
    cache: FeatureCache
    train: NoisyLabels
    train_split: Split
    train_views: torch.Tensor | None  # (V, N, E) cached augmented views, None = live augmentation
    val_features: torch.Tensor | None
    val_labels: np.ndarray | None
    test_features: torch.Tensor
    test_labels: np.ndarray
    new_classes: DatasetBundle | None = None  # base-to-new: the held-out half; bundle then holds the base half

    @property
    def classnames(self) -> list[str]:
        return self.bundle.classnames

    @property
    def n_classes(self) -> int:
        return self.bundle.n_classes

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.labels

    @property
    def train_true_labels(self) -> np.ndarray:
        return self.train.true_labels

    def train_batch(self, batch: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Image features of training positions `batch`, one random augmented view each."""
        if self.train_views is not None:
            view = torch.from_numpy(rng.integers(0, len(self.train_views), size=len(batch)))
            return self.train_views[view, torch.from_numpy(batch)]
        indices = self.train.indices[batch]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**62)))
            pixels = load_pixels(self.train_split, indices, self.cache.train_transform)
        return encode_images(self.backbone, pixels)

    def summary(self) -> dict[str, float]:
        return {
            "noise_realised": float(self.train.rate),
            "train_size": float(len(self.train)),
            # 0 when every feature came from the cache: the study-level saving made visible.
            "images_encoded": float(self.cache.images_encoded),
        }


def zero_shot_scores(backbone: Backbone, bundle: DatasetBundle, features: torch.Tensor) -> torch.Tensor:
    """Single-template zero-shot logits: what confusion noise and pseudo-labels are built on."""
    text = class_text_features(backbone, bundle.classnames, resolve_templates("single", bundle.template))
    return torch.nn.functional.normalize(features.float(), dim=-1) @ text.cpu().T


def noisy_training_set(cfg: TrialConfig, bundle: DatasetBundle, backbone: Backbone, cache: FeatureCache) -> NoisyLabels:
    split = bundle.split("train")
    if cfg.noise_type in PTNL_KINDS:
        return ptnl_noise(split.labels, cfg.shots, cfg.noise_rate, cfg.seed, distinct=cfg.noise_type == "ptnl_distinct")
    indices = few_shot_indices(split.labels, cfg.shots, cfg.seed, split.images.identity)
    labels = split.labels[indices]
    scores = None
    if cfg.noise_type == "confusion" and cfg.noise_rate > 0:
        scores = zero_shot_scores(backbone, bundle, cache.features(split, indices)).numpy()
    noise_type = cfg.noise_type if cfg.noise_rate > 0 else "none"
    return add_label_noise(
        labels, noise_type, cfg.noise_rate, cfg.seed, num_classes=bundle.n_classes, indices=indices, scores=scores
    )


TrainingSet = Callable[[TrialConfig, DatasetBundle, Backbone, FeatureCache], NoisyLabels]


def prepare_supervised(
    cfg: TrialConfig, ctx: TrialContext, augment: bool = True, training_set: TrainingSet = noisy_training_set
) -> SupervisedSetup:
    """augment=False trains on the evaluation view only (e.g. the linear probe's protocol).

    `training_set` chooses the training samples and their labels; the default is
    the K-shot sample with the config's label noise (UPL passes its pseudo-labels).
    """
    bundle = load_dataset(cfg.dataset, cfg.data)
    new_classes = None
    if cfg.data.base_to_new:
        bundle, new_classes = base_and_new(bundle)
    backbone = load_backbone(cfg.backbone, ctx.device, cfg.precision)
    cache = ctx.feature_cache(backbone, crop_scale=tuple(cfg.train.crop_scale))
    train = training_set(cfg, bundle, backbone, cache)
    train_split = bundle.split("train")
    if not (augment and cfg.train.augment):
        views = cache.features(train_split, train.indices).unsqueeze(0)
    elif cfg.train.views > 0:
        views = cache.view_features(train_split, train.indices, cfg.train.views)
    else:
        views = None
    val_features = val_labels = None
    if "val" in bundle.splits:
        val = bundle.split("val")
        val_idx = validation_indices(val.labels, cfg.shots, cfg.seed, val.images.identity, cfg.data.val_shots)
        val_features, val_labels = cache.features(val, val_idx), val.labels[val_idx]
    test = bundle.split("test")
    return SupervisedSetup(
        cfg, bundle, backbone, cache, train, train_split, views, val_features, val_labels, cache.features(test), test.labels,
        new_classes,
    )
