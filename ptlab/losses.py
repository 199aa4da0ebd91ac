"""Classification losses for training on noisy labels: CE, GCE, MAE, SCE, NCE+RCE.

Every loss takes logits (N, C) and integer targets (N,) and returns the
batch mean (reduction="mean") or one loss a sample (reduction="none"; the
gradient-ratio analysis needs per-sample losses). All are computed in
float32 from log_softmax, whatever the logits' precision, so half-precision
logits neither overflow the softmax nor lose the small probabilities.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

RCE_LOG_CLAMP = 1e-4  # SCE's clamp on the one-hot label: log 0 becomes log 1e-4
REDUCTIONS = ("mean", "none")


def _log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, C) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return F.log_softmax(logits.float(), dim=1)


def _target_log_prob(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _check_q(q: float) -> None:
    if not 0 < q <= 1:
        raise ValueError(f"GCE q must be in (0, 1], got {q}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    _check_reduction(reduction)
    return per_sample.mean() if reduction == "mean" else per_sample


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE = -log p_y."""
    return _reduce(-_target_log_prob(_log_probs(logits, targets), targets), reduction)


def generalized_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7, reduction: str = "mean"
) -> torch.Tensor:
    """GCE (Zhang & Sabuncu 2018) = (1 - p_y^q) / q, q in (0, 1]; q -> 0 is CE, q = 1 is MAE.

    p_y^q is evaluated as exp(q * log p_y) in float32. The released PTNL code
    adds 1e-6 to p_y before the power because d(p^q)/dp is infinite at p = 0,
    which half-precision softmax reaches; in log space the gradient,
    q * p_y^q * (onehot - p), stays finite with no offset, so none is added.
    The value differs from the released code's by at most 1e-6**q / q
    (9e-5 at q = 0.7), where p_y is near 0.
    """
    _check_q(q)
    log_p_y = _target_log_prob(_log_probs(logits, targets), targets)
    # -expm1(x) = 1 - e^x without the cancellation that makes small q lose CE's value
    return _reduce(-torch.expm1(q * log_p_y) / q, reduction)


def mean_absolute_error(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MAE = 1 - p_y (half the L1 distance between p and the one-hot label)."""
    log_p_y = _target_log_prob(_log_probs(logits, targets), targets)
    return _reduce(-torch.expm1(log_p_y), reduction)


def reverse_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """RCE = -sum_k p_k log q_k, q the one-hot label clamped to [1e-4, 1].

    log q_y = 0 and log q_k = log 1e-4 elsewhere, so RCE = -log(1e-4) * (1 - p_y).
    """
    log_p_y = _target_log_prob(_log_probs(logits, targets), targets)
    return _reduce(-math.log(RCE_LOG_CLAMP) * -torch.expm1(log_p_y), reduction)


def symmetric_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """SCE (Wang et al. 2019) = alpha * CE + beta * RCE."""
    per_sample = alpha * cross_entropy(logits, targets, "none") + beta * reverse_cross_entropy(logits, targets, "none")
    return _reduce(per_sample, reduction)


def normalized_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """NCE (Ma et al. 2020) = -log p_y / sum_k -log p_k, in [0, 1]."""
    log_probs = _log_probs(logits, targets)
    return _reduce(_target_log_prob(log_probs, targets) / log_probs.sum(dim=1), reduction)


def nce_rce(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, beta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """NCE+RCE (Ma et al. 2020, "active passive loss") = alpha * NCE + beta * RCE."""
    per_sample = alpha * normalized_cross_entropy(logits, targets, "none") + beta * reverse_cross_entropy(
        logits, targets, "none"
    )
    return _reduce(per_sample, reduction)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": cross_entropy,
    "gce": generalized_cross_entropy,
    "mae": mean_absolute_error,
    "sce": symmetric_cross_entropy,
    "nce_rce": nce_rce,
}


def make_loss(name: str, reduction: str = "mean", **params: float) -> Loss:
    """The loss `name` (ptlab.config.LOSS_CHOICES) with its parameters bound: loss(logits, targets).

    The parameters are judged by the loss's own typed model (names, bounds),
    so a bad name or value fails here, when the trial starts, not at its
    first batch.
    """
    from pydantic import ValidationError

    from ptlab.config import LOSS_CHOICES

    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    try:
        choice = LOSS_CHOICES[name].model_validate({"name": name, **params})
    except ValidationError as err:
        accepted = [p for p in LOSS_CHOICES[name].model_fields if p != "name"]
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"loss {name!r} takes {', '.join(accepted) or 'no parameters'}; {problems}") from None
    _check_reduction(reduction)
    return functools.partial(LOSSES[name], reduction=reduction, **choice.params())


# --- unsupervised objectives (no targets) ----------------------------------

ENTROPY_EPS = 1e-5  # UEO's offset inside the log, as in its paper and code


def entropy(probs: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """H(p) = -sum_k p_k log(p_k + eps) over the last dimension."""
    return -(probs * torch.log(probs + eps)).sum(dim=-1)


def ueo_objective(logits: torch.Tensor, weights: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
    """Universal entropy optimisation (Liang et al. 2024), methods.md section 7.

    L = sum_i w_i H(p_i) / sum_i w_i - lam * H(sum_i (p_i / w_i) / sum_i (1 / w_i)),
    p = softmax(logits). Confident (likely known-class) samples weigh more in
    the conditional entropy they minimise; unconfident (likely unknown) ones
    weigh more in the marginal whose entropy is maximised, which spreads them
    over the classes rather than forcing them into one. weights=None is
    uniform, the information-maximisation loss; lam=0 with uniform weights is
    plain entropy minimisation.
    """
    if logits.ndim != 2:
        raise ValueError(f"expected logits (N, C), got {tuple(logits.shape)}")
    probs = F.softmax(logits.float(), dim=1)
    if weights is None:
        weights = torch.ones(len(probs), device=probs.device)
    weights = weights.to(probs.device, torch.float32)
    if weights.shape != probs.shape[:1] or bool((weights <= 0).any()):
        raise ValueError(f"expected {len(probs)} positive weights, got shape {tuple(weights.shape)}")
    conditional = (weights * entropy(probs)).sum() / weights.sum()
    inverse = 1.0 / weights
    marginal = (inverse[:, None] * probs).sum(dim=0) / inverse.sum()
    return conditional - lam * entropy(marginal)


def agcl_loss(
    cosine: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    scale: float = 20.0,
    margin: float = 0.1,
    noise_mul: float = 0.5,
    smoothing: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    """A-GCL (LPT, methods.md section 8) on cosine logits (N, C) of a cosine classifier.

    Gaussian clouded logits: m_c = log n_max - log n_c; every cosine drops by
    noise_mul * |e| * m_c / max(m), e ~ N(0, 1/3) clipped to [-1, 1] (drawn
    from `generator` unless `noise` gives it); the target loses `margin`; the
    result is scaled by `scale`. Then the asymmetric focal loss with label
    smoothing eps: -sum_k q_k w_k log p_k with q = (1 - eps) onehot + eps / C,
    w_target = (1 - p_target)^gamma_pos, w_other = p_k^gamma_neg. The weights
    carry gradient, as in the released code. With balanced counts (max m = 0)
    the logits are not perturbed.
    """
    _check_reduction(reduction)
    if cosine.ndim != 2 or targets.shape != cosine.shape[:1]:
        raise ValueError(f"expected cosine (N, C) and targets (N,), got {tuple(cosine.shape)} and {tuple(targets.shape)}")
    cosine = cosine.float()
    counts = torch.as_tensor(class_counts, dtype=torch.float32, device=cosine.device).clamp(min=1)
    if counts.shape != cosine.shape[1:]:
        raise ValueError(f"expected {cosine.shape[1]} class counts, got shape {tuple(counts.shape)}")
    if noise is None:
        noise = (torch.randn(cosine.shape, generator=generator) / 3).clamp(-1, 1)
    log_counts = counts.log()
    margins = log_counts.max() - log_counts
    if margins.max() > 0:
        cosine = cosine - noise_mul * noise.to(cosine.device).abs() * margins / margins.max()
    onehot = F.one_hot(targets.long(), cosine.shape[1]).float()
    log_probs = F.log_softmax(scale * (cosine - margin * onehot), dim=1)
    # 1 - p as -expm1(log p), floored at the smallest float: a confident target's 1 - p rounds
    # to 0, where d/dp (1 - p)^gamma_pos is infinite and its product with log p = 0 is NaN.
    miss = (-torch.expm1(log_probs)).clamp_min(torch.finfo(log_probs.dtype).tiny)
    weights = torch.where(onehot.bool(), miss.pow(gamma_pos), log_probs.exp().pow(gamma_neg))
    smoothed = (1 - smoothing) * onehot + smoothing / cosine.shape[1]
    return _reduce(-(smoothed * weights * log_probs).sum(dim=1), reduction)
