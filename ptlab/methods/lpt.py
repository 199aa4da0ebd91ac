"""Long-tailed prompt tuning (LPT, methods.md section 8) and single-stage VPT-deep.

Both train deep visual prompts on a frozen ViT with a cosine classifier; the
image encoder runs live on augmented pixels, since prompts change features.

  vpt  one stage: shared prompts + classifier.
  lpt  stage 1 is vpt with instance-balanced batches; stage 2 freezes the
       shared prompt and trains the group prompt pool, its keys and the
       classifier. Loss per batch:
       classification + key_weight * (1 - mean cosine(query, chosen keys)).
       The released code adds 0.5 * sum over the k chosen keys instead, the
       same term at k = 2.

Batches (ptlab.data.sampling), option `sampling` (vpt: of its one stage,
default instance; lpt: of stage 2, default dual): instance-balanced,
class-balanced, or dual: each step one class-balanced batch (weight 1) and
one instance-balanced batch (weight eta * (E - e) / E, e the 0-based epoch).

Stage 1 depends on fewer settings than the trial (not on the pool, top-k,
split block or stage-2 sampling), so its result is cached under
<cache>/lpt-stage1/ by a hash of exactly those settings; stage-2 trials that
share them train stage 1 once (a file lock makes parallel trials wait for
the first). Classification loss: A-GCL (ptlab.losses.agcl_loss) with
agcl=true, else the trial's `loss` on the scaled cosines. Stage 1 and
single-sampling runs use (gamma_pos, gamma_neg); the instance-balanced half
of dual sampling uses (gamma_pos_ib, gamma_neg_ib), as the released code does.

As in the released code, the image feature passes Dropout(feature_dropout,
default 0.1) before the cosine classifier while training, and images are
resized to 256 x 256 and centre-cropped to 224, bilinear, for evaluation,
with bilinear random-resized crops for training (transforms: release);
transforms: clip gives ptlab's CLIP views instead (shorter side 224, crop
224, bicubic), feature_dropout: 0 no dropout.

The published recipe is SGD lr 0.02 * batch / 256, momentum 0.9, weight decay
0.01, batch 256, cosine with one warm-up epoch (warm-up lr 1e-6), 90 epochs:
train.* settings of the trial (studies/lpt_places_lt.yaml spells them out).
`train.epochs` counts stage-2 epochs; stage1_epochs defaults to it.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptlab.config import TrialConfig
from ptlab.data.features import eval_transform, train_transform
from ptlab.data.fewshot import validation_indices
from ptlab.data.noise import NoisyLabels
from ptlab.data.sampling import ClassBalancedSampler, instance_batches
from ptlab.data.sources import DatasetBundle, Split, class_counts, load_dataset
from ptlab.files import atomic_save
from ptlab.losses import agcl_loss
from ptlab.methods.base import TrialContext, TrialRecord, sanity_status, shot_group_metrics, shot_group_sizes
from ptlab.methods.registry import LPTOptions, PromptOptions, Sampling
from ptlab.methods.schedule import epoch_lr, make_optimizer, set_lr
from ptlab.methods.supervision import noisy_training_set
from ptlab.methods.training import loss_for
from ptlab.metrics import FEW_SHOT_AT_MOST, accuracy, mean_per_class_accuracy, per_class_accuracy
from ptlab.models.vpt import PromptedViT, load_vision_tower

STAGE1_FORMAT = 2  # bump when stage-1 training changes what it computes (2: feature dropout, release transforms)
EVAL_BATCH = 256
STAGE2_ONLY = ("pool_size", "top_k", "split_block", "sampling", "per_class", "eta", "key_weight", "gamma_pos_ib",
               "gamma_neg_ib", "reuse_stage1", "workers")


@dataclass
class PromptedSetup:
    bundle: DatasetBundle
    train: NoisyLabels
    train_split: Split
    counts: np.ndarray  # training images per class, as trained on
    val: tuple[Split, np.ndarray] | None
    test: Split

    @property
    def n_classes(self) -> int:
        return self.bundle.n_classes


def prepare(cfg: TrialConfig) -> PromptedSetup:
    if cfg.noise_type == "confusion" and cfg.noise_rate > 0:
        raise ValueError("confusion noise needs zero-shot CLIP scores, which a visual-prompt recipe does not compute; "
                         "use symmetric, pair or ptnl noise")
    bundle = load_dataset(cfg.dataset, cfg.data)
    train = noisy_training_set(cfg, bundle, None, None)
    val = None
    if "val" in bundle.splits:
        split = bundle.split("val")
        val = split, validation_indices(split.labels, cfg.shots, cfg.seed, split.images.identity, cfg.data.val_shots)
    counts = class_counts(train.labels, bundle.n_classes)
    return PromptedSetup(bundle, train, bundle.split("train"), counts, val, bundle.split("test"))


class _Pixels(torch.utils.data.Dataset):
    """Transformed images by (index, seed); a seed makes the random transform a pure function of it."""

    def __init__(self, split: Split, transform, seeded: bool):
        self.split, self.transform, self.seeded = split, transform, seeded

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        image = self.split.images.load(index)
        if not self.seeded:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)


class PixelFeed:
    def __init__(self, tower, crop_scale: tuple[float, float], opts: PromptOptions, device: torch.device):
        if opts.transforms == "release":
            resize = tower.image_size * 8 // 7  # the release's square resize: 256 for a 224 crop
            self.eval_tf = eval_transform(tower, resize=resize, interpolation="bilinear")
            self.train_tf = train_transform(tower, crop_scale, interpolation="bilinear")
        else:
            self.eval_tf, self.train_tf = eval_transform(tower), train_transform(tower, crop_scale)
        self.workers, self.device = opts.workers, device

    def _load(self, dataset: _Pixels, batches: list[list[tuple[int, int]]]) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=torch.stack,
            pin_memory=self.device.type == "cuda",
        )
        for pixels in loader:
            yield pixels.to(self.device, non_blocking=True)

    def augmented(self, split: Split, batches: list[np.ndarray], rng: np.random.Generator) -> Iterator[torch.Tensor]:
        items = [list(zip(split_idx.tolist(), rng.integers(0, 2**62, len(split_idx)).tolist(), strict=True))
                 for split_idx in batches]
        return self._load(_Pixels(split, self.train_tf, seeded=True), items)

    def evaluation(self, split: Split, indices: np.ndarray) -> Iterator[torch.Tensor]:
        items = [[(int(i), 0) for i in indices[s : s + EVAL_BATCH]] for s in range(0, len(indices), EVAL_BATCH)]
        return self._load(_Pixels(split, self.eval_tf, seeded=False), items)


def shot_metrics(
    pred: np.ndarray, labels: np.ndarray, counts: np.ndarray, prefix: str = "", few_at_most: int = FEW_SHOT_AT_MOST
) -> dict[str, float]:
    """Overall, macro and many/medium/few-shot accuracy in percent (groups: ptlab.metrics.shot_groups)."""
    n_classes = len(counts)
    out = {
        f"{prefix}test_acc": 100 * accuracy(pred, labels),
        f"{prefix}test_macro_acc": 100 * mean_per_class_accuracy(pred, labels, n_classes),
    }
    out.update(shot_group_metrics(pred, labels, counts, prefix, few_at_most))
    return out


class PromptTrainer:
    """Trains one stage of a PromptedViT epoch by epoch; sampling and loss follow the options."""

    def __init__(self, cfg: TrialConfig, ctx: TrialContext, opts: PromptOptions, model: PromptedViT, setup: PromptedSetup):
        self.cfg, self.ctx, self.opts, self.model, self.setup = cfg, ctx, opts, model, setup
        self.feed = PixelFeed(model.tower, tuple(cfg.train.crop_scale), opts, ctx.device)
        self.plain_loss = loss_for(cfg)
        self.counts = torch.as_tensor(setup.counts, dtype=torch.float32)
        self.curves: list[dict[str, float]] = []

    def classification_loss(self, cosine, targets, gammas: tuple[float, float], generator) -> torch.Tensor:
        o = self.opts
        if o.agcl:
            return agcl_loss(cosine, targets, self.counts, generator=generator, gamma_pos=gammas[0],
                             gamma_neg=gammas[1], scale=o.scale, margin=o.margin, noise_mul=o.noise_mul,
                             smoothing=o.smoothing)
        return self.plain_loss(o.scale * cosine, targets)

    def _plan(self, rng: np.random.Generator, sampling: Sampling, epoch: int, epochs: int) -> list[list[tuple]]:
        """Per step: [(training positions, weight, gammas), ...]; as many steps as instance batches."""
        labels, batch = self.setup.train.labels, self.cfg.train.batch_size
        ib = instance_batches(len(labels), batch, rng)
        primary = (self.opts.gamma_pos, self.opts.gamma_neg)
        if sampling == "instance":
            return [[(b, 1.0, primary)] for b in ib]
        cb = ClassBalancedSampler(labels, rng, self.opts.per_class)
        if sampling == "class_balanced":
            return [[(cb.batch(batch), 1.0, primary)] for _ in ib]
        weight_ib = self.opts.eta * (epochs - epoch) / epochs
        secondary = (self.opts.gamma_pos_ib, self.opts.gamma_neg_ib)
        return [[(cb.batch(batch), 1.0, primary), (b, weight_ib, secondary)] for b in ib]

    def train_epoch(self, stage: int, epoch: int, epochs: int, optimizer, use_pool: bool, sampling: Sampling):
        s, device = self.setup, self.ctx.device
        lr = epoch_lr(epoch, self.cfg.train.model_copy(update={"epochs": epochs}))
        set_lr(optimizer, lr)
        self.model.train()
        rng = np.random.default_rng([self.cfg.seed, stage, epoch])
        noise = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        plan = self._plan(rng, sampling, epoch, epochs)
        pixels = self.feed.augmented(s.train_split, [s.train.indices[p] for step in plan for p, _, _ in step], rng)
        key_weight = self.opts.key_weight if use_pool else 0.0
        total_loss = total_key = 0.0
        correct = seen = 0
        for step in plan:
            optimizer.zero_grad(set_to_none=True)
            for k, (positions, weight, gammas) in enumerate(step):
                targets = torch.from_numpy(s.train.labels[positions]).to(device)
                cosine, key_loss = self.model(next(pixels), use_pool=use_pool, dropout_generator=noise)
                loss = weight * (self.classification_loss(cosine, targets, gammas, noise) + key_weight * key_loss)
                # One backward per batch: the gradient of the sum, with one batch's activations in memory.
                loss.backward()
                total_loss += float(loss.detach())
                if k == 0:
                    correct += int((cosine.detach().argmax(-1) == targets).sum())
                    seen += len(positions)
                    total_key += float(key_loss.detach())
            optimizer.step()
        steps = max(len(plan), 1)
        metrics = {"stage": stage, "train_loss": total_loss / steps, "train_acc": 100 * correct / max(seen, 1), "lr": lr}
        if use_pool:
            metrics["key_loss"] = total_key / steps
        return metrics

    @torch.no_grad()
    def predict(self, split: Split, indices: np.ndarray | None = None, use_pool: bool = False) -> np.ndarray:
        self.model.eval()
        indices = np.arange(len(split)) if indices is None else indices
        out = [self.model(px, use_pool=use_pool)[0].argmax(-1).cpu() for px in self.feed.evaluation(split, indices)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)

    def fit(self, stage: int, epochs: int, use_pool: bool, sampling: Sampling, optimizer, start: int = 0,
            epoch_offset: int = 0, extra_state: dict | None = None) -> bool:
        """Epochs start..epochs-1 of one stage, False if the loss diverged; checkpoints carry `extra_state`."""
        for epoch in range(start, epochs):
            metrics = self.train_epoch(stage, epoch, epochs, optimizer, use_pool, sampling)
            last = epoch + 1 == epochs
            if self.setup.val is not None and ((epoch + 1) % self.cfg.train.eval_every == 0 or last):
                split, idx = self.setup.val
                metrics["val_acc"] = 100 * accuracy(self.predict(split, idx, use_pool), split.labels[idx])

            def state(done: int = epoch + 1) -> dict:
                return copy.deepcopy({"stage": stage, "epoch": done, "model": self.model.trainable_state(),
                                      "optimizer": optimizer.state_dict(), "curves": self.curves, **(extra_state or {})})

            if not self.ctx.close_epoch(self.curves, metrics, epoch_offset + epoch + 1, state,
                                        where=f"stage {stage} epoch {epoch + 1}"):
                return False
        return True

    def test_metrics(self, use_pool: bool, prefix: str = "") -> tuple[dict[str, float], np.ndarray]:
        s = self.setup
        pred = self.predict(s.test, use_pool=use_pool)
        return shot_metrics(pred, s.test.labels, s.counts, prefix, self.opts.few_at_most), pred


def _resume_into(trainer: PromptTrainer, optimizer, state: dict) -> int:
    trainer.model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    trainer.curves = list(state["curves"])
    return int(state["epoch"])


def _record(cfg: TrialConfig, trainer: PromptTrainer, metrics: dict, pred: np.ndarray, timings: dict) -> TrialRecord:
    s = trainer.setup
    metrics.update(shot_group_sizes(s.counts, trainer.opts.few_at_most))
    metrics.update(train_size=float(len(s.train)), epochs_done=float(len(trainer.curves)))
    metrics["noise_realised"] = float(s.train.rate)
    for key in ("val_acc", "train_loss"):
        values = [c[key] for c in trainer.curves if key in c]
        if values:
            metrics[key] = values[-1]
    details = {"per_class_acc": (100 * per_class_accuracy(pred, s.test.labels, s.n_classes)).tolist(),
               "train_class_counts": s.counts.tolist()}
    status = sanity_status(metrics, [{"loss": c["train_loss"]} for c in trainer.curves], s.n_classes)
    return TrialRecord(cfg.trial_id, cfg.model_dump(mode="json"), metrics, trainer.curves, status, details=details, timings=timings)


def run_vpt(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    opts = cfg.options
    setup = prepare(cfg)
    tower = load_vision_tower(cfg.backbone, ctx.device, cfg.precision)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = PromptedViT(tower, setup.n_classes, opts.prompt_len, generator,
                        feature_dropout=opts.feature_dropout).to(ctx.device)
    trainer = PromptTrainer(cfg, ctx, opts, model, setup)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    start = _resume_into(trainer, optimizer, ctx.resume_state) if ctx.resume_state else 0
    began = time.perf_counter()
    trainer.fit(1, cfg.train.epochs, False, opts.sampling, optimizer, start)
    metrics, pred = trainer.test_metrics(use_pool=False)
    return _record(cfg, trainer, metrics, pred, {"train_s": round(time.perf_counter() - began, 3)})


def stage1_key(cfg: TrialConfig, opts: LPTOptions) -> str:
    """Hash of what stage 1 computes from: the trial without its stage-2 settings, device or evaluation cadence."""
    trial = cfg.canonical()
    for key in ("method", "method_options", "device"):
        trial.pop(key)
    for key in ("epochs", "eval_every"):
        trial["train"].pop(key)
    options = {k: v for k, v in opts.model_dump(mode="json").items() if k not in STAGE2_ONLY}
    options["stage1_epochs"] = stage1_epochs(cfg, opts)
    blob = json.dumps({"format": STAGE1_FORMAT, "trial": trial, "options": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def stage1_epochs(cfg: TrialConfig, opts: LPTOptions) -> int:
    return cfg.train.epochs if opts.stage1_epochs is None else opts.stage1_epochs


def _load_stage1(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file: train stage 1 again rather than trust it
        path.unlink(missing_ok=True)
        return None


def _stage1(cfg: TrialConfig, ctx: TrialContext, opts: LPTOptions, trainer: PromptTrainer) -> tuple[dict, bool]:
    """Stage-1 test metrics, and whether they came from the cache; leaves the stage-1 model in `trainer`."""
    model, epochs = trainer.model, stage1_epochs(cfg, opts)
    path = ctx.cache_dir / "lpt-stage1" / f"{stage1_key(cfg, opts)}.pt"

    def train_stage1() -> dict:
        optimizer = make_optimizer([model.shared, *model.classifier.parameters()], cfg.train)
        resume = ctx.resume_state if ctx.resume_state and ctx.resume_state["stage"] == 1 else None
        start = _resume_into(trainer, optimizer, resume) if resume else 0
        if not trainer.fit(1, epochs, False, "instance", optimizer, start):
            return {}
        metrics, _ = trainer.test_metrics(use_pool=False, prefix="stage1_")
        return metrics

    if not opts.reuse_stage1:
        return train_stage1(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _load_stage1(path)
        if cached is not None:
            model.load_state_dict(cached["state"], strict=False)
            trainer.curves = list(cached["curves"])
            return dict(cached["metrics"]), True
        metrics = train_stage1()
        if metrics:
            state = {k: v for k, v in model.trainable_state().items() if k == "shared" or k.startswith("classifier.")}
            saved = {"state": state, "curves": trainer.curves, "metrics": metrics}
            atomic_save(path, lambda handle: torch.save(saved, handle))
        return metrics, False


def run_lpt(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    opts = cfg.options
    setup = prepare(cfg)
    tower = load_vision_tower(cfg.backbone, ctx.device, cfg.precision)
    if opts.top_k > opts.pool_size:
        raise ValueError(f"method_options.top_k ({opts.top_k}) must not exceed pool_size ({opts.pool_size})")
    generator = torch.Generator().manual_seed(cfg.seed)
    model = PromptedViT(tower, setup.n_classes, opts.prompt_len, generator, opts.pool_size, opts.top_k,
                        opts.split_block, opts.feature_dropout).to(ctx.device)
    trainer = PromptTrainer(cfg, ctx, opts, model, setup)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    resume = ctx.resume_state
    if resume and resume["stage"] == 2:
        stage1_metrics, reused = dict(resume["stage1_metrics"]), bool(resume["stage1_reused"])
    else:
        stage1_metrics, reused = _stage1(cfg, ctx, opts, trainer)
    timings["stage1_s"] = round(time.perf_counter() - began, 3)
    if not stage1_metrics:  # stage 1 diverged: report it as the trial
        metrics, pred = trainer.test_metrics(use_pool=False)
        return _record(cfg, trainer, metrics, pred, timings)
    began = time.perf_counter()
    model.shared.requires_grad_(False)
    optimizer = make_optimizer([*model.pool.parameters(), *model.classifier.parameters()], cfg.train)
    start = _resume_into(trainer, optimizer, resume) if resume and resume["stage"] == 2 else 0
    trainer.fit(2, cfg.train.epochs, True, opts.sampling, optimizer, start, epoch_offset=stage1_epochs(cfg, opts),
                extra_state={"stage1_metrics": stage1_metrics, "stage1_reused": reused})
    metrics, pred = trainer.test_metrics(use_pool=True)
    metrics.update(stage1_metrics)
    timings["stage2_s"] = round(time.perf_counter() - began, 3)
    record = _record(cfg, trainer, metrics, pred, timings)
    record.details["stage1_reused"] = reused
    return record


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    return {"lpt": run_lpt, "vpt": run_vpt}[cfg.method](cfg, ctx)
