"""Universal entropy optimisation (UEO) and its baselines under class shift.

Three recipes share one protocol (methods.md section 7): the prompt lists the
known classes of `data.scenario` (ptlab.data.shift), the unlabelled training
data holds the present classes, and the test split holds every class, the
unknown ones being out-of-distribution. Inductive by default (train split
adapted, test split held out); method_options.protocol: transductive is the
released code's protocol, adapting and testing on the same images.

  ueo           CoOp context (phrase-initialised) and the image encoder's
                normalisation affines trained on the UEO objective with
                static MCM weights
  entropy_min   the same training on the mean prediction entropy alone
  zeroshot_mcm  the untrained starting point: the phrase prompt, MCM scores

Metrics, in percent: accuracy and mean per-class accuracy on the test samples
of known classes (`test_acc`, `test_macro_acc`); AUROC of the MCM score
`max softmax(f_v @ f_t.T)` for known (positive) vs unknown test samples
(`auroc`); `weight_auroc`, the same AUROC on the unlabelled data under the
initial model, which says how well the MCM weights tell the unknown samples
apart.

The normalisation layers train, so image features cannot be cached: the
image encoder runs live on random-resized-crop + flip views (the evaluation
view with train.augment false). Only the initial model's features (the
weights and the epoch-0 evaluation) come from the feature cache, computed
before any parameter moves. The encoder stays in
eval mode throughout: BatchNorm normalises with its frozen running
statistics while its affine parameters learn, as in the released code.

The published recipe (PUBLISHED_RECIPE) differs from TrainConfig's CoOp
defaults; studies set it, and a trial that deviates from it says so in its
log. `train.scheduler: cosine` decays per iteration here, as the released
code steps its scheduler every batch. Logits are scaled by the model's own
logit scale, which is the published 100 for released CLIPs (the tiny world
CLIPs learned about 20).

method_options: ptlab.methods.registry's UeoOptions (ueo), EntropyMinOptions
(entropy_min) and ShiftProtocolOptions (zeroshot_mcm) say what each takes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ptlab.config import TrialConfig
from ptlab.data.features import encode_images, eval_transform, load_pixels, train_transform
from ptlab.data.fewshot import few_shot_indices
from ptlab.data.shift import UNKNOWN, ClassShift, class_shift
from ptlab.data.sources import DatasetBundle, ImageStore, Split, load_dataset
from ptlab.losses import ueo_objective
from ptlab.methods.base import TrialContext, TrialRecord, sanity_status
from ptlab.methods.coop import prompt_design
from ptlab.methods.schedule import iteration_lr, make_optimizer, set_lr
from ptlab.metrics import accuracy, auroc, mean_per_class_accuracy, per_class_accuracy
from ptlab.models.backbone import Backbone, load_backbone
from ptlab.models.prompt import PromptLearner

TRAINED_METHODS = ("ueo", "entropy_min")
ORACLE_FLOOR = 1e-3  # the released code's oracle weights: indicator(known) + 1e-3, so 1/w stays finite
EVAL_CHUNK = 256  # images loaded at once when encoding a split live

# The released code's defaults, as TrialConfig updates (50 epochs; the demo studies run 5).
PUBLISHED_RECIPE = {
    "ctx_init": "a photo of a",
    "train.epochs": 50,
    "train.batch_size": 64,
    "train.optimizer": "sgd",
    "train.lr": 1e-4,
    "train.momentum": 0.0,
    "train.weight_decay": 0.0,
    "train.scheduler": "cosine",
    "train.warmup_epochs": 0,
    "train.views": 0,
    "train.crop_scale": (0.5, 1.0),
}


@dataclass(frozen=True)
class Objective:
    """What the entropy objective trains and how it weighs samples; entropy_min is lambda 0 with uniform weights."""

    lam: float = 1.0
    weights: str = "mcm"
    include_downsample_bn: bool = False
    train_norms: bool = True

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> Objective:
        options = cfg.options
        lam, weights = (options.lam, options.weights) if cfg.method == "ueo" else (0.0, "uniform")
        return cls(lam, weights, options.include_downsample_bn, options.train_norms)


def norm_parameters(visual: nn.Module, include_downsample_bn: bool = False) -> dict[str, nn.Parameter]:
    """Affine parameters of the image encoder's BatchNorm and LayerNorm layers, by name."""
    found = {}
    for name, module in visual.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
            continue
        if not include_downsample_bn and "downsample" in name.split("."):
            continue
        for pname, param in module.named_parameters(recurse=False):
            found[f"{name}.{pname}"] = param
    if not found:
        raise ValueError(f"the image encoder ({type(visual).__name__}) has no BatchNorm or LayerNorm affine parameters")
    return found


def mcm_scores(cosines: torch.Tensor) -> torch.Tensor:
    """Maximum concept matching: the largest softmax of the cosines at temperature 1."""
    return F.softmax(cosines.float(), dim=-1).max(dim=-1).values


def shift_metrics(cosines: torch.Tensor, known_labels: np.ndarray) -> dict[str, float]:
    """Percent accuracy and mean per-class accuracy on known-class samples; AUROC of MCM, known vs unknown."""
    known = known_labels != UNKNOWN
    pred = cosines.argmax(dim=-1).cpu().numpy()
    n_known = cosines.shape[1]
    metrics = {
        "test_acc": 100 * accuracy(pred[known], known_labels[known]),
        "test_macro_acc": 100 * mean_per_class_accuracy(pred[known], known_labels[known], n_known),
    }
    if known.any() and not known.all():
        metrics["auroc"] = 100 * auroc(mcm_scores(cosines).cpu(), known)
    return metrics


@dataclass(frozen=True, eq=False)
class ConcatImages(ImageStore):
    """Several splits' images as one: the transductive protocol's whole dataset."""

    parts: tuple[ImageStore, ...]
    identity: str

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def load(self, index: int) -> Image.Image:
        for part in self.parts:
            if index < len(part):
                return part.load(index)
            index -= len(part)
        raise IndexError(f"image {index} beyond the {len(self)} of {self.identity}")


def whole_dataset(bundle: DatasetBundle) -> Split:
    """Every split of a dataset as one split, in the order train, val, test."""
    parts = [bundle.splits[name] for name in ("train", "val", "test") if name in bundle.splits]
    images = ConcatImages(tuple(p.images for p in parts), "+".join(p.images.identity for p in parts))
    return Split(np.concatenate([p.labels for p in parts]), images)


def protocol_of(cfg: TrialConfig) -> str:
    return cfg.options.protocol


@dataclass
class ShiftData:
    bundle: DatasetBundle
    shift: ClassShift
    train: Split  # the split the unlabelled data comes from
    test: Split
    pool: np.ndarray  # positions in `train` of the unlabelled data
    pool_known: np.ndarray  # their known-class labels (UNKNOWN for unknown classes); oracle weights and
    # weight_auroc read them, the objective never does
    test_known: np.ndarray

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> ShiftData:
        bundle = load_dataset(cfg.dataset, cfg.data)
        shift = class_shift(bundle, cfg.data.scenario, cfg.data.class_split)
        if protocol_of(cfg) == "transductive":
            train = test = whole_dataset(bundle)
        else:
            train, test = bundle.split("train"), bundle.split("test")
        # The K-shot cap is drawn over the whole split, then filtered: a present
        # class keeps the same images in every scenario.
        pool = few_shot_indices(train.labels, cfg.shots, cfg.seed, train.images.identity)
        pool = pool[shift.present_positions(train.labels[pool])]
        if len(pool) == 0:
            raise ValueError(f"no unlabelled training images of the present classes of {cfg.dataset}")
        return cls(bundle, shift, train, test, pool, shift.known_labels(train.labels[pool]),
                   shift.known_labels(test.labels))

    @property
    def known_classnames(self) -> list[str]:
        return [self.bundle.classnames[c] for c in self.shift.known]


def _cosines(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    return F.normalize(image_features.float(), dim=-1) @ text_features.to(image_features.device).T


@torch.no_grad()
def encode_live(backbone: Backbone, split, indices: np.ndarray) -> torch.Tensor:
    """Features of the current (possibly adapted) encoder, evaluation view, loaded in chunks."""
    transform = eval_transform(backbone)
    parts = [encode_images(backbone, load_pixels(split, indices[s : s + EVAL_CHUNK], transform))
             for s in range(0, len(indices), EVAL_CHUNK)]
    return torch.cat(parts)


def _check_setup(cfg: TrialConfig, ctx: TrialContext) -> None:
    if not cfg.ctx_init:
        raise ValueError(f"method {cfg.method!r} starts from a zero-shot prompt: set ctx_init "
                         f"(published: {PUBLISHED_RECIPE['ctx_init']!r})")
    if cfg.method not in TRAINED_METHODS:
        return
    if cfg.train.views != 0:
        raise ValueError(f"method {cfg.method!r} trains the image encoder's normalisation layers, so its features "
                         "cannot be cached: set train.views: 0 (live augmentation)")
    if cfg.precision != "fp32":
        raise ValueError(f"method {cfg.method!r} trains in fp32: steps of lr 1e-4 vanish below half precision's "
                         "resolution of the normalisation weights; set precision: fp32")
    current = cfg.canonical()
    differ = []
    for path, value in PUBLISHED_RECIPE.items():
        node = current
        for part in path.split("."):
            node = node[part]
        if node != (list(value) if isinstance(value, tuple) else value):
            differ.append(f"{path}={node!r} (published {value!r})")
    if differ:
        ctx.log(f"{cfg.method}: differs from the published recipe in {', '.join(differ)}")


class UeoTrainer:
    """The shared protocol: setup, initial evaluation, training steps, final record."""

    def __init__(self, cfg: TrialConfig, ctx: TrialContext):
        _check_setup(cfg, ctx)
        self.cfg, self.ctx = cfg, ctx
        self.options = Objective.from_config(cfg) if cfg.method in TRAINED_METHODS else None
        self.data = ShiftData.from_config(cfg)
        self.backbone = load_backbone(cfg.backbone, ctx.device, cfg.precision)
        self.backbone.model.eval()  # BatchNorm keeps its running statistics frozen for the whole run
        self.learner = PromptLearner(
            self.backbone, self.data.known_classnames, prompt_design(cfg), torch.Generator().manual_seed(cfg.seed)
        )
        self.scale = self.backbone.model.logit_scale.exp().detach().float()
        self.train_split, self.test_split = self.data.train, self.data.test
        # Everything read from the cache is the initial encoder's: read it all before any step.
        cache = ctx.feature_cache(self.backbone)
        with torch.no_grad():
            text = self.learner()
            self.test_cosines = _cosines(cache.features(self.test_split), text)
            self.initial = shift_metrics(self.test_cosines, self.data.test_known)
            if self.options is not None:
                pool_cosines = _cosines(cache.features(self.train_split, self.data.pool), text)
        self.curves: list[dict[str, float]] = []
        self.start_epoch = 0
        if self.options is None:
            return
        mcm = mcm_scores(pool_cosines)
        pool_is_known = self.data.pool_known != UNKNOWN
        self.weight_auroc = 100 * auroc(mcm, pool_is_known) if pool_is_known.any() and not pool_is_known.all() else None
        self.weights = self._weights(mcm, pool_is_known)
        self.norms = norm_parameters(self.backbone.model.visual, self.options.include_downsample_bn)
        for param in self.norms.values():
            param.requires_grad_(self.options.train_norms)
        self.trainable = {f"prompt.{n}": p for n, p in self.learner.named_parameters()}
        self.trainable.update({f"visual.{n}": p for n, p in self.norms.items()})
        self.optimizer = make_optimizer(self.trainable.values(), cfg.train)
        self.transform = (
            train_transform(self.backbone, tuple(cfg.train.crop_scale)) if cfg.train.augment else eval_transform(self.backbone)
        )
        self.rng = np.random.default_rng([cfg.seed, 0x0E0])
        self.steps_per_epoch = math.ceil(len(self.data.pool) / cfg.train.batch_size)
        self.step_count = 0
        self.evaluated_at = 0  # step of the model that test_cosines belong to
        if ctx.resume_state:
            self._restore(ctx.resume_state)

    def _weights(self, mcm: torch.Tensor, pool_is_known: np.ndarray) -> torch.Tensor:
        if self.options.weights == "uniform":
            return torch.ones(len(mcm))
        if self.options.weights == "oracle":
            return torch.from_numpy(pool_is_known.astype(np.float32)) + ORACLE_FLOOR
        return mcm

    def cosines(self, image_features: torch.Tensor) -> torch.Tensor:
        return _cosines(image_features, self.learner())

    def step(self, positions: np.ndarray) -> float:
        """One optimiser step on the pool samples at `positions` (random augmented views)."""
        total = self.cfg.train.epochs * self.steps_per_epoch
        warmup = self.cfg.train.warmup_epochs * self.steps_per_epoch
        set_lr(self.optimizer, iteration_lr(self.step_count, total, warmup, self.cfg.train))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.integers(0, 2**62)))
            pixels = load_pixels(self.train_split, self.data.pool[positions], self.transform)
        visual_dtype = next(self.backbone.model.visual.parameters()).dtype
        features = self.backbone.model.encode_image(pixels.to(self.ctx.device, visual_dtype))
        logits = self.scale * self.cosines(features)
        loss = ueo_objective(logits, self.weights[torch.from_numpy(positions)].to(logits.device), self.options.lam)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            features = encode_live(self.backbone, self.test_split, np.arange(len(self.test_split)))
            self.test_cosines = self.cosines(features)
        self.evaluated_at = self.step_count
        return shift_metrics(self.test_cosines, self.data.test_known)

    def fit(self) -> None:
        train = self.cfg.train
        for epoch in range(self.start_epoch, train.epochs):
            order = self.rng.permutation(len(self.data.pool))
            losses = [self.step(order[s : s + train.batch_size]) for s in range(0, len(order), train.batch_size)]
            metrics = {"train_loss": float(np.mean(losses)), "lr": self.optimizer.param_groups[0]["lr"]}
            if (epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs:
                metrics.update(self.evaluate())
            if not self.ctx.close_epoch(self.curves, metrics, epoch + 1, lambda done=epoch + 1: self._state(done)):
                break

    def _state(self, epoch: int) -> dict:
        # Deep copy: the live tensors and lists keep changing after this call returns.
        return copy.deepcopy({
            "trainable": {n: p.detach() for n, p in self.trainable.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "epoch": epoch,
            "step": self.step_count,
            "curves": self.curves,
        })

    def _restore(self, state: dict) -> None:
        with torch.no_grad():
            for name, value in state["trainable"].items():
                self.trainable[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.start_epoch, self.step_count = int(state["epoch"]), int(state["step"])
        self.curves = list(state["curves"])

    def finish(self) -> TrialRecord:
        trained = self.options is not None
        metrics = self.evaluate() if trained and self.evaluated_at != self.step_count else shift_metrics(
            self.test_cosines, self.data.test_known)
        if self.curves:
            metrics["train_loss"] = self.curves[-1]["train_loss"]
        shift = self.data.shift
        metrics.update(n_known=float(len(shift.known)), n_present=float(len(shift.present)))
        if trained:
            metrics.update(epochs_done=float(len(self.curves)), train_size=float(len(self.data.pool)))
            if self.weight_auroc is not None:
                metrics["weight_auroc"] = self.weight_auroc
        pred = self.test_cosines.argmax(-1).cpu().numpy()
        known = self.data.test_known != UNKNOWN
        per_class = 100 * per_class_accuracy(pred[known], self.data.test_known[known], len(shift.known))
        details = {
            "classes": shift.describe(self.data.bundle.classnames),
            "per_class_acc": per_class.tolist(),
            "initial": self.initial,
        }
        losses = [{"loss": c["train_loss"]} for c in self.curves]
        status = sanity_status(metrics, losses, len(shift.known))
        return TrialRecord(self.cfg.trial_id, self.cfg.model_dump(mode="json"), metrics, self.curves, status, details=details)


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    trainer = UeoTrainer(cfg, ctx)
    if trainer.options is not None:
        trainer.fit()
    return trainer.finish()
