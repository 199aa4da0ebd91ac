"""The supervised training loop every prompt- and head-tuning recipe shares, its loss and its final record.

One epoch at a time over cached (or live) image features, with the trial's
loss, optimiser and schedule; checkpoints and per-epoch reports go through
the trial context, so every recipe built on it resumes and is stopped early
alike. Recipes hand it their classifier (coop, cocoop, upl, the PTNL
variants, linear heads, tenc_ft).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from ptlab.config import TrialConfig
from ptlab.data.base_new import base_new_metrics
from ptlab.data.sources import class_counts
from ptlab.losses import make_loss
from ptlab.methods.base import TrialContext, TrialRecord, sanity_status, shot_group_metrics, shot_group_sizes
from ptlab.methods.gradient_ratio import GradientRatioProbe
from ptlab.methods.schedule import epoch_lr, make_optimizer, set_lr
from ptlab.methods.supervision import SupervisedSetup
from ptlab.metrics import accuracy, mean_per_class_accuracy, per_class_accuracy


def loss_for(cfg: TrialConfig, reduction: str = "mean"):
    return make_loss(cfg.loss, reduction=reduction, **cfg.loss_choice.params())


class TrainingLoop:
    """One epoch at a time over cached (or live) image features; shared by the prompt-tuning variants."""

    def __init__(self, cfg: TrialConfig, ctx: TrialContext, setup: SupervisedSetup, classifier: torch.nn.Module,
                 for_classes: Callable[[list[str]], torch.nn.Module] | None = None):
        """`for_classes(names)` builds the recipe's classifier for other class names (base-to-new)."""
        self.cfg, self.ctx, self.setup, self.classifier = cfg, ctx, setup, classifier
        self.for_classes = for_classes
        self.loss_fn = loss_for(cfg)
        self.optimizer = make_optimizer(classifier.parameters(), cfg.train)
        self.rng = np.random.default_rng([cfg.seed, 0x0C00])
        self.grad_probe = GradientRatioProbe.for_trial(cfg, setup, ctx.log)
        self.start_epoch = 0
        self.curves: list[dict[str, float]] = []
        if ctx.resume_state:
            self._restore(ctx.resume_state)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.classifier(image_features)

    def _restore(self, state: dict) -> None:
        self.classifier.load_state_dict(state["classifier"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.start_epoch = int(state["epoch"])
        self.curves = list(state["curves"])

    def _state(self, epoch: int) -> dict:
        names = self._trainable_names()
        trainable = {k: v for k, v in self.classifier.state_dict().items() if k in names}
        # Deep copy: the live tensors and lists keep changing after this call returns.
        return copy.deepcopy(
            {
                "classifier": trainable,
                "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state,
                "epoch": epoch,
                "curves": self.curves,
            }
        )

    def _trainable_names(self) -> set[str]:
        return {n for n, p in self.classifier.named_parameters() if p.requires_grad}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        s, train = self.setup, self.cfg.train
        lr = epoch_lr(epoch, train)
        set_lr(self.optimizer, lr)
        self.classifier.train()
        order = self.rng.permutation(len(s.train_labels))
        total_loss, correct_noisy, correct_true = 0.0, 0, 0
        for start in range(0, len(order), train.batch_size):
            batch = order[start : start + train.batch_size]
            feats = s.train_batch(batch, self.rng).to(self.ctx.device)
            logits = self.logits(feats)
            target = torch.from_numpy(s.train_labels[batch]).to(self.ctx.device)
            loss = self.loss_fn(logits, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            pred = logits.detach().argmax(-1).cpu().numpy()
            total_loss += float(loss.detach()) * len(batch)
            correct_noisy += int((pred == s.train_labels[batch]).sum())
            correct_true += int((pred == s.train_true_labels[batch]).sum())
        n = max(len(order), 1)
        return {
            "train_loss": total_loss / n,
            "train_acc_noisy": 100.0 * correct_noisy / n,
            "train_acc_true": 100.0 * correct_true / n,
            "lr": lr,
        }

    @torch.no_grad()
    def scores(self, features: torch.Tensor, classifier: torch.nn.Module | None = None) -> torch.Tensor:
        """Logits (N, C) on the CPU, in evaluation mode (of the trained classifier unless another is given)."""
        if classifier is None:
            self.classifier.eval()
            score = self.logits
        else:
            classifier.eval()
            score = classifier
        out = [score(features[i : i + 4096].to(self.ctx.device)).float().cpu() for i in range(0, len(features), 4096)]
        return torch.cat(out) if out else torch.zeros(0, self.setup.n_classes)

    def predict(self, features: torch.Tensor, classifier: torch.nn.Module | None = None) -> np.ndarray:
        return self.scores(features, classifier).argmax(-1).numpy()

    def new_class_metrics(self, base_pred: np.ndarray) -> dict[str, float]:
        """Base-to-new: what was learned, moved into a classifier of the held-out names, on their test images.

        `base_pred` are the trained classifier's predictions on the base test images.
        """
        new = self.setup.new_classes
        if self.for_classes is None:
            raise ValueError(f"method {self.cfg.method!r} cannot classify classes it was not built for; "
                             "set data.base_to_new: false")
        classifier = self.for_classes(new.classnames).to(self.ctx.device)
        names = self._trainable_names()
        learned = {k: v for k, v in self.classifier.state_dict().items()
                   if k in names and not k.endswith("class_embeddings")}
        classifier.load_state_dict(learned, strict=False)
        test = new.split("test")
        new_acc = 100 * accuracy(self.predict(self.setup.cache.features(test), classifier), test.labels)
        return base_new_metrics(100 * accuracy(base_pred, self.setup.test_labels), new_acc)

    def fit(self) -> list[dict[str, float]]:
        s, train = self.setup, self.cfg.train
        for epoch in range(self.start_epoch, train.epochs):
            metrics = self.train_epoch(epoch)
            last = epoch + 1 == train.epochs
            if s.val_features is not None and ((epoch + 1) % train.eval_every == 0 or last):
                metrics["val_acc"] = 100 * accuracy(self.predict(s.val_features), s.val_labels)
            if self.grad_probe is not None:
                metrics.update(self.grad_probe.measure(self.classifier, self.loss_fn, epoch, self.ctx.device))
            if not self.ctx.close_epoch(self.curves, metrics, epoch + 1, lambda done=epoch + 1: self._state(done)):
                break
        return self.curves

    def finish(self, extra: dict | None = None) -> TrialRecord:
        test_pred = self.predict(self.setup.test_features)
        if self.setup.new_classes is not None:
            extra = {**self.new_class_metrics(test_pred), **(extra or {})}
        return trial_record(self.cfg, self.setup, test_pred, self.curves, extra)


def trial_record(
    cfg: TrialConfig, setup: SupervisedSetup, test_pred: np.ndarray, curves: list[dict[str, float]], extra: dict | None = None
) -> TrialRecord:
    """The final record of a supervised trial: test accuracies, the last epoch's metrics, `extra` on top."""
    s = setup
    metrics = {
        "test_acc": 100 * accuracy(test_pred, s.test_labels),
        "test_macro_acc": 100 * mean_per_class_accuracy(test_pred, s.test_labels, s.n_classes),
        "epochs_done": len(curves),
    }
    for key in ("val_acc", "train_loss", "train_acc_noisy", "train_acc_true", "grad_ratio"):
        values = [c[key] for c in curves if key in c]
        if values:
            metrics[key] = values[-1]
    if s.bundle.long_tailed:
        counts = class_counts(s.train_labels, s.n_classes)
        metrics.update(shot_group_metrics(test_pred, s.test_labels, counts))
        metrics.update(shot_group_sizes(counts))
    metrics.update(s.summary())
    metrics.update(extra or {})
    details = {"per_class_acc": (100 * per_class_accuracy(test_pred, s.test_labels, s.n_classes)).tolist()}
    status = sanity_status(metrics, [{"loss": c["train_loss"]} for c in curves if "train_loss" in c], s.n_classes)
    return TrialRecord(cfg.trial_id, cfg.model_dump(mode="json"), metrics, curves, status, details=details)
