"""Noisy/clean gradient-norm ratio (PTNL section 4, methods.md section 5).

Each epoch the trainable parameters' gradient is taken on a group of
mislabelled training samples and on an equally large group of correctly
labelled ones, with the trial's own loss; the ratio of the two L2 norms says
which group drives the update (> 1: the noisy samples dominate).

The probe only reads: it uses torch.autograd.grad, never the parameters'
.grad, and draws from its own generators, so a trial measured and a trial not
measured train identically.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ptlab.config import TrialConfig
from ptlab.data.fewshot import lowest_keys_per_class, random_keys, seeded_generator
from ptlab.methods.registry import GRAD_RATIO_GROUP


def gradient_norm(model: torch.nn.Module, loss_fn, features: torch.Tensor, labels: torch.Tensor) -> float:
    """L2 norm, over all trainable parameters together, of the gradient of the mean loss of one group."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(features), labels)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def gradient_norm_ratio(
    model: torch.nn.Module,
    loss_fn,
    clean: tuple[torch.Tensor, torch.Tensor],
    noisy: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, float]:
    """grad_ratio = |grad noisy| / |grad clean|, with both norms; groups are (features, given labels)."""
    clean_norm = gradient_norm(model, loss_fn, *clean)
    noisy_norm = gradient_norm(model, loss_fn, *noisy)
    ratio = noisy_norm / clean_norm if clean_norm > 0 else float("inf")
    return {"grad_ratio": ratio, "grad_norm_clean": clean_norm, "grad_norm_noisy": noisy_norm}


class GradientRatioProbe:
    """The two groups of one trial, fixed for the whole run, and their per-epoch measurement.

    `setup` is a SupervisedSetup (or anything with `train` NoisyLabels and
    `train_batch(positions, rng)`). The groups are the same samples every
    epoch, so the curve follows the model rather than the sample; each epoch
    draws fresh augmented views, as training does.
    """

    def __init__(self, setup, seed: int, group_size: int = GRAD_RATIO_GROUP):
        self.setup, self.seed = setup, seed
        wrong = np.asarray(setup.train.is_noisy)
        n = min(group_size, int(wrong.sum()), int((~wrong).sum()))
        keys = random_keys(seeded_generator("grad-ratio", seed, len(wrong)), len(wrong))
        # Two "classes", noisy (1) and clean (0); each keeps its n lowest-keyed samples.
        chosen = lowest_keys_per_class(wrong.astype(np.int64), keys, np.array([n, n]))
        self.clean = chosen[~wrong[chosen]]
        self.noisy = chosen[wrong[chosen]]

    @property
    def size(self) -> int:
        return len(self.noisy)

    @classmethod
    def for_trial(cls, cfg: TrialConfig, setup, log: Callable[[str], None]) -> GradientRatioProbe | None:
        """The probe when `method_options.grad_ratio` asks for it and both groups have samples."""
        options = cfg.options
        if not options.grad_ratio:
            return None
        probe = cls(setup, cfg.seed, options.grad_ratio_samples)
        if probe.size == 0:
            log("grad_ratio: the training set has no clean or no mislabelled sample; nothing to measure")
            return None
        return probe

    def measure(self, model: torch.nn.Module, loss_fn, epoch: int, device: torch.device) -> dict[str, float]:
        rng = np.random.default_rng([self.seed, 0x6AD, epoch])
        groups = []
        for positions in (self.clean, self.noisy):
            features = self.setup.train_batch(positions, rng).to(device)
            labels = torch.from_numpy(np.asarray(self.setup.train.labels)[positions]).to(device)
            groups.append((features, labels))
        return gradient_norm_ratio(model, loss_fn, *groups)
