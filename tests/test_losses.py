import math
import re

import pytest
import torch

from ptlab.losses import (
    LOSSES,
    cross_entropy,
    generalized_cross_entropy,
    make_loss,
    mean_absolute_error,
    nce_rce,
    normalized_cross_entropy,
    reverse_cross_entropy,
    symmetric_cross_entropy,
)

torch.set_num_threads(1)

# Logits [[2, 0, 0]]: softmax = [e^2, 1, 1] / (e^2 + 2) = [0.786986, 0.106507, 0.106507].
LOGITS = torch.tensor([[2.0, 0.0, 0.0]])
E2 = math.exp(2)
P_TOP = E2 / (E2 + 2)  # 0.786986
P_LOW = 1 / (E2 + 2)  # 0.106507
TOP, LOW = torch.tensor([0]), torch.tensor([1])
MINUS_LOG_CLAMP = -math.log(1e-4)  # 9.210340


def value(loss):
    return loss.item()


def test_cross_entropy_by_hand():
    assert value(cross_entropy(LOGITS, TOP)) == pytest.approx(-math.log(P_TOP), rel=1e-6)  # 0.239626
    assert value(cross_entropy(LOGITS, LOW)) == pytest.approx(-math.log(P_LOW), rel=1e-6)  # 2.239626


def test_gce_by_hand():
    # q = 0.5: (1 - sqrt(0.786986)) / 0.5 = (1 - 0.887122) / 0.5 = 0.225756
    assert value(generalized_cross_entropy(LOGITS, TOP, q=0.5)) == pytest.approx((1 - P_TOP**0.5) / 0.5, rel=1e-6)
    # q = 0.7, wrong class: (1 - 0.106507^0.7) / 0.7 = (1 - 0.208137) / 0.7 = 1.131233
    assert value(generalized_cross_entropy(LOGITS, LOW)) == pytest.approx((1 - P_LOW**0.7) / 0.7, rel=1e-6)


def test_gce_tends_to_ce_as_q_goes_to_zero():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.5, 3.0, -1.0], [-4.0, 4.0, 0.0]])
    targets = torch.tensor([0, 0, 0])
    ce = cross_entropy(logits, targets, "none")
    gaps = [(generalized_cross_entropy(logits, targets, q, "none") - ce).abs().max().item() for q in (0.5, 0.1, 1e-2)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert torch.allclose(generalized_cross_entropy(logits, targets, 1e-6, "none"), ce, rtol=1e-5)


def test_gce_with_q_one_is_mae():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(
        generalized_cross_entropy(logits, targets, 1.0, "none"), mean_absolute_error(logits, targets, "none"), atol=1e-7
    )


def test_gce_stays_within_the_released_codes_offset():
    # released code: (1 - (p_y + 1e-6)^q) / q; the two differ by at most 1e-6^q / q
    logits = torch.tensor([[0.0, 9.0, 18.0]])
    p_y = torch.softmax(logits, 1)[0, 0].item()
    released = (1 - (p_y + 1e-6) ** 0.7) / 0.7
    ours = value(generalized_cross_entropy(logits, TOP, q=0.7))
    assert abs(ours - released) <= 1e-6**0.7 / 0.7
    assert ours > released  # the offset only ever lowers the loss


def test_mae_by_hand():
    assert value(mean_absolute_error(LOGITS, TOP)) == pytest.approx(1 - P_TOP, rel=1e-6)  # 0.213014


def test_rce_by_hand():
    # -sum_k p_k log q_k with q = clamp(onehot(0), 1e-4): 0.786986*0 + 2 * 0.106507 * 9.210340 = 1.961929
    expected = -(P_TOP * math.log(1.0) + 2 * P_LOW * math.log(1e-4))
    assert value(reverse_cross_entropy(LOGITS, TOP)) == pytest.approx(expected, rel=1e-6)
    # target 1: (0.786986 + 0.106507) * 9.210340 = 8.229392
    assert value(reverse_cross_entropy(LOGITS, LOW)) == pytest.approx((P_TOP + P_LOW) * MINUS_LOG_CLAMP, rel=1e-6)


def test_sce_by_hand():
    # 0.1 * 0.239626 + 1.0 * 1.961929 = 1.985892
    expected = 0.1 * -math.log(P_TOP) + 1.0 * 2 * P_LOW * MINUS_LOG_CLAMP
    assert value(symmetric_cross_entropy(LOGITS, TOP)) == pytest.approx(expected, rel=1e-6)
    assert value(symmetric_cross_entropy(LOGITS, TOP, alpha=2.0, beta=0.0)) == pytest.approx(
        -2 * math.log(P_TOP), rel=1e-6
    )


def test_nce_by_hand():
    # -log p = [0.239626, 2.239626, 2.239626]; NCE = 0.239626 / 4.718878 = 0.050780
    minus_logs = [-math.log(P_TOP), -math.log(P_LOW), -math.log(P_LOW)]
    assert value(normalized_cross_entropy(LOGITS, TOP)) == pytest.approx(minus_logs[0] / sum(minus_logs), rel=1e-6)
    # uniform prediction: every -log p_k is log C, so NCE = 1/C
    assert value(normalized_cross_entropy(torch.zeros(1, 4), TOP)) == pytest.approx(0.25, rel=1e-6)


def test_nce_rce_by_hand():
    nce = -math.log(P_TOP) / (-math.log(P_TOP) - 2 * math.log(P_LOW))
    rce = 2 * P_LOW * MINUS_LOG_CLAMP
    assert value(nce_rce(LOGITS, TOP)) == pytest.approx(nce + rce, rel=1e-6)  # 0.050780 + 1.961929
    assert value(nce_rce(LOGITS, TOP, alpha=10.0, beta=0.1)) == pytest.approx(10 * nce + 0.1 * rce, rel=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_per_sample_losses_average_to_the_batch_loss(name):
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    targets = torch.tensor([0, 2])
    per_sample = make_loss(name, reduction="none")(logits, targets)
    assert per_sample.shape == (2,)
    assert per_sample[0].item() == pytest.approx(make_loss(name)(logits[:1], targets[:1]).item(), rel=1e-6)
    assert make_loss(name)(logits, targets).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gradients_are_finite_even_when_the_target_probability_underflows(name, dtype):
    # target 0 is 200 below class 1: p_y = e^-200 underflows to 0 in float32,
    # where d(p^q)/dp is infinite; the loss must still give a finite gradient
    logits = torch.tensor([[0.0, 200.0, -200.0], [1.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    loss = make_loss(name)(logits, torch.tensor([0, 0]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().sum() > 0


def test_make_loss_binds_parameters():
    logits = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, 0.5]])
    targets = torch.tensor([1, 0])
    assert torch.equal(make_loss("gce", q=1.0)(logits, targets), mean_absolute_error(logits, targets))
    assert torch.equal(
        make_loss("sce", alpha=0.5, beta=2.0)(logits, targets),
        symmetric_cross_entropy(logits, targets, alpha=0.5, beta=2.0),
    )
    assert torch.equal(make_loss("ce")(logits, targets), torch.nn.functional.cross_entropy(logits, targets))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("focal", {}, "unknown loss 'focal'"),
        ("ce", {"q": 0.5}, "takes no parameters"),
        ("gce", {"alpha": 0.5}, "takes q"),
        ("gce", {"q": 0.0}, "q: Input should be greater than 0"),
        ("gce", {"q": 1.5}, "q: Input should be less than or equal to 1"),
        ("ce", {"reduction": "sum"}, "reduction"),
    ],
)
def test_make_loss_rejects_unknown_names_and_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_loss(name, **params)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"logits \(N, C\)"):
        cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets \(N,\)"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_every_loss_choice_has_its_function_taking_exactly_its_parameters():
    import inspect

    from ptlab.config import LOSS_CHOICES
    from ptlab.losses import LOSSES

    assert set(LOSSES) == set(LOSS_CHOICES)
    for name, choice in LOSS_CHOICES.items():
        taken = set(inspect.signature(LOSSES[name]).parameters) - {"logits", "targets", "reduction"}
        assert taken == set(choice.model_fields) - {"name"}, name
        # the function's defaults are the choice's: a loss built without parameters is the default choice
        for param in taken:
            assert inspect.signature(LOSSES[name]).parameters[param].default == choice.model_fields[param].default


def test_a_loss_is_written_as_a_choice_with_its_parameters_or_flat():
    from ptlab.config import TrialConfig

    nested = TrialConfig(loss={"name": "gce", "q": 0.5})
    assert nested == TrialConfig(loss="gce", gce_q=0.5) and nested.trial_id == TrialConfig(loss="gce", gce_q=0.5).trial_id
    assert nested.loss_choice.params() == {"q": 0.5}
    assert TrialConfig(loss={"name": "sce"}).loss_choice.params() == {"alpha": 0.1, "beta": 1.0}
    for written, message in [({"name": "gce", "alpha": 1}, "loss.alpha: Extra inputs are not permitted (loss gce takes q)"),
                             ({"name": "gce", "q": 2}, "loss.q: Input should be less than or equal to 1"),
                             ({"q": 0.5}, "loss.name: None is not a loss; choose one of ce, gce")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrialConfig(loss=written)
