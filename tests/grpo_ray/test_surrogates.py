"""grpo_ray.surrogates: the policy terms of cispo, sapo and vespo on hand-worked values (the
clipped surrogate's are in test_loss.py), and the metrics each loss_type reports."""

import math

import pytest
import torch

from grpo_ray.config import LOSS_TYPES, GRPOConfig
from grpo_ray.surrogates import cispo_surrogate, policy_term, sapo_surrogate, vespo_gamma_weights

D = torch.float64
LN = math.log


def t(rows):
    return torch.tensor(rows, dtype=D)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_cispo_hand_worked():
    # w = min(r, 1.2), detached: [1.1, 1.2, 0.5]; loss -w A logp with A = +1.
    coef = t([[1.1, 1.5, 0.5]]).requires_grad_(True)
    logps = t([[-1.0, -2.0, -0.5]]).requires_grad_(True)
    loss = cispo_surrogate(coef, t([[1.0]]), logps, 1.2)
    torch.testing.assert_close(loss, t([[1.1, 2.4, 0.25]]))
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, t([[-1.1, -1.2, -0.5]]))  # every token keeps a gradient
    assert coef.grad is None  # the weight is detached


def test_sapo_hand_worked():
    # f(r) = 4 / tau * sigmoid(tau (r - 1)); loss -f(r) A; tau_pos = 1 for A > 0, tau_neg = 2 else.
    # r = 1: f = 2 / tau, and df/dr = 4 sigmoid'(0) = 1 whatever tau (the unclipped slope).
    # r = 2, A = +1: f = 4 sigmoid(1);  r = 2, A = -1: f = 2 sigmoid(2); A = 0 uses tau_neg, loss 0.
    coef = t([[1.0, 2.0], [1.0, 2.0], [2.0, 2.0]]).requires_grad_(True)
    adv = t([[1.0], [-1.0], [0.0]])
    loss = sapo_surrogate(coef, adv, tau_pos=1.0, tau_neg=2.0)
    want = [[-2.0, -4 * sigmoid(1)], [1.0, 2 * sigmoid(2)], [0.0, 0.0]]
    torch.testing.assert_close(loss, t(want))
    loss.sum().backward()
    s1, s2 = sigmoid(1), sigmoid(2)
    # d/dr: -A * 4 sigmoid(tau (r-1)) (1 - sigmoid(tau (r-1)))
    torch.testing.assert_close(coef.grad, t([[-1.0, -4 * s1 * (1 - s1)], [1.0, 4 * s2 * (1 - s2)], [0.0, 0.0]]))


def phi(w, k, lam):
    return math.exp(lam) * w**k * math.exp(-lam * w)


def test_vespo_gamma_weights_hand_worked():
    # Row 0 (A = +1: k = 2, lambda = 3): w = 1.1 * 1.5 * 0.5 = 0.825.
    # Row 1 (A = -1: k = 3, lambda = 2): w = 0.5 * 1.5 = 0.75 (the padding's log-ratio 5 is ignored).
    # Row 2 (A = 0 counts as >= 0): a log-ratio of 30 is clamped to 20, log w to 20: phi = 0, not NaN.
    log_ratio = t([[LN(1.1), LN(1.5), LN(0.5)], [LN(0.5), LN(1.5), 5.0], [30.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    adv = t([[1.0], [-1.0], [0.0]])
    config = GRPOConfig()
    got = vespo_gamma_weights(log_ratio, mask, adv, None, config)
    torch.testing.assert_close(got, t([[phi(0.825, 2, 3)], [phi(0.75, 3, 2)], [0.0]]))
    # phi(1) = 1: on-policy sequences are weighted 1.
    assert vespo_gamma_weights(torch.zeros(1, 3, dtype=D), mask[:1], adv[:1], None, config).item() == pytest.approx(1.0)
    # The engine correction multiplies w (token ratios, summed in log space over every position);
    # a masked token (ratio 0) counts as 1e-8.
    engine = t([[1.0, 2.0, 1.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]])
    got = vespo_gamma_weights(log_ratio, mask, adv, engine, config)
    torch.testing.assert_close(got[:2], t([[phi(1.65, 2, 3)], [phi(0.375, 3, 2)]]))
    engine[0, 1] = 0.0
    got = vespo_gamma_weights(log_ratio, mask, adv, engine, config)
    torch.testing.assert_close(got[0], t([phi(0.825e-8, 2, 3)]))
    # Other (k, lambda).
    config = GRPOConfig(vespo_k_pos=1.0, vespo_lambda_pos=0.5, vespo_k_neg=0.5, vespo_lambda_neg=4.0)
    got = vespo_gamma_weights(log_ratio, mask, adv, None, config)
    torch.testing.assert_close(got[:2], t([[phi(0.825, 1.0, 0.5)], [phi(0.75, 0.5, 4.0)]]))


EXTRA = {"cispo": {"epsilon_high": 5.0}, "luspo": {"importance_sampling_level": "sequence"}}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_policy_term_metrics_per_loss_type(loss_type):
    # The metric names TRL 1.16 logs for each loss_type.
    config = GRPOConfig(loss_type=loss_type, vllm_importance_sampling_mode="token_mask", **EXTRA.get(loss_type, {}))
    logps = t([[-1.0, -2.0], [-0.5, -1.5]]).requires_grad_(True)
    mask = torch.ones(2, 2, dtype=D)
    log_ratio = logps - logps.detach()  # on-policy: r = 1, with a gradient
    per_token, coef, metrics = policy_term(config, logps, log_ratio, t([[1.0], [-1.0]]), mask, None)
    expected = {
        "cispo": {"cispo_clip_ratio"},
        "sapo": set(),
        "vespo": {"vespo/phi_seq_mean"},
    }.get(loss_type, {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"})
    assert set(metrics) == expected
    assert torch.all(coef == 1.0) and per_token.requires_grad
