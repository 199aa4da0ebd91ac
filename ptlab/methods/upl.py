"""Unsupervised prompt tuning on zero-shot pseudo-labels: UPL and Robust UPL (methods.md section 6).

Zero-shot CLIP (the dataset's single template) labels the whole unlabelled
training split: label = argmax, confidence = max softmax. Per predicted
class, K = `shots` images are kept (0 keeps every image):

  upl         the K most confident (ties to the lower index)
  robust_upl  K drawn uniformly at random, a draw that depends on the seed

Classes predicted fewer than K times keep what they have; classes never
predicted are absent. A CoOp prompt (the config's design) then trains on the
kept images and their pseudo-labels with the config's loss: the papers use CE
for UPL and GCE for Robust UPL. True labels are kept beside the pseudo-labels,
so the usual noisy-label metrics apply (train_acc_true, noise_realised,
grad_ratio), and pseudo_label_acc is recorded.

With an artifacts folder in the context, the trial saves its test logits
there, which `ptlab.methods.ensemble` averages over seeds.
"""

from __future__ import annotations

import numpy as np
import torch

from ptlab.config import TrialConfig
from ptlab.data.features import FeatureCache
from ptlab.data.fewshot import lowest_keys_per_class, random_keys, seeded_generator
from ptlab.data.noise import NoisyLabels
from ptlab.data.sources import DatasetBundle
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.coop import PromptClassifier, prompt_design
from ptlab.methods.ensemble import save_test_logits
from ptlab.methods.supervision import prepare_supervised, zero_shot_scores
from ptlab.methods.training import TrainingLoop
from ptlab.metrics import accuracy
from ptlab.models.backbone import Backbone
from ptlab.models.prompt import PromptLearner

SELECTIONS = {"upl": "confident", "robust_upl": "random"}


def per_class_counts(pred: np.ndarray, shots: int, n_classes: int) -> np.ndarray:
    present = np.bincount(pred, minlength=n_classes)
    return present if shots == 0 else np.minimum(present, shots)


def select_confident(pred: np.ndarray, confidence: np.ndarray, shots: int, n_classes: int) -> np.ndarray:
    """Positions of the `shots` most confident samples of each predicted class, sorted."""
    return lowest_keys_per_class(pred, -np.asarray(confidence, dtype=np.float64), per_class_counts(pred, shots, n_classes))


def select_random(pred: np.ndarray, shots: int, n_classes: int, seed: int, identity: str) -> np.ndarray:
    """Positions of `shots` samples drawn uniformly from each predicted class, sorted."""
    keys = random_keys(seeded_generator("robust-upl", identity, seed), len(pred))
    return lowest_keys_per_class(pred, keys, per_class_counts(pred, shots, n_classes))


def pseudo_labelled_set(cfg: TrialConfig, bundle: DatasetBundle, backbone: Backbone, cache: FeatureCache) -> NoisyLabels:
    if cfg.method not in SELECTIONS:
        raise ValueError(f"the pseudo-label recipe runs {', '.join(SELECTIONS)}, not {cfg.method!r}")
    if cfg.noise_type != "none":
        raise ValueError(f"{cfg.method} trains on pseudo-labels; it takes no label noise (noise_type: none)")
    split = bundle.split("train")
    scale = backbone.model.logit_scale.exp().detach().float().cpu()
    probs = torch.softmax(scale * zero_shot_scores(backbone, bundle, cache.features(split)), dim=-1)
    confidence, pred = probs.max(dim=-1)
    pred, confidence = pred.numpy(), confidence.numpy()
    if SELECTIONS[cfg.method] == "confident":
        kept = select_confident(pred, confidence, cfg.shots, bundle.n_classes)
    else:
        kept = select_random(pred, cfg.shots, bundle.n_classes, cfg.seed, split.images.identity)
    return NoisyLabels(kept, pred[kept], split.labels[kept])


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    setup = prepare_supervised(cfg, ctx, training_set=pseudo_labelled_set)
    scale = setup.backbone.model.logit_scale.exp().detach().float()
    zeroshot_pred = (zero_shot_scores(setup.backbone, setup.bundle, setup.test_features)).argmax(-1).numpy()
    learner = PromptLearner(setup.backbone, setup.classnames, prompt_design(cfg), torch.Generator().manual_seed(cfg.seed))
    loop = TrainingLoop(cfg, ctx, setup, PromptClassifier(learner, scale))
    loop.fit()
    extra = {
        "pseudo_label_acc": 100 * accuracy(setup.train_labels, setup.train_true_labels),
        "pseudo_label_classes": float(len(np.unique(setup.train_labels))),
        "zeroshot_acc": 100 * accuracy(zeroshot_pred, setup.test_labels),
    }
    record = loop.finish(extra)
    if ctx.artifacts_dir is not None:
        save_test_logits(ctx.artifacts_dir, loop.scores(setup.test_features), setup.test_labels)
    return record
