"""grpo_ray.loss: hand-worked values for every loss_type and knob, gradchecks in float64, and a
cross-check of value, gradient and metrics against TRL's real ``GRPOTrainer._compute_loss``."""

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from grpo_ray.config import GRPOConfig
from grpo_ray.loss import grpo_loss, mask_truncated_completions, truncated_completions

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
    loss, grad, metrics = run(cfg(loss_type="bnpo", beta=0.1), ref=ref)
    assert loss == pytest.approx((-0.5 + 0.1 * (1 - LN(2))) / 5, abs=1e-12)
    assert metrics["kl"].item() == pytest.approx((1 - LN(2)) / 5)
    assert grad[0, 0].item() == pytest.approx(-0.24)


def test_beta_without_ref_logps_raises():
    with pytest.raises(ValueError, match="ref_logps"):
        run(cfg(beta=0.1))


def test_truncated_importance_sampling_hand_worked():
    # The sampler's logprobs differ from old on two tokens of row 0: old - sampling = ln 0.5 and
    # ln 3. TIS weights min(exp(old - sampling), C=2) = [0.5, 2 (3 capped), 1], row 1 all 1.
    # Row 0 becomes [-1.1*0.5, -1.2*2, -0.5] = [-0.55, -2.4, -0.5], sum -3.45; row 1 2.3.
    # bnpo = (-3.45 + 2.3) / 5 = -0.23. is_ratio_mean = (0.5 + 2 + 1 + 1 + 1) / 5 = 1.1.
    sampling = OLD.clone()
    sampling[0, 0] -= LN(0.5)
    sampling[0, 1] -= LN(3)
    sampling[1, 2] = float("nan")  # padding: no logprob from the engine, no correction
    loss, _, metrics = run(cfg(loss_type="bnpo", vllm_importance_sampling_cap=2.0), sampling_logps=sampling)
    assert loss == pytest.approx(-0.23, abs=1e-12)
    assert metrics["is_ratio_mean"].item() == pytest.approx(1.1)
    # Switched off in the config, the sampler logprobs are ignored.
    loss, _, metrics = run(cfg(loss_type="bnpo", vllm_importance_sampling_correction=False), sampling_logps=sampling)
    assert loss == pytest.approx(-0.1, abs=1e-12) and "is_ratio_mean" not in metrics


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
    "loss_type, expected", [("grpo", 1.25 / 3), ("bnpo", 5.5 / 7), ("dapo", 5.5 / 7), ("dr_grpo", 5.5 / 12)]
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
    # grpo / bnpo / dr_grpo are divided by gradient_accumulation_steps; dapo's normaliser is
    # num_items / num_processes * gradient_accumulation_steps / steps_per_generation
    # = 20 / 2 * 2 / 4 = 5 -> -0.5 / 5 = -0.1 (TRL's formula; cross-checked below as well).
    scale = dict(gradient_accumulation_steps=2, steps_per_generation=4, num_processes=2)
    assert run(cfg(loss_type="bnpo"), **scale)[0] == pytest.approx(-0.05)
    assert run(cfg(loss_type="dr_grpo"), **scale)[0] == pytest.approx(-0.03125)
    assert run(cfg(loss_type="dapo"), num_items_in_batch=20, **scale)[0] == pytest.approx(-0.1)


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
    for lt in ("grpo", "bnpo", "dapo", "dr_grpo"):
        loss, metrics = grpo_loss(logps, None, None, t([1.0, -1.0, 0.5]), zero, cfg(loss_type=lt))
        assert loss.item() == 0 and all(torch.isfinite(v) for v in metrics.values())


# --- gradcheck ---------------------------------------------------------------------------------

# Ratios away from every kink (clip bounds 0.8 / 1.2 or 1.28, delta 1.6): unclipped, clipped
# flat (r = 1.5 with A > 0, r = 0.5 with A < 0), and on the A < 0 side above the range.
GC_RATIOS = [[1.05, 1.5, 0.6, 0.9], [0.5, 1.1, 1.4, 1.0], [0.95, 0.7, 1.3, 1.02]]
GC_ADV = [0.7, -1.3, 0.4]
GC_MASK = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"epsilon_high": 0.28, "delta": 1.6, "beta": 0.05},
        {"importance_sampling_level": "sequence", "beta": 0.05},
    ],
    ids=["plain", "clip-higher+delta+kl", "gspo+kl"],
)
def test_gradcheck(loss_type, extra):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 4, generator=gen, dtype=D) - 0.5
    ratios = t(GC_RATIOS)
    start = (old + ratios.log()).detach().requires_grad_(True)
    ref = old + 0.3 * torch.randn(3, 4, generator=gen, dtype=D)
    sampling = old + 0.2 * torch.randn(3, 4, generator=gen, dtype=D)
    config = cfg(loss_type=loss_type, **extra)

    def f(logps):
        return grpo_loss(
            logps, old, ref, t(GC_ADV), torch.tensor(GC_MASK), config,
            num_items_in_batch=17, sampling_logps=sampling,
        )[0]

    assert torch.autograd.gradcheck(f, (start,), eps=1e-6, atol=1e-8)


# --- TRL cross-check ---------------------------------------------------------------------------


def trl_compute_loss(config, logps, inputs, *, entropies, gas=1, spg=1, nproc=1, use_vllm=False):
    """Run TRL's real ``GRPOTrainer._compute_loss`` with a stand-in ``self``.

    ``_get_per_token_logps_and_entropies`` returns our ``logps`` leaf, so TRL's loss can be
    differentiated with respect to the same tensor as ours. Returns (loss, TRL's metrics).
    """
    from trl.trainer import grpo_trainer as trl_grpo  # a dev dependency: missing, the cross-checks fail
    identity = lambda x, *a, **k: x  # noqa: E731 - one process: reduce / gather do nothing
    fake = SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
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
        args=SimpleNamespace(delta=config.delta, steps_per_generation=spg, use_bias_correction_kl=False),
        accelerator=SimpleNamespace(num_processes=nproc, reduce=identity, gather=identity, gather_for_metrics=identity),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, entropies, None),
    )
    loss = trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, {k: v[-1] for k, v in fake._metrics["train"].items()}


def random_batch(seed, B=4, T=6):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=D) * 3 - 0.1
    # log-ratios up to +-0.6 so that every clip and delta bound is crossed somewhere
    logps = old + (torch.rand(B, T, generator=gen, dtype=D) - 0.5) * 1.2
    ref = logps.detach() + 0.3 * torch.randn(B, T, generator=gen, dtype=D)
    sampling = old + 0.5 * torch.randn(B, T, generator=gen, dtype=D)
    sampling[0, 1] = float("nan")  # a token the engine gave no logprob for
    adv = torch.randn(B, generator=gen, dtype=D)
    adv[2] = 0.0
    lengths = torch.tensor([T, 3, 1, 0][:B] + [T] * max(0, B - 4))  # row 3 fully masked
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    entropies = torch.rand(B, T, generator=gen, dtype=D) * 2
    return logps.detach(), old, ref, sampling, adv, mask, entropies


CLIPS = {
    "eps": {},
    "eps_high": {"epsilon_high": 0.28},
    "delta": {"delta": 1.3},
    "eps_high+delta": {"epsilon_high": 0.28, "delta": 1.5},
}


def compare_with_trl(config, seed, *, tis, num_items=None, gas=1, spg=1, nproc=1):
    logps0, old, ref, sampling, adv, mask, ent = random_batch(seed)
    cap = config.vllm_importance_sampling_cap
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
    if tis:
        # TRL's vllm_importance_sampling_mode="token_truncate" (computed in _generate_and_score_completions)
        diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
        inputs["importance_sampling_ratio"] = torch.clamp(torch.exp(diff), max=cap)

    theirs_logps = logps0.clone().requires_grad_(True)
    theirs, trl_metrics = trl_compute_loss(config, theirs_logps, inputs, entropies=ent, gas=gas, spg=spg, nproc=nproc, use_vllm=tis)
    theirs.backward()

    ours_logps = logps0.clone().requires_grad_(True)
    ours, metrics = grpo_loss(
        ours_logps, old, ref if config.beta else None, adv, mask, config,
        num_items_in_batch=num_items, sampling_logps=sampling if tis else None, entropies=ent,
        gradient_accumulation_steps=gas, steps_per_generation=spg, num_processes=nproc,
    )
    ours.backward()

    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_logps.grad, theirs_logps.grad, rtol=1e-10, atol=1e-14)
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy", "kl"):
        if key in trl_metrics or key in metrics:
            # TRL logs the clip ratios in float32 (``.float()``), hence 1e-6
            assert metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-6), key
    return metrics, trl_metrics


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_matches_trl(loss_type, level):
    # Every loss_type x level, crossed with every clip variant x beta x TIS.
    clipped = 0.0
    for (name, clip), beta, tis in itertools.product(CLIPS.items(), (0.0, 0.04), (False, True)):
        config = GRPOConfig(
            loss_type=loss_type, importance_sampling_level=level, beta=beta, max_completion_length=8,
            vllm_importance_sampling_cap=2.0, **clip,
        )
        metrics, _ = compare_with_trl(config, seed=len(name) + int(beta * 100) + tis, tis=tis)
        clipped += metrics["clip_ratio/region_mean"].item()
    assert clipped > 0  # the random batches do exercise the clipping


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_matches_trl_with_accumulation_and_processes(loss_type):
    # TRL's scaling for later accumulation steps / several ranks, and dapo's num_items_in_batch
    # counting the whole generation batch (here 3x this micro-batch's tokens).
    config = GRPOConfig(loss_type=loss_type, max_completion_length=8, epsilon_high=0.28, beta=0.04)
    compare_with_trl(config, seed=7, tis=True, num_items=30, gas=4, spg=2, nproc=2)
    compare_with_trl(config, seed=8, tis=False, num_items=10, gas=2, spg=8, nproc=1)
