"""Zero-shot CLIP: class-name prompts against cached image features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptlab.config import TrialConfig
from ptlab.data.base_new import base_and_new, base_new_metrics
from ptlab.data.features import FeatureCache
from ptlab.data.sources import DatasetBundle, load_dataset
from ptlab.data.templates import resolve_templates
from ptlab.methods.base import TrialContext, TrialRecord, sanity_status
from ptlab.metrics import accuracy, mean_per_class_accuracy, per_class_accuracy
from ptlab.models.backbone import Backbone, load_backbone
from ptlab.models.text import class_text_features


def zero_shot_classifier(backbone: Backbone, bundle: DatasetBundle, cfg: TrialConfig) -> torch.Tensor:
    templates = resolve_templates(cfg.templates, bundle.template, cfg.template)
    return class_text_features(backbone, bundle.classnames, templates)


def zero_shot_logits(image_features: torch.Tensor, text_features: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    scale = backbone.model.logit_scale.exp().float()
    return scale * F.normalize(image_features.float(), dim=-1) @ text_features.to(image_features.device).T


def _predict(backbone: Backbone, cache: FeatureCache, bundle: DatasetBundle, split: str, cfg: TrialConfig):
    text = zero_shot_classifier(backbone, bundle, cfg)
    return zero_shot_logits(cache.features(bundle.split(split)), text.cpu(), backbone).argmax(-1).numpy()


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    bundle, new = load_dataset(cfg.dataset, cfg.data), None
    if cfg.data.base_to_new:
        bundle, new = base_and_new(bundle)
    backbone = load_backbone(cfg.backbone, ctx.device, cfg.precision)
    cache = ctx.feature_cache(backbone)
    metrics, details = {}, {}
    for split in ("val", "test"):
        if split not in bundle.splits:
            continue
        data = bundle.split(split)
        pred = _predict(backbone, cache, bundle, split, cfg)
        metrics[f"{split}_acc"] = 100 * accuracy(pred, data.labels)
        if split == "test":
            metrics["test_macro_acc"] = 100 * mean_per_class_accuracy(pred, data.labels, bundle.n_classes)
            details["per_class_acc"] = (100 * per_class_accuracy(pred, data.labels, bundle.n_classes)).tolist()
    if new is not None:
        new_acc = 100 * accuracy(_predict(backbone, cache, new, "test", cfg), new.split("test").labels)
        metrics.update(base_new_metrics(metrics["test_acc"], new_acc))
    ctx.log(f"zero-shot {cfg.backbone} on {cfg.dataset}: test {metrics.get('test_acc', float('nan')):.2f}%")
    status = sanity_status(metrics, [], bundle.n_classes)
    return TrialRecord(cfg.trial_id, cfg.model_dump(mode="json"), metrics, status=status, details=details)
