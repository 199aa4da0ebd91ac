"""Linear probe: L2-regularised multinomial logistic regression on frozen image features.

The CLIP paper's protocol (appendix A.3) as CoOp's released linear-probe
code runs it: features of the evaluation view (no augmentation, not
normalised), scikit-learn's objective `C * sum_i CE_i + ||W||^2 / 2` with an
unpenalised bias, solved by L-BFGS (at most 1000 iterations), and the
strength C chosen on the validation split: first the coarse grid
10^-6, 10^-4, ..., 10^6, then the log-interval one decade either side of the
coarse peak is halved `search_steps` times (8), keeping the better end.

Here the objective is divided by C * N (same minimiser) so that one gradient
tolerance fits every C and dataset size, the solver runs in float64 from
zero weights, and so the whole search is deterministic. Of every C tried, the
one with the best validation accuracy wins, ties going to the smaller C (the
simpler model), since few-shot validation sets tie often.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptlab.config import TrialConfig
from ptlab.methods.base import TrialContext, TrialRecord
from ptlab.methods.registry import LinearProbeOptions
from ptlab.methods.supervision import prepare_supervised
from ptlab.methods.training import trial_record
from ptlab.metrics import accuracy

COARSE_LOG10_C = (-6, -4, -2, 0, 2, 4, 6)
MAX_ITER = 1000
# Far below scikit-learn's 1e-4: the test is on the absolute gradient, and with
# features of small norm the gradient at the zero start is already below 1e-4.
GRAD_TOLERANCE = 1e-7


@dataclass
class LogisticRegression:
    weight: torch.Tensor  # (C, E) float64
    bias: torch.Tensor  # (C,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.device, torch.float64) @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor):
        return self.logits(features).argmax(-1).cpu().numpy()


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, c: float, max_iter: int = MAX_ITER
) -> LogisticRegression:
    """Minimise mean CE + ||W||^2 / (2 C N) over W and an unpenalised bias, from zeros."""
    x = features.to(torch.float64)
    y = labels.to(x.device, torch.long)
    # Solved for W = scale * V: with scale^2 = C N below 1 the penalty on V has unit
    # curvature, like the bias, where on W it would be 1 / (C N), up to 1e6 times
    # the bias's, which stalls L-BFGS long before the optimum. Same minimiser.
    scale = min(1.0, (c * len(x)) ** 0.5)
    penalty = scale**2 / (2.0 * c * len(x))
    v = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    solver = torch.optim.LBFGS(
        [v, bias], lr=1, max_iter=max_iter, tolerance_grad=GRAD_TOLERANCE, tolerance_change=1e-12,
        history_size=10, line_search_fn="strong_wolfe",
    )

    def objective():
        solver.zero_grad()
        loss = F.cross_entropy(scale * x @ v.T + bias, y) + penalty * (v**2).sum()
        loss.backward()
        return loss

    solver.step(objective)
    return LogisticRegression(scale * v.detach(), bias.detach())


def search_log10_c(val_accuracy: Callable[[float], float], steps: int = LinearProbeOptions.model_fields["search_steps"].default) -> tuple[float, dict[float, float]]:
    """The log10 C of best validation accuracy, and every log10 C tried with its accuracy."""
    tried: dict[float, float] = {}

    def score(log_c: float) -> float:
        if log_c not in tried:
            tried[log_c] = val_accuracy(10.0**log_c)
        return tried[log_c]

    def best(candidates) -> float:
        return max(sorted(candidates), key=score)  # max keeps the first of ties: the smallest C

    peak = best(COARSE_LOG10_C)
    low, high = peak - 1.0, peak + 1.0
    for _ in range(steps):
        middle = 0.5 * (low + high)
        if score(high) > score(low):
            low = middle
        else:
            high = middle
    return best(tried), tried


def run(cfg: TrialConfig, ctx: TrialContext) -> TrialRecord:
    setup = prepare_supervised(cfg, ctx, augment=False)
    if setup.val_features is None:
        raise ValueError(f"the linear probe chooses C on a validation split, and {cfg.dataset} has none")
    device = ctx.device
    train_x = setup.train_views[0].to(device)
    train_y = torch.tensor(setup.train_labels, device=device)
    val_x = setup.val_features.to(device)
    fits: dict[float, LogisticRegression] = {}

    def val_accuracy(c: float) -> float:
        fits[c] = fit_logistic_regression(train_x, train_y, setup.n_classes, c)
        return 100 * accuracy(fits[c].predict(val_x), setup.val_labels)

    steps = cfg.options.search_steps
    log_c, tried = search_log10_c(val_accuracy, steps)
    probe = fits[10.0**log_c]
    train_pred = probe.predict(train_x)
    extra = {
        "val_acc": tried[log_c],
        "lp_log10_c": log_c,
        "train_acc_noisy": 100 * accuracy(train_pred, setup.train_labels),
        "train_acc_true": 100 * accuracy(train_pred, setup.train_true_labels),
    }
    ctx.log(f"linear probe: C = 10^{log_c:.3f} (val {tried[log_c]:.2f}%) after {len(tried)} fits")
    record = trial_record(cfg, setup, probe.predict(setup.test_features), [], extra)
    record.details["c_search"] = [[10.0**k, v] for k, v in sorted(tried.items())]
    return record
