"""grpo_ray.loss: hand-worked values for every loss_type and knob, row slices of a micro-batch,
gradchecks in float64, and a cross-check of value, gradient (to the logprobs and, with an entropy
bonus, to the entropies) and metrics against TRL 1.16's real ``GRPOTrainer._compute_loss`` for
every knob and combination it allows, and of the adaptive entropy controller
(grpo_ray.entropy_control) against TRL's over several optimizer steps."""

import dataclasses
import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from grpo_ray.config import LOSS_TYPES, GRPOConfig
from grpo_ray.entropy_control import EntropyControl
from grpo_ray.loss import (
    ENTROPY_SUM, ENTROPY_TOKENS, grpo_loss, mask_truncated_completions, needs_whole_micro_batch,
    truncated_completions,
)

D = torch.float64
LN = math.log


def t(rows):
    return torch.tensor(rows, dtype=D)


# --- the hand-worked token-level case ----------------------------------------------------------
#
# B = 2 completions, T = 3 tokens; completion 1 has only 2 tokens (mask [1, 1, 0]).
# advantages A = [+1, -1]; the policy moved away from the old policy by the ratios
#     r = exp(logp - old) = [[1.1, 1.5, 0.5],
#                            [0.5, 1.5, (1.0, padding)]]
# With epsilon = 0.2 (clip range [0.8, 1.2]) the per-token loss is -min(r*A, clip(r)*A):
#   row 0, A = +1:  r=1.1 -> -1.1;  r=1.5 -> -min(1.5, 1.2) = -1.2 (high-clipped);  r=0.5 -> -min(0.5, 0.8) = -0.5
#   row 1, A = -1:  r=0.5 -> -min(-0.5, -0.8) = 0.8 (low-clipped);  r=1.5 -> -min(-1.5, -1.2) = 1.5
# Row sums: -2.8 over 3 tokens, 2.3 over 2 tokens; all 5 tokens: -0.5.
#   grpo    = mean(-2.8/3, 2.3/2) = (-0.933333 + 1.15) / 2 = 0.108333...
#   bnpo    = -0.5 / 5 = -0.1
#   dapo    = -0.5 / num_items_in_batch (None -> 5 tokens -> -0.1; 10 -> -0.05)
#   dr_grpo = -0.5 / (B * max_completion_length) = -0.5 / (2 * 4) = -0.0625
# Clip ratios: low 1/5, high 1/5, region 2/5.
# Gradient (bnpo, / 5): an unclipped token's loss is -r*A, so d/dlogp = -r*A/5; a clipped one is flat:
#   [[-1.1/5, 0, -0.5/5], [0, 1.5/5, 0]] = [[-0.22, 0, -0.1], [0, 0.3, 0]].

OLD = t([[-1.0, -2.0, -0.5], [-1.5, -0.7, -1.0]])
LOG_RATIO = t([[LN(1.1), LN(1.5), LN(0.5)], [LN(0.5), LN(1.5), 0.0]])
ADV = t([1.0, -1.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def run(config, *, log_ratio=LOG_RATIO, old=OLD, adv=ADV, mask=MASK, **kwargs):
    ref = kwargs.pop("ref", None)
    logps = (old + log_ratio).clone().requires_grad_(True)
    loss, metrics = grpo_loss(logps, old, ref, adv, mask, config, **kwargs)
    loss.backward()
    return loss.item(), logps.grad, metrics


def cfg(**kw):
    kw.setdefault("max_completion_length", 4)
    return GRPOConfig(**kw)


# What each loss_type needs besides its name to be a valid config.
VALID = {lt: {} for lt in LOSS_TYPES} | {
    "cispo": {"epsilon_high": 5.0},
    "luspo": {"importance_sampling_level": "sequence"},
    "vespo": {"vllm_importance_sampling_mode": "token_truncate"},
}


@pytest.mark.parametrize(
    "loss_type, kwargs, expected",
    [
        ("grpo", {}, (-2.8 / 3 + 2.3 / 2) / 2),
        ("bnpo", {}, -0.1),
        ("dapo", {}, -0.1),
        ("dapo", {"num_items_in_batch": 10}, -0.05),
        ("dapo", {"num_items_in_batch": torch.tensor(10.0)}, -0.05),
        ("dr_grpo", {}, -0.0625),
    ],
)
def test_each_loss_type_hand_worked(loss_type, kwargs, expected):
    loss, _, metrics = run(cfg(loss_type=loss_type), **kwargs)
    assert loss == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(0.2)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(0.2)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(0.4)
    assert "kl" not in metrics and "entropy" not in metrics and "is_ratio_mean" not in metrics


def test_gradient_hand_worked():
    _, grad, _ = run(cfg(loss_type="bnpo"))
    torch.testing.assert_close(grad, t([[-0.22, 0.0, -0.1], [0.0, 0.3, 0.0]]))
    # grpo: per-row means. Row 0 divides by 3 and by B=2, row 1 by 2 and by B=2:
    # [[-1.1/6, 0, -0.5/6], [0, 1.5/4, 0]]
    _, grad, _ = run(cfg(loss_type="grpo"))
    torch.testing.assert_close(grad, t([[-1.1 / 6, 0.0, -0.5 / 6], [0.0, 1.5 / 4, 0.0]]))


def test_clip_higher_hand_worked():
    # epsilon_high = 0.28: the range is [0.8, 1.28]. Only row 0's r=1.5 (A>0) changes:
    # -min(1.5, 1.28) = -1.28 instead of -1.2. Row sums -2.88 and 2.3 -> bnpo (-0.58)/5 = -0.116.
    loss, _, metrics = run(cfg(loss_type="bnpo", epsilon_high=0.28))
    assert loss == pytest.approx(-0.116, abs=1e-12)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(0.2)  # 1.5 > 1.28 still counts


def test_two_sided_delta_hand_worked():
    # delta = 1.3 caps the unclipped ratio: row 1's r=1.5 with A=-1 becomes -min(-1.3, -1.2) = 1.3
    # (it was 1.5). Row 0's r=1.5 stays -min(1.3, 1.2) = -1.2. Sum -2.8 + 2.1 = -0.7 -> bnpo -0.14.
    # The capped token no longer has a gradient: row 1 token 1's 0.3 becomes 0.
    loss, grad, _ = run(cfg(loss_type="bnpo", delta=1.3))
    assert loss == pytest.approx(-0.14, abs=1e-12)
    torch.testing.assert_close(grad, t([[-0.22, 0.0, -0.1], [0.0, 0.0, 0.0]]))


def test_kl_k3_with_beta_hand_worked():
    # ref = logp everywhere but token (0, 0), where ref - logp = ln 2:
    # k3 = exp(ln 2) - ln 2 - 1 = 1 - ln 2 = 0.30685..., added to that token's loss times beta = 0.1.
    # bnpo = (-0.5 + 0.1 * (1 - ln 2)) / 5. KL metric: (1 - ln 2) / 5 (mean over the 5 tokens).
    # Its gradient: d/dlogp beta*(exp(ref-logp) - (ref-logp) - 1) = beta*(1 - exp(ref-logp)) = -0.1,
    # so token (0, 0)'s gradient becomes (-1.1 - 0.1) / 5 = -0.24.
    ref = OLD + LOG_RATIO
    ref[0, 0] += LN(2)
    loss, grad, metrics = run(cfg(loss_type="bnpo", beta=0.1, use_bias_correction_kl=False), ref=ref)
    assert loss == pytest.approx((-0.5 + 0.1 * (1 - LN(2))) / 5, abs=1e-12)
    assert metrics["kl"].item() == pytest.approx((1 - LN(2)) / 5)
    assert grad[0, 0].item() == pytest.approx(-0.24)


@pytest.mark.parametrize(
    "estimator, kl, dkl, dkl0",
    [
        # x = ref - logp = ln 2 at token (0, 0), 0 elsewhere (every estimator is 0 there).
        # dkl: d/dlogp at x = ln 2; dkl0: at x = 0 (only k1 has a slope there).
        ("k3", 1 - LN(2), 1 - 2.0, 0.0),  # d/dlogp (e^x - x - 1) = -(e^x - 1)
        ("k2", LN(2) ** 2 / 2, -LN(2), 0.0),  # d/dlogp x^2 / 2 = -x
        ("k1", -LN(2), 1.0, 1.0),  # d/dlogp -x = 1
    ],
)
@pytest.mark.parametrize("bias_correction", [False, True])
def test_kl_estimators_and_bias_correction_hand_worked(estimator, kl, dkl, dkl0, bias_correction):
    # Without bias correction: loss (-0.5 + 0.1 kl) / 5, gradient at (0, 0) (-1.1 + 0.1 dkl) / 5.
    # With it (DeepSeek-V3.2), each token's KL is multiplied by its r (1.1 at (0, 0), 1.5 at
    # (0, 1)), and r carries a gradient (dr/dlogp = r): d/dlogp (r kl) = r dkl + r kl.
    ref = OLD + LOG_RATIO
    ref[0, 0] += LN(2)
    config = cfg(loss_type="bnpo", beta=0.1, kl_estimator=estimator, use_bias_correction_kl=bias_correction)
    loss, grad, metrics = run(config, ref=ref)
    r00, r01 = (1.1, 1.5) if bias_correction else (1.0, 1.0)
    assert loss == pytest.approx((-0.5 + 0.1 * r00 * kl) / 5, abs=1e-12)
    assert metrics["kl"].item() == pytest.approx(r00 * kl / 5, abs=1e-12)
    dterm = r00 * dkl + (r00 * kl if bias_correction else 0.0)
    assert grad[0, 0].item() == pytest.approx((-1.1 + 0.1 * dterm) / 5, abs=1e-12)
    # (0, 1): r = 1.5 is clipped (no policy gradient) and the KL is 0 there.
    assert grad[0, 1].item() == pytest.approx(0.1 * r01 * dkl0 / 5, abs=1e-12)


def test_beta_without_ref_logps_raises():
    with pytest.raises(ValueError, match="ref_logps"):
        run(cfg(beta=0.1))


# The engine's logprobs differ from old on two tokens of row 0: old - sampling = ln 0.5, ln 3;
# row 1's padding has no engine logprob (NaN). Token ratios [[0.5, 3, 1], [1, 1, (1)]],
# sequence ratios (products) 1.5 and 1. The per-token losses are [[-1.1, -1.2, -0.5], [0.8, 1.5]].
SAMPLING = OLD.clone()
SAMPLING[0, 0] -= LN(0.5)
SAMPLING[0, 1] -= LN(3)
SAMPLING[1, 2] = float("nan")


@pytest.mark.parametrize(
    "mode, clip_min, clip_max, expected, is_mean",
    [
        # [0.5, 2 (3 truncated), 1]: row 0 -0.55 - 2.4 - 0.5 = -3.45, row 1 2.3 -> bnpo -1.15 / 5
        ("token_truncate", None, 2.0, -0.23, (0.5 + 2 + 1 + 1 + 1) / 5),
        # C_min 0.6 lifts 0.5: -0.66 - 2.4 - 0.5 = -3.56 -> -1.26 / 5
        ("token_truncate", 0.6, 2.0, -0.252, (0.6 + 2 + 1 + 1 + 1) / 5),
        # 3 > 2 masked to 0: -0.55 - 0.5 = -1.05 -> 1.25 / 5
        ("token_mask", None, 2.0, 0.25, (0.5 + 0 + 1 + 1 + 1) / 5),
        # row 0 times 1.5 (inside [_, 2]): -4.2 + 2.3 -> -1.9 / 5; the metric averages rows
        ("sequence_truncate", None, 2.0, -0.38, (1.5 + 1) / 2),
        ("sequence_truncate", None, 1.4, (-2.8 * 1.4 + 2.3) / 5, (1.4 + 1) / 2),
        # 1.5 > 1.4: row 0 masked -> 2.3 / 5
        ("sequence_mask", None, 1.4, 0.46, (0 + 1) / 2),
        ("sequence_mask", None, 2.0, -0.38, (1.5 + 1) / 2),
    ],
)
def test_engine_importance_sampling_hand_worked(mode, clip_min, clip_max, expected, is_mean):
    config = cfg(loss_type="bnpo", vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                 vllm_importance_sampling_clip_max=clip_max)
    loss, _, metrics = run(config, sampling_logps=SAMPLING)
    assert loss == pytest.approx(expected, abs=1e-12)
    assert metrics["is_ratio_mean"].item() == pytest.approx(is_mean, abs=1e-12)


def test_engine_correction_off_ignores_the_sampler():
    loss, _, metrics = run(cfg(loss_type="bnpo", vllm_importance_sampling_correction=False), sampling_logps=SAMPLING)
    assert loss == pytest.approx(-0.1, abs=1e-12) and "is_ratio_mean" not in metrics


def test_off_policy_mask_hand_worked():
    # Without engine logprobs OPSM measures the drift from old: mean(old - logp) per row is
    # -ln(1.1 * 1.5 * 0.5) / 3 = 0.064 (row 0, A > 0: kept anyway) and -ln(0.5 * 1.5) / 2 = 0.144
    # (row 1, A < 0). Threshold 0.1 drops row 1: bnpo -2.8 / 5 (its tokens still count); 0.2 keeps it.
    assert run(cfg(loss_type="bnpo", off_policy_mask_threshold=0.1))[0] == pytest.approx(-0.56, abs=1e-12)
    assert run(cfg(loss_type="bnpo", off_policy_mask_threshold=0.2))[0] == pytest.approx(-0.1, abs=1e-12)
    # With engine logprobs it measures from them: 0.5 lower on row 1 makes its drift 0.144 - 0.5 < 0.1.
    sampling = OLD.clone()
    sampling[1] -= 0.5
    config = cfg(loss_type="bnpo", off_policy_mask_threshold=0.1, vllm_importance_sampling_correction=False)
    assert run(config, sampling_logps=sampling)[0] == pytest.approx(-0.1, abs=1e-12)


def test_top_entropy_quantile_hand_worked():
    # Loss tokens' entropies 1..5 (row 1's padding 100 is ignored). rho = 0.4 keeps entropies
    # >= 3.4 (the 0.6 quantile): row 1's tokens, losses 0.8 + 1.5 -> bnpo 2.3 / 5 (tokens still 5);
    # rho = 0 keeps the maximum (1.5 / 5); a pool with larger entropies raises the threshold.
    ent = t([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert run(cfg(loss_type="bnpo", top_entropy_quantile=0.4), entropies=ent)[0] == pytest.approx(0.46)
    assert run(cfg(loss_type="bnpo", top_entropy_quantile=0.0), entropies=ent)[0] == pytest.approx(0.3)
    pool = t([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0])
    assert run(cfg(loss_type="bnpo", top_entropy_quantile=0.4), entropies=ent, entropy_pool=pool)[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="entropies"):
        run(cfg(top_entropy_quantile=0.4))


def test_entropy_bonus_hand_worked():
    # Loss-token entropies 1..5 (mean 3; the padding's 100 is ignored). entropy_coef 0.1 subtracts
    # 0.1 x 3 whatever the loss_type's normaliser: bnpo -0.1 - 0.3, grpo 0.108333 - 0.3. Its
    # gradient to each loss token's entropy is -0.1 / 5, to the padding's 0; policy_loss is the rest.
    def bonus_run(config, **kw):
        ent = t([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]]).requires_grad_(True)
        logps = (OLD + LOG_RATIO).requires_grad_(True)
        loss, metrics = grpo_loss(logps, OLD, None, ADV, MASK, config, entropies=ent, **kw)
        loss.backward()
        return loss.item(), ent.grad, metrics

    loss, grad, metrics = bonus_run(cfg(loss_type="bnpo", entropy_coef=0.1))
    assert loss == pytest.approx(-0.4, abs=1e-12) and metrics["policy_loss"].item() == pytest.approx(-0.1)
    torch.testing.assert_close(grad, t([[-0.02] * 3, [-0.02, -0.02, 0.0]]))
    assert bonus_run(cfg(loss_type="grpo", entropy_coef=0.1))[0] == pytest.approx((-2.8 / 3 + 2.3 / 2) / 2 - 0.3)
    # Accumulation halves both terms; policy_loss is logged before that scaling, as in TRL.
    loss, grad, metrics = bonus_run(cfg(loss_type="bnpo", entropy_coef=0.1), gradient_accumulation_steps=2)
    assert loss == pytest.approx(-0.2, abs=1e-12) and metrics["policy_loss"].item() == pytest.approx(-0.1)
    # top_entropy_quantile 0.4 trains row 1's tokens (entropies 4, 5): the bonus averages those two.
    loss, grad, _ = bonus_run(cfg(loss_type="bnpo", entropy_coef=0.1, top_entropy_quantile=0.4))
    assert loss == pytest.approx(0.46 - 0.45, abs=1e-12)
    torch.testing.assert_close(grad, t([[0.0] * 3, [-0.05, -0.05, 0.0]]))
    # The coefficient passed in (the adaptive controller's) replaces the config's; 0 is no bonus.
    assert bonus_run(cfg(loss_type="bnpo", entropy_coef=0.1), entropy_coef=0.2)[0] == pytest.approx(-0.7)
    loss, grad, metrics = bonus_run(cfg(loss_type="bnpo", use_adaptive_entropy=True), entropy_coef=0.0)
    assert loss == pytest.approx(-0.1) and grad is None
    assert metrics[ENTROPY_SUM].item() == 15 and metrics[ENTROPY_TOKENS].item() == 5
    with pytest.raises(ValueError, match="entropy_coef="):
        bonus_run(cfg(use_adaptive_entropy=True))
    with pytest.raises(ValueError, match="entropies"):
        run(cfg(entropy_coef=0.1))


def test_entropy_bonus_on_row_slices():
    # Slices given the micro-batch's rows and tokens sum to the whole (the bonus divides by the
    # micro-batch's loss tokens); with top_entropy_quantile < 1 the divisor is the micro-batch's
    # high-entropy tokens, which a slice cannot count: refused.
    logps0, old, _, _, adv, mask, ent0 = random_batch(11)
    config = GRPOConfig(loss_type="grpo", entropy_coef=0.3, max_completion_length=8)

    def call(rows, config=config, **more):
        logps, ent = logps0.clone().requires_grad_(True), ent0.clone().requires_grad_(True)
        loss, _ = grpo_loss(logps[rows], old[rows], None, adv[rows], mask[rows], config, entropies=ent[rows], **more)
        loss.backward()
        return loss, logps.grad, ent.grad

    whole = call(list(range(6)))
    parts = [call(rows, micro_batch_rows=6, micro_batch_tokens=mask.sum()) for rows in ([0, 1, 4], [2, 3, 5])]
    for w, a, b in zip(whole, *parts):
        torch.testing.assert_close(a + b, w, rtol=1e-12, atol=1e-14)
    quantile = dataclasses.replace(config, top_entropy_quantile=0.5)
    call(list(range(6)), quantile, micro_batch_rows=6)  # a whole micro-batch is fine
    with pytest.raises(ValueError, match="whole micro-batches"):
        call([0, 1, 4], quantile, micro_batch_rows=6, micro_batch_tokens=mask.sum())


def test_cispo_vespo_sapo_hand_worked():
    # cispo (eps_max 1.2): loss -min(r, 1.2) A logp, detached weight, dapo's normaliser (5 tokens):
    # gradient -w A / 5 = [[-1.1, -1.2, -0.5], [0.5, 1.2, 0]] / 5. One token is capped with A > 0.
    loss, grad, metrics = run(cfg(loss_type="cispo", epsilon_high=1.2))
    torch.testing.assert_close(grad, t([[-1.1, -1.2, -0.5], [0.5, 1.2, 0.0]]) / 5)
    logp = OLD + LOG_RATIO
    w = t([[1.1, 1.2, 0.5], [0.5, 1.2, 0.0]])
    assert loss == pytest.approx((-(w * ADV.unsqueeze(1) * logp * MASK).sum() / 5).item(), abs=1e-12)
    assert metrics["cispo_clip_ratio"].item() == pytest.approx(0.2)
    # vespo (k, lambda) = (2, 3) for A > 0, (3, 2) for A < 0; w = prod r per row: 0.825 and 0.75.
    # phi(w) = e^lambda w^k e^(-lambda w), detached; loss -phi A logp, gradient -phi A / 5.
    phi0 = math.exp(3) * 0.825**2 * math.exp(-3 * 0.825)
    phi1 = math.exp(2) * 0.75**3 * math.exp(-2 * 0.75)
    loss, grad, metrics = run(cfg(loss_type="vespo", vllm_importance_sampling_mode="token_truncate"))
    torch.testing.assert_close(grad, t([[-phi0] * 3, [phi1, phi1, 0.0]]) / 5)
    assert metrics["vespo/phi_seq_mean"].item() == pytest.approx((phi0 + phi1) / 2)
    # sapo (tau 1.0 for A > 0, 1.05 otherwise): loss -4/tau sigmoid(tau (r - 1)) A, grpo's normaliser.
    # d/dlogp = -A 4 s (1 - s) r with s = sigmoid(tau (r - 1)), divided by the row's tokens and B = 2.
    def dsapo(r, a, tau):
        s = 1 / (1 + math.exp(-tau * (r - 1)))
        return -a * 4 * s * (1 - s) * r
    _, grad, metrics = run(cfg(loss_type="sapo"))
    want = [[dsapo(r, 1, 1.0) / 6 for r in (1.1, 1.5, 0.5)], [dsapo(r, -1, 1.05) / 4 for r in (0.5, 1.5)] + [0.0]]
    torch.testing.assert_close(grad, t(want))
    assert metrics == {}


# --- the hand-worked sequence-level (GSPO) case -------------------------------------------------
#
# mask [[1, 1, 0], [1, 1, 1], [1, 1, 0]], A = [+1, -2, +0.5]. The sequence ratio is the exp of
# each row's masked mean log-ratio, over that row's own token count (2, 3, 2):
#   row 0: [ln 4, 0, (5.0 padding)] -> exp((ln 4 + 0) / 2) = 2 (the padding's 5.0 is ignored)
#          -> -min(2, 1.2) = -1.2 per token (high-clipped)
#   row 1: [ln 1.5] * 3 -> exp(3 ln 1.5 / 3) = 1.5 -> -min(1.5 * -2, 1.2 * -2) = 3 per token
#          (not clipped: A < 0 and r > 1)
#   row 2: [ln 1.21, 0, (5.0 padding)] -> exp(ln 1.21 / 2) = 1.1 -> -min(1.1 * 0.5, 1.2 * 0.5)
#          = -0.55 per token (inside the clip range)
# Any other divisor moves an unclipped row: 2 for every row makes row 1's ratio 1.5^1.5 = 1.84,
# 3 (= T) makes row 2's 1.21^(1/3) = 1.066.
# Row sums -2.4, 9, -1.1; all 7 tokens 5.5:
#   grpo    = mean(-1.2, 3, -0.55) = 1.25 / 3
#   bnpo    = 5.5 / 7 (= dapo with num_items None)
#   dr_grpo = 5.5 / (3 * 4)
#   luspo   = mean of the row sums (each sequence's loss times its length) = 5.5 / 3
# Clip ratios count sequences: high 1/3, low 0, region 1/3.
# Gradient (bnpo, / 7): an unclipped row of n tokens contributes n * (-r * A) with
# r = exp(mean of its n log-ratios), so d/dlogp_t = n * (-A) * r / n = -A * r on each of its
# tokens: row 1 2 * 1.5 = 3, row 2 -0.5 * 1.1 = -0.55; the clipped row 0 is flat.
GSPO = dict(
    log_ratio=t([[LN(4), 0.0, 5.0], [LN(1.5)] * 3, [LN(1.21), 0.0, 5.0]]),
    adv=t([1.0, -2.0, 0.5]),
    mask=torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0]]),
    old=t([[-1.0, -2.0, -0.5], [-1.5, -0.7, -1.0], [-0.3, -2.5, -1.2]]),
)


@pytest.mark.parametrize(
    "loss_type, expected",
    [("grpo", 1.25 / 3), ("bnpo", 5.5 / 7), ("dapo", 5.5 / 7), ("dr_grpo", 5.5 / 12), ("luspo", 5.5 / 3)],
)
def test_sequence_level_hand_worked(loss_type, expected):
    loss, grad, metrics = run(cfg(loss_type=loss_type, importance_sampling_level="sequence"), **GSPO)
    assert loss == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/low_mean"].item() == 0
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(1 / 3)
    assert grad[0].abs().sum() == 0  # row 0 is clipped: no gradient
    assert grad[1, :].abs().min() > 0  # every token of row 1 moves its sequence ratio


def test_sequence_level_gradient_hand_worked():
    _, grad, _ = run(cfg(loss_type="bnpo", importance_sampling_level="sequence"), **GSPO)
    torch.testing.assert_close(grad, t([[0.0, 0.0, 0.0], [3 / 7] * 3, [-0.55 / 7, -0.55 / 7, 0.0]]))
    # luspo: the same per-token gradients times n / n_i... each row's sum is n_i x its loss, and
    # d/dlogp_t of n_i * (-A r) = -A r as above, over B = 3 rows instead of 7 tokens.
    _, grad, _ = run(cfg(loss_type="luspo", importance_sampling_level="sequence"), **GSPO)
    torch.testing.assert_close(grad, t([[0.0, 0.0, 0.0], [3 / 3] * 3, [-0.55 / 3, -0.55 / 3, 0.0]]))


def test_entropy_metric_and_on_policy_default():
    # old_logps=None means on-policy: ratio 1, loss -A per token. bnpo = -(1*3 - 1*2)/5 = -0.2.
    ent = t([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])  # the padding's 100 is ignored
    logps = OLD.clone().requires_grad_(True)
    loss, metrics = grpo_loss(logps, None, None, ADV, MASK, cfg(loss_type="bnpo"), entropies=ent)
    assert loss.item() == pytest.approx(-0.2)
    assert metrics["entropy"].item() == pytest.approx(3.0)  # (1+2+3+4+5)/5
    assert metrics["clip_ratio/region_mean"].item() == 0
    assert all(not m.requires_grad for m in metrics.values())


def test_accumulation_scaling():
    # Every loss_type but dapo / cispo / vespo is divided by gradient_accumulation_steps; their
    # normaliser is num_items / num_processes * gradient_accumulation_steps / steps_per_generation
    # = 20 / 2 * 2 / 4 = 5 -> -0.5 / 5 = -0.1 (TRL's formula; cross-checked below as well).
    scale = dict(gradient_accumulation_steps=2, steps_per_generation=4, num_processes=2)
    assert run(cfg(loss_type="bnpo"), **scale)[0] == pytest.approx(-0.05)
    assert run(cfg(loss_type="dr_grpo"), **scale)[0] == pytest.approx(-0.03125)
    assert run(cfg(loss_type="dapo"), num_items_in_batch=20, **scale)[0] == pytest.approx(-0.1)
    for lt in ("cispo", "vespo"):  # the same normaliser: 5 tokens' worth, whatever the loss
        config = cfg(loss_type=lt, epsilon_high=1.2, vllm_importance_sampling_mode="token_mask")
        assert run(config, num_items_in_batch=20, **scale)[0] == pytest.approx(run(config)[0], abs=1e-12)
    for lt, extra in (("sapo", {}), ("luspo", {"importance_sampling_level": "sequence"})):
        assert run(cfg(loss_type=lt, **extra), **scale)[0] == pytest.approx(run(cfg(loss_type=lt, **extra))[0] / 2)


# --- a micro-batch in row slices (the learner's execution batches) ------------------------------

SLICE_CONFIGS = [
    dict(loss_type="grpo", beta=0.04, off_policy_mask_threshold=0.05),
    dict(loss_type="dr_grpo", importance_sampling_level="sequence", vllm_importance_sampling_mode="sequence_truncate"),
    dict(loss_type="dapo", epsilon_high=0.28, delta=1.5, vllm_importance_sampling_mode="token_mask"),
    dict(loss_type="bnpo", beta=0.04, kl_estimator="k2", vllm_importance_sampling_mode="sequence_mask"),
    dict(loss_type="cispo", epsilon_high=1.2, importance_sampling_level="sequence"),
    dict(loss_type="sapo", vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_min=0.5),
    dict(loss_type="luspo", importance_sampling_level="sequence", beta=0.04),
    dict(loss_type="vespo", vllm_importance_sampling_mode="token_truncate", off_policy_mask_threshold=0.05),
    dict(loss_type="bnpo", top_entropy_quantile=0.25),  # sliceable when the pool is passed
]


@pytest.mark.parametrize("extra", SLICE_CONFIGS, ids=lambda e: e["loss_type"])
def test_row_slices_with_the_micro_batch_normalisers_sum_to_the_whole(extra):
    # Rows {0, 1, 4} and {2, 3, 5} of one micro-batch, each called with the micro-batch's rows
    # and loss tokens: the losses and gradients add up to one call on the whole micro-batch.
    config = GRPOConfig(max_completion_length=8, **extra)
    logps0, old, ref, sampling, adv, mask, ent = random_batch(11)
    kw = dict(num_items_in_batch=40, gradient_accumulation_steps=2, steps_per_generation=2, num_processes=1)
    pool = ent[mask.bool()] if needs_whole_micro_batch(config) else None

    def call(rows, **more):
        logps = logps0.clone().requires_grad_(True)
        loss, _ = grpo_loss(
            logps[rows], old[rows], ref[rows], adv[rows], mask[rows], config, sampling_logps=sampling[rows],
            entropies=ent[rows], entropy_pool=pool, **kw, **more,
        )
        loss.backward()
        return loss, logps.grad

    whole, whole_grad = call(list(range(6)))
    parts = [call(rows, micro_batch_rows=6, micro_batch_tokens=mask.sum()) for rows in ([0, 1, 4], [2, 3, 5])]
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(parts[0][1] + parts[1][1], whole_grad, rtol=1e-12, atol=1e-14)
    # The slices' own normalisers would not add up (except for the global-token types).
    if config.loss_type not in ("dapo", "cispo", "vespo"):
        alone = [call(rows)[0] for rows in ([0, 1, 4], [2, 3, 5])]
        assert not torch.allclose(alone[0] + alone[1], whole)


def test_needs_whole_micro_batch():
    assert not needs_whole_micro_batch(GRPOConfig())
    assert needs_whole_micro_batch(GRPOConfig(top_entropy_quantile=0.2))
    # Without the pool, a slice's own entropy quantile differs from the micro-batch's.
    config = GRPOConfig(loss_type="bnpo", top_entropy_quantile=0.25)
    logps0, old, _, _, adv, mask, ent = random_batch(11)
    rows = [0, 1, 4]
    own = grpo_loss(logps0[rows], old[rows], None, adv[rows], mask[rows], config, entropies=ent[rows])[0]
    pooled = grpo_loss(
        logps0[rows], old[rows], None, adv[rows], mask[rows], config, entropies=ent[rows], entropy_pool=ent[mask.bool()]
    )[0]
    assert not torch.allclose(own, pooled)


def test_shape_errors():
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(OLD, OLD, None, t([1.0, 2.0, 3.0]), MASK, cfg())
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        grpo_loss(OLD[0], OLD[0], None, ADV, MASK, cfg())


def test_mask_truncated_completions():
    # EOS = 2. Row 0 ends with EOS, row 1 never emits one (truncated), row 2 emits pad-EOS 9.
    ids = torch.tensor([[5, 6, 2], [5, 6, 7], [5, 9, 9]])
    truncated = truncated_completions(ids, eos_token_ids=[2, 9])
    assert truncated.tolist() == [False, True, False]
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    out = mask_truncated_completions(mask, truncated)
    assert out.tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 0]]
    assert out.dtype == mask.dtype
    fmask = mask.float()
    assert mask_truncated_completions(fmask, truncated).dtype == torch.float32
    # All truncated: every row masked; the loss is then 0 (normalisers clamp at 1), not NaN.
    zero = mask_truncated_completions(mask, torch.ones(3, dtype=torch.bool))
    logps = torch.zeros(3, 3, dtype=D, requires_grad=True)
    for lt in LOSS_TYPES:
        config = cfg(loss_type=lt, **VALID[lt], top_entropy_quantile=0.5, beta=0.1)
        loss, metrics = grpo_loss(
            logps, None, logps, t([1.0, -1.0, 0.5]), zero, config, sampling_logps=logps - 1, entropies=logps,
        )
        assert loss.item() == 0 and all(torch.isfinite(v) for v in metrics.values())


# --- gradcheck ---------------------------------------------------------------------------------

# Ratios away from every kink (clip bounds 0.8 / 1.2 or 1.28, delta 1.6): unclipped, clipped
# flat (r = 1.5 with A > 0, r = 0.5 with A < 0), and on the A < 0 side above the range.
# (cispo and vespo are left out: their weights are detached by definition, so their gradient
# is not the derivative of their value; test_cispo_vespo_sapo_hand_worked and TRL check them.)
GC_RATIOS = [[1.05, 1.5, 0.6, 0.9], [0.5, 1.1, 1.4, 1.0], [0.95, 0.7, 1.3, 1.02]]
GC_ADV = [0.7, -1.3, 0.4]
GC_MASK = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
GC_EXTRA = {
    "plain": {},
    "clip-higher+delta+kl": {"epsilon_high": 0.28, "delta": 1.6, "beta": 0.05},
    "gspo+kl": {"importance_sampling_level": "sequence", "beta": 0.05},
    "k1+token-truncate": {"beta": 0.05, "kl_estimator": "k1", "vllm_importance_sampling_mode": "token_truncate"},
    "k2-unbiased+sequence-truncate": {
        "beta": 0.05, "kl_estimator": "k2", "use_bias_correction_kl": False,
        "vllm_importance_sampling_mode": "sequence_truncate", "vllm_importance_sampling_clip_min": 0.9,
    },
}
GC_CASES = [
    *itertools.product(["grpo", "dr_grpo", "dapo", "bnpo"], GC_EXTRA),
    ("sapo", "plain"), ("sapo", "gspo+kl"), ("sapo", "k1+token-truncate"),
    ("luspo", "gspo+kl"), ("luspo", "k2-unbiased+sequence-truncate"),
]


@pytest.mark.parametrize("loss_type, extra", GC_CASES)
def test_gradcheck(loss_type, extra):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 4, generator=gen, dtype=D) - 0.5
    ratios = t(GC_RATIOS)
    start = (old + ratios.log()).detach().requires_grad_(True)
    ref = old + 0.3 * torch.randn(3, 4, generator=gen, dtype=D)
    sampling = old + 0.2 * torch.randn(3, 4, generator=gen, dtype=D)
    kw = GC_EXTRA[extra] | ({"importance_sampling_level": "sequence"} if loss_type == "luspo" else {})
    config = cfg(loss_type=loss_type, **kw)

    def f(logps):
        return grpo_loss(
            logps, old, ref, t(GC_ADV), torch.tensor(GC_MASK), config,
            num_items_in_batch=17, sampling_logps=sampling,
        )[0]

    assert torch.autograd.gradcheck(f, (start,), eps=1e-6, atol=1e-8)


# --- TRL cross-check ---------------------------------------------------------------------------


class FakeAccelerator:
    """TRL's accelerator for one process of ``num_processes``: reductions stay local, except
    the entropy gather of ``get_high_entropy_mask`` (the one caller of ``pad_across_processes``),
    which appends the other processes' entropies padded with TRL's sentinel, and the adaptive
    entropy controller's window reduce (the first ``reduce`` at an optimizer step), which adds
    ``window_other`` (the other processes' ``[entropy sum, tokens]``) when set."""

    def __init__(self, num_processes, other_entropies):
        self.num_processes = num_processes
        self.other = other_entropies
        self.gathering_entropies = False
        self.sync_gradients = True  # the micro-step ends an accumulation window
        self.window_other = None

    def pad_across_processes(self, x, dim=0, pad_index=0):
        self.gathering_entropies = True
        return x

    def gather(self, x):
        if not self.gathering_entropies or self.other is None:
            return x
        self.gathering_entropies = False
        return torch.cat([x, self.other.float(), torch.full((3,), -1e9)])

    def reduce(self, x, reduction="sum"):
        if self.window_other is not None:
            x, self.window_other = x + self.window_other, None
        return x

    gather_for_metrics = gather


def trl_trainer(config, *, gas=1, spg=1, nproc=1, use_vllm=False, other_entropies=None):
    """A stand-in ``self`` for TRL's real ``GRPOTrainer._compute_loss`` (:func:`trl_compute_loss`),
    holding TRL's entropy controller state across calls."""
    from trl.trainer.grpo_trainer import GRPOTrainer  # a dev dependency: missing, the cross-checks fail

    fake = SimpleNamespace(
        top_entropy_quantile=config.top_entropy_quantile,
        off_policy_mask_threshold=config.off_policy_mask_threshold,
        importance_sampling_level=config.importance_sampling_level,
        beta=config.beta,
        loss_type=config.loss_type,
        epsilon_low=config.epsilon,
        epsilon_high=config.epsilon_high_value,
        use_vllm=use_vllm,
        vllm_importance_sampling_correction=config.vllm_importance_sampling_correction,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=gas,
        max_completion_length=config.max_completion_length,
        args=SimpleNamespace(
            delta=config.delta, steps_per_generation=spg, use_bias_correction_kl=config.use_bias_correction_kl,
            sapo_temperature_pos=config.sapo_temperature_pos, sapo_temperature_neg=config.sapo_temperature_neg,
            vespo_k_pos=config.vespo_k_pos, vespo_lambda_pos=config.vespo_lambda_pos,
            vespo_k_neg=config.vespo_k_neg, vespo_lambda_neg=config.vespo_lambda_neg,
            entropy_target=config.entropy_target, entropy_coef_delta=config.entropy_coef_delta,
            entropy_coef_min=config.entropy_coef_min, entropy_coef_max=config.entropy_coef_max,
        ),
        accelerator=FakeAccelerator(nproc, other_entropies),
        # TRL's __init__ of the entropy bonus and its controller
        entropy_coef=config.entropy_coef,
        use_adaptive_entropy=config.use_adaptive_entropy,
        _entropy_bonus_enabled=config.entropy_coef != 0.0 or config.use_adaptive_entropy,
        _last_world_entropy=float("inf"),
        _entropy_window_stats=None,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
    )
    fake.get_high_entropy_mask = lambda *a: GRPOTrainer.get_high_entropy_mask(fake, *a)
    return fake


def trl_compute_loss(fake, logps, entropies, inputs):
    """TRL's ``_compute_loss`` on ``fake`` (:func:`trl_trainer`). ``_get_per_token_logps_and_entropies``
    returns our ``logps`` and ``entropies`` leaves, so TRL's loss can be differentiated with
    respect to the same tensors as ours. Returns (loss, TRL's metrics of this call)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    fake._metrics.clear()
    fake._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropies, None)
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, {k: v[-1] for k, v in fake._metrics["train"].items()}


def trl_importance_sampling_ratio(config, old, sampling, mask):
    """The engine correction as TRL 1.16 computes it in ``_generate_and_score_completions``
    (grpo_trainer.py, "Compute the importance sampling ratio when using vLLM"), transcribed."""
    diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    mode = config.vllm_importance_sampling_mode
    if mode in ("sequence_mask", "sequence_truncate"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    low, high = config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max
    if mode in ("sequence_truncate", "token_truncate"):
        return torch.clamp(ratio, min=low, max=high)
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def random_batch(seed, B=6, T=7):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=D) * 3 - 0.1
    # log-ratios up to +-0.6 so that every clip and delta bound is crossed somewhere
    logps = old + (torch.rand(B, T, generator=gen, dtype=D) - 0.5) * 1.2
    ref = logps.detach() + 0.3 * torch.randn(B, T, generator=gen, dtype=D)
    # engine drift large enough that token and sequence ratios leave [0.5, 2] and [_, 3]
    sampling = old + 0.6 * torch.randn(B, T, generator=gen, dtype=D)
    sampling[0, 1] = float("nan")  # a token the engine gave no logprob for
    adv = torch.randn(B, generator=gen, dtype=D)
    adv[2] = 0.0
    lengths = torch.tensor([T, 3, 1, 0, 5, T][:B])  # row 3 fully masked
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    # entropies on a 1/64 grid: exact in float32, where TRL takes its quantile
    entropies = torch.randint(0, 192, (B, T), generator=gen).to(D) / 64
    return logps.detach(), old, ref, sampling, adv, mask, entropies


def trl_inputs(config, batch, *, engine, num_items=None):
    """TRL's ``inputs`` of ``_compute_loss`` for ``random_batch``'s ``batch``."""
    logps0, old, ref, sampling, adv, mask, ent = batch
    inputs = {
        "prompt_ids": torch.zeros(len(adv), 2, dtype=torch.long),
        "prompt_mask": torch.ones(len(adv), 2, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items), dtype=D),
    }
    if config.beta:
        inputs["ref_per_token_logps"] = ref
    if engine:
        inputs["sampling_per_token_logps"] = sampling
        if config.vllm_importance_sampling_correction:
            inputs["importance_sampling_ratio"] = trl_importance_sampling_ratio(config, old, sampling, mask)
    return inputs


def compare_one_call(config, fake, batch, inputs, *, engine, num_items=None, gas=1, spg=1, other_entropies=None,
                     entropy_coef=None):
    """TRL's ``_compute_loss`` on ``fake`` and our ``grpo_loss`` (given ``entropy_coef``) on one
    batch: the same loss, gradients to the logprobs and the entropies, and metrics. Returns our
    metrics (for the entropy controller) and TRL's."""
    logps0, old, ref, sampling, adv, mask, ent = batch
    theirs_logps, theirs_ent = logps0.clone().requires_grad_(True), ent.clone().requires_grad_(True)
    theirs, trl_metrics = trl_compute_loss(fake, theirs_logps, theirs_ent, inputs)
    theirs.backward()

    ours_logps, ours_ent = logps0.clone().requires_grad_(True), ent.clone().requires_grad_(True)
    pool = None if other_entropies is None else torch.cat([ent[mask.bool()], other_entropies])
    ours, metrics = grpo_loss(
        ours_logps, old, ref if config.beta else None, adv, mask, config,
        num_items_in_batch=num_items, sampling_logps=sampling if engine else None, entropies=ours_ent,
        entropy_pool=pool, gradient_accumulation_steps=gas, steps_per_generation=spg,
        num_processes=fake.accelerator.num_processes, entropy_coef=entropy_coef,
    )
    ours.backward()

    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_logps.grad, theirs_logps.grad, rtol=1e-10, atol=1e-14)
    if theirs_ent.grad is None or ours_ent.grad is None:  # no entropy bonus (or a 0 coefficient) in either
        assert all(g is None or not g.any() for g in (theirs_ent.grad, ours_ent.grad))
    else:
        torch.testing.assert_close(ours_ent.grad, theirs_ent.grad, rtol=1e-10, atol=1e-14)
    # TRL also logs per-sequence clip extremes (clip_ratio/low_min, high_max) that we do not, and
    # the entropy coefficient at optimizer steps (ours: EntropyControl.step, checked by the callers).
    shared = {k for k in trl_metrics if not k.endswith(("_min", "_max")) and k != "entropy_coef"}
    assert shared == set(metrics) - {"is_ratio_mean", ENTROPY_SUM, ENTROPY_TOKENS}
    for key in shared:
        # TRL logs the clip ratios in float32 (``.float()``), hence 1e-6
        assert metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-6), key
    return metrics, trl_metrics


def compare_with_trl(config, seed, *, engine, num_items=None, gas=1, spg=1, nproc=1, other_entropies=None):
    """Our loss, gradients and metrics against TRL's on ``random_batch(seed)``. ``engine``: the
    rollout engine gave logprobs (TRL's ``use_vllm``); ``other_entropies``: the loss-token
    entropies of the other processes, for the ``top_entropy_quantile`` gather."""
    batch = random_batch(seed)
    fake = trl_trainer(config, gas=gas, spg=spg, nproc=nproc, use_vllm=engine, other_entropies=other_entropies)
    _, trl_metrics = compare_one_call(
        config, fake, batch, trl_inputs(config, batch, engine=engine, num_items=num_items), engine=engine,
        num_items=num_items, gas=gas, spg=spg, other_entropies=other_entropies,
    )
    if config.entropy_coef:  # a static coefficient, logged as TRL does
        assert EntropyControl(config).step() == {"entropy_coef": trl_metrics["entropy_coef"]}


CLIPS = {
    "eps": {},
    "eps_high": {"epsilon_high": 0.28},
    "delta": {"delta": 1.3},
    "eps_high+delta": {"epsilon_high": 0.28, "delta": 1.5},
}
# Each loss_type's own knobs: its levels and the values of the knobs only it reads.
OBJECTIVES = {
    **{lt: [dict(importance_sampling_level=lv, **c) for lv in ("token", "sequence") for c in CLIPS.values()]
       for lt in ("grpo", "dr_grpo", "dapo", "bnpo")},
    "luspo": [dict(importance_sampling_level="sequence", **c) for c in CLIPS.values()],
    "cispo": [dict(importance_sampling_level=lv, epsilon_high=e) for lv in ("token", "sequence") for e in (1.2, 1.5)],
    "sapo": [dict(importance_sampling_level=lv, sapo_temperature_pos=p, sapo_temperature_neg=n)
             for lv in ("token", "sequence") for p, n in ((1.0, 1.05), (4.0, 0.5))],
    "vespo": [{}, dict(vespo_k_pos=1.0, vespo_lambda_pos=0.5, vespo_k_neg=0.5, vespo_lambda_neg=4.0)],
}
# The rollout engine: no logprobs; logprobs without correction (OPSM still reads them); each mode
# with TRL's default bounds and with [0.5, 2].
ENGINES = {"none": None, "no-correction": dict(vllm_importance_sampling_correction=False)} | {
    f"{mode}{'' if low is None else '-0.5-2'}": dict(
        vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=low, vllm_importance_sampling_clip_max=high,
    )
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
    for low, high in ((None, 3.0), (0.5, 2.0))
}
KLS = [dict(beta=0.0), dict(beta=0.04), dict(beta=0.04, use_bias_correction_kl=False)]
# Cycled through the cases above, so each objective meets each of them with several engines.
SELECTIONS = [
    {}, dict(off_policy_mask_threshold=0.05), dict(top_entropy_quantile=0.25),
    dict(off_policy_mask_threshold=0.05, top_entropy_quantile=0.5), dict(top_entropy_quantile=0.0),
    dict(entropy_coef=0.05), dict(entropy_coef=-0.1, top_entropy_quantile=0.25),  # a bonus, a penalty
]


def trl_cases(loss_type):
    """Every combination TRL allows of this loss_type's knobs x engine x KL, with the
    off-policy mask, the entropy quantile and the entropy bonus cycled through them;
    (config, engine?, seed)."""
    i = 0
    for objective, (engine_name, engine), kl in itertools.product(OBJECTIVES[loss_type], ENGINES.items(), KLS):
        if loss_type == "vespo" and engine_name.startswith("sequence"):
            continue  # TRL refuses vespo with sequence-level engine correction (and so do we)
        extra = objective | (engine or {}) | kl | SELECTIONS[i % len(SELECTIONS)]
        if loss_type == "vespo" and not engine_name.startswith("token"):
            extra.setdefault("vllm_importance_sampling_mode", "token_mask")
        yield GRPOConfig(loss_type=loss_type, max_completion_length=8, **extra), engine is not None, 100 + i
        i += 1


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl(loss_type):
    for config, engine, seed in trl_cases(loss_type):
        compare_with_trl(config, seed, engine=engine)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_with_accumulation_and_processes(loss_type):
    # TRL's scaling for later accumulation steps / several ranks, num_items_in_batch counting the
    # whole generation batch (here about 3x this micro-batch's tokens), and the entropy quantile
    # over every process's tokens (with an entropy bonus over the tokens it keeps).
    base = dict(loss_type=loss_type, max_completion_length=8, beta=0.04) | VALID[loss_type]
    if loss_type == "cispo":
        base["epsilon_high"] = 1.2
    other = random_batch(99)[6][:4].flatten()  # another process's loss-token entropies
    for extra in (
        dict(top_entropy_quantile=0.25, off_policy_mask_threshold=0.05, entropy_coef=0.07),
        dict(vllm_importance_sampling_mode="token_mask", vllm_importance_sampling_clip_min=0.5, top_entropy_quantile=0.5),
    ):
        config = GRPOConfig(**(base | extra))
        compare_with_trl(config, seed=7, engine=True, num_items=60, gas=4, spg=2, nproc=2, other_entropies=other)
        compare_with_trl(config, seed=8, engine=False, num_items=20, gas=2, spg=8, nproc=1)
    compare_with_trl(GRPOConfig(**base), seed=9, engine=True, num_items=60, gas=4, spg=2, nproc=2)
    compare_with_trl(GRPOConfig(**base, entropy_coef=0.02), seed=10, engine=False, num_items=60, gas=4, spg=2, nproc=2)


# Per accumulation window (2 micro-steps), a factor on the random entropies (mean about 1.5 nats;
# dyadic, so that TRL's float32 quantile sees the same values): against the target 1.0 the
# controller steps down, gates the bonus off, steps up, applies it, hits entropy_coef_max, comes
# down again and sits at entropy_coef_min.
ENTROPY_SCALES = [1.0, 0.5, 0.5, 0.25, 0.25, 1.0, 1.0, 1.0, 0.625]


@pytest.mark.parametrize("loss_type, extra", [
    ("grpo", {}), ("dapo", dict(top_entropy_quantile=0.5, beta=0.04)), ("bnpo", dict(entropy_coef_min=0.005)),
])
def test_adaptive_entropy_control_matches_trl_over_steps(loss_type, extra):
    """TRL's controller (in ``_compute_loss``) and ours (grpo_ray.entropy_control) over nine
    optimizer steps of two micro-steps on two processes: the same loss and gradients at every
    micro-step (the coefficient applied, gated by the last window's entropy), and after every step
    the same coefficient, last window entropy (summed over both micro-steps and both processes)
    and logged ``entropy_coef``."""
    config = GRPOConfig(**(dict(
        loss_type=loss_type, max_completion_length=8, use_adaptive_entropy=True, entropy_coef=0.02,
        entropy_coef_delta=0.01, entropy_coef_max=0.03, entropy_target=1.0,
    ) | extra))
    fake = trl_trainer(config, gas=2, nproc=2)
    ours = EntropyControl(config)
    applied, coefs = [], []
    for step, scale in enumerate(ENTROPY_SCALES):
        other = torch.tensor([scale * 30.0, 21.0], dtype=D)  # the other process's window: mean 1.43 x scale
        for micro in range(2):
            batch = list(random_batch(300 + 2 * step + micro))
            batch[6] = batch[6] * scale
            fake.accelerator.sync_gradients = micro == 1
            fake.accelerator.window_other = other if micro == 1 else None
            applied.append(ours.applied_coef)
            metrics, trl_metrics = compare_one_call(
                config, fake, batch, trl_inputs(config, batch, engine=False, num_items=80), engine=False,
                num_items=80, gas=2, entropy_coef=ours.applied_coef,
            )
            ours.observe(metrics)
            assert ENTROPY_SUM not in metrics  # taken out, not logged
        logged = ours.step(lambda totals: {"sum": totals["sum"] + other[0].item(), "tokens": totals["tokens"] + 21.0})
        assert logged == {"entropy_coef": pytest.approx(fake.entropy_coef, abs=1e-15)}
        assert trl_metrics["entropy_coef"] == pytest.approx(fake.entropy_coef, abs=1e-15)
        assert ours.last_entropy == pytest.approx(fake._last_world_entropy, rel=1e-12)
        coefs.append(ours.coef)
    # The run went through every branch of the rule (and the test would catch a wrong one).
    assert applied[:2] == [0.0, 0.0]  # first window: no measurement yet, no bonus
    assert 0.0 in applied[2:] and max(applied) == pytest.approx(0.03) and max(coefs) == pytest.approx(0.03)
    assert coefs[-2] == pytest.approx(config.entropy_coef_min)


# Each knob value the cross-check uses, against the config without it: on the cross-check's
# batches the knob must move the loss or its gradient, or equality with TRL would prove nothing.
KNOB_CHANGES = [
    (dict(loss_type="dapo"), dict(epsilon_high=0.28)),
    (dict(loss_type="dapo"), dict(delta=1.3)),
    (dict(loss_type="dapo"), dict(importance_sampling_level="sequence")),
    (dict(loss_type="grpo", importance_sampling_level="sequence"), dict(loss_type="luspo")),
    (dict(loss_type="cispo", epsilon_high=5.0), dict(epsilon_high=1.2)),
    (dict(loss_type="cispo", epsilon_high=1.2), dict(epsilon_high=1.5)),
    (dict(loss_type="sapo"), dict(sapo_temperature_pos=4.0)),
    (dict(loss_type="sapo"), dict(sapo_temperature_neg=0.5)),
    *[(dict(loss_type="vespo", vllm_importance_sampling_mode="token_mask"), {k: v})
      for k, v in OBJECTIVES["vespo"][1].items()],
    *[(dict(loss_type="dapo", vllm_importance_sampling_correction=False), {"vllm_importance_sampling_correction": True} | e)
      for e in list(ENGINES.values())[2:]],
    (dict(loss_type="dapo", vllm_importance_sampling_mode="token_truncate"), dict(vllm_importance_sampling_clip_min=0.5)),
    (dict(loss_type="dapo", vllm_importance_sampling_mode="sequence_mask"), dict(vllm_importance_sampling_clip_min=0.5)),
    (dict(loss_type="dapo"), dict(off_policy_mask_threshold=0.05)),
    *[(dict(loss_type="dapo"), dict(top_entropy_quantile=q)) for q in (0.25, 0.5, 0.0)],
    (dict(loss_type="dapo", beta=0.04, use_bias_correction_kl=False), dict(use_bias_correction_kl=True)),
    (dict(loss_type="dapo"), dict(beta=0.04)),
    (dict(loss_type="dapo"), dict(entropy_coef=0.05)),
    (dict(loss_type="dapo", top_entropy_quantile=0.25), dict(entropy_coef=-0.1)),
]


def test_every_knob_changes_the_result_on_the_trl_batches():
    def result(config, seed):
        logps0, old, ref, sampling, adv, mask, ent = random_batch(seed)
        logps = logps0.clone().requires_grad_(True)
        loss, _ = grpo_loss(logps, old, ref, adv, mask, config, sampling_logps=sampling, entropies=ent)
        loss.backward()
        return loss.detach(), logps.grad

    for base, change in KNOB_CHANGES:
        a = GRPOConfig(max_completion_length=8, **base)
        b = dataclasses.replace(a, **change)
        moved = 0
        for seed in range(100, 110):
            (la, ga), (lb, gb) = result(a, seed), result(b, seed)
            moved += not torch.allclose(la, lb, rtol=0, atol=1e-9) or not torch.allclose(ga, gb, rtol=0, atol=1e-9)
            if moved == 3:  # it bites on several batches, not on one by luck
                break
        assert moved == 3, (base, change)
