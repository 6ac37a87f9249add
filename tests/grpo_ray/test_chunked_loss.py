"""grpo_ray.loss.chunked_grpo_loss on CPU in float64: the same loss value, metrics and
gradients (to hidden states and to a trainable or frozen LM head) as grpo_loss on logprobs
from the full [B, T, V] logits, for every loss_type and importance-sampling level, with KL
(beta > 0), truncated importance sampling, old logprobs, temperature 0.7, a fully masked row,
and sizes that are not multiples of the token or vocabulary chunks; on each path: fused
(gradient in forward) with several row chunks, with one row per chunk, and with rows longer
than the chunk (two passes), and the unfused logprobs-then-loss path."""

import itertools

import pytest
import torch

from grpo_ray import logprobs, loss as loss_module
from grpo_ray.config import CLIPPED_LOSS_TYPES, LOSS_TYPES, GRPOConfig
from grpo_ray.logprobs import full_logprobs
from grpo_ray.loss import chunked_grpo_loss, entropy_bonus_enabled, grpo_loss, needs_whole_micro_batch

D = torch.float64
B, T, H, V = 4, 11, 8, 53  # 44 tokens: chunks of 5 tokens and 16 vocabulary entries are ragged
TEMP = 0.7
# What a loss_type needs besides its name to be a valid config.
NEEDS = {
    "cispo": {"epsilon_high": 5.0},
    "luspo": {"importance_sampling_level": "sequence"},
    "vespo": {"vllm_importance_sampling_mode": "token_truncate"},
}


def config_for(loss_type, **kw):
    return GRPOConfig(loss_type=loss_type, max_completion_length=T, **(NEEDS.get(loss_type, {}) | kw))


def inputs(seed=0, weight_grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=D, requires_grad=True)
    weight = (torch.randn(V, H, generator=g, dtype=D) / H**0.5 * 3).requires_grad_(weight_grad)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=D)
    mask[1] = 0.0  # fully masked completion
    mask[2, 6:] = 0.0
    mask[3, 9:] = 0.0
    advantages = torch.tensor([1.0, -0.5, -1.2, 0.7], dtype=D)
    with torch.no_grad():
        base = full_logprobs(hidden, weight, ids, TEMP)
        old = base + 0.3 * torch.randn(B, T, generator=g, dtype=D)  # ratios both sides of the clip
        ref = base + 0.2 * torch.randn(B, T, generator=g, dtype=D)
        sampling = old + 0.4 * torch.randn(B, T, generator=g, dtype=D)
    return hidden, weight, ids, mask, advantages, old, ref, sampling


# path: chunked_grpo_loss keywords. Fused: 22 tokens = 2 rows per chunk (rows 0-1, 2-3); 11 = one
# row per chunk; 5 < T = 11: every row in two passes (logprobs, then gradient with recompute).
PATHS = {
    "fused-2rows": dict(chunk_size=22),
    "fused-1row": dict(chunk_size=11),
    "fused-long-rows": dict(chunk_size=5),
    "unfused": dict(fused=False, chunk_size=5),
}


def run_both(config, *, weight_grad=True, use_old=True, use_sampling=True, impl="torch", extra=None, path="fused-2rows",
             num_items=70.0):
    hidden, weight, ids, mask, adv, old, ref, sampling = inputs(weight_grad=weight_grad)
    extra = extra or {}
    kw = dict(
        old_logps=old if use_old else None,
        ref_logps=ref if config.beta else None,
        sampling_logps=sampling if use_sampling else None,
        num_items_in_batch=num_items if config.loss_type == "dapo" else None,
    )
    with_entropy = entropy_bonus_enabled(config) or needs_whole_micro_batch(config)
    loss, metrics = chunked_grpo_loss(
        hidden, weight, ids, mask, adv, config, temperature=TEMP, vocab_chunk_size=16,
        impl=impl, with_entropy=with_entropy, **kw, **extra, **PATHS[path],
    )
    params = [hidden, weight] if weight_grad else [hidden]
    grads = torch.autograd.grad(loss, params)

    logps, ent = full_logprobs(hidden, weight, ids, TEMP, with_entropy=True)
    ref_loss, ref_metrics = grpo_loss(
        logps, kw["old_logps"], kw["ref_logps"], adv, mask, config,
        num_items_in_batch=kw["num_items_in_batch"], sampling_logps=kw["sampling_logps"],
        entropies=ent if with_entropy else None, **extra,
    )
    ref_grads = torch.autograd.grad(ref_loss, params)
    return (loss, metrics, grads), (ref_loss, ref_metrics, ref_grads)


def assert_same(got, want):
    (loss, metrics, grads), (ref_loss, ref_metrics, ref_grads) = got, want
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert metrics.keys() == ref_metrics.keys()
    for k in metrics:
        torch.testing.assert_close(metrics[k], ref_metrics[k], rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert r.abs().max() > 0  # the comparison is not vacuous
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "loss_type,level,beta",
    [
        (lt, level, beta)
        for lt, level, beta in itertools.product(LOSS_TYPES, ["token", "sequence"], [0.0, 0.04])
        if NEEDS.get(lt, {}).get("importance_sampling_level", level) == level and (lt, level) != ("vespo", "sequence")
    ],
)
def test_every_loss_type_matches_grpo_loss_on_full_logits(loss_type, level, beta, path):
    config = config_for(loss_type, importance_sampling_level=level, beta=beta)
    got, want = run_both(config, path=path)
    assert_same(got, want)
    if beta:
        assert "kl" in got[1]
    assert "is_ratio_mean" in got[1]  # TIS was applied


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", CLIPPED_LOSS_TYPES)
def test_frozen_head_lora_case(loss_type, level, path):
    if loss_type == "luspo" and level == "token":
        pytest.skip("luspo needs sequence-level ratios (refused at token level)")
    config = config_for(loss_type, importance_sampling_level=level, epsilon_high=0.28, delta=1.5)
    got, want = run_both(config, weight_grad=False, path=path)
    assert_same(got, want)


@pytest.mark.parametrize("path", PATHS)
def test_on_policy_without_old_logps_and_without_tis(path):
    config = GRPOConfig(loss_type="grpo", vllm_importance_sampling_correction=True)
    got, want = run_both(config, use_old=False, use_sampling=False, path=path)
    assert_same(got, want)
    assert "is_ratio_mean" not in got[1]


@pytest.mark.parametrize("path", ["fused-2rows", "unfused"])
@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_full_impl_and_scaling_kwargs_are_forwarded(loss_type, path):
    config = GRPOConfig(loss_type=loss_type, max_completion_length=T)
    extra = dict(gradient_accumulation_steps=4, steps_per_generation=4, num_processes=2)
    got, want = run_both(config, extra=extra, impl="full")
    assert_same(got, want)
    got, want = run_both(config, extra=extra, impl="torch", path=path)
    assert_same(got, want)
    plain, _ = run_both(config, impl="torch", path=path)
    assert not torch.allclose(got[0], plain[0])  # the kwargs changed the loss


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_default_normalisers_count_the_whole_batch_not_a_row_chunk(loss_type, path):
    """No num_items_in_batch and no micro-batch keywords: each normaliser is the whole batch's."""
    config = config_for(loss_type, importance_sampling_level="token" if loss_type == "vespo" else "sequence")
    got, want = run_both(config, path=path, num_items=None)
    assert_same(got, want)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_row_slices_with_micro_batch_normalisers_sum_to_the_whole(loss_type, path):
    """Seam 4: the loss of a micro-batch's row slices, each given the micro-batch's rows and
    tokens, sum to the micro-batch's loss (value and gradients)."""
    config = config_for(loss_type, importance_sampling_level="token" if loss_type == "vespo" else "sequence")
    hidden, weight, ids, mask, adv, old, _, _ = inputs()
    # (dapo's num_items_in_batch is global already)
    kw = dict(temperature=TEMP, vocab_chunk_size=16, impl="torch", num_items_in_batch=70.0, **PATHS[path])
    whole, _ = chunked_grpo_loss(hidden, weight, ids, mask, adv, config, old_logps=old, **kw)
    want = torch.autograd.grad(whole, [hidden, weight])
    parts = sum(
        chunked_grpo_loss(
            hidden[rows], weight, ids[rows], mask[rows], adv[rows], config, old_logps=old[rows],
            micro_batch_rows=B, micro_batch_tokens=mask.sum(), **kw,
        )[0]
        for rows in (slice(0, 1), slice(1, 4))
    )
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-14)
    for g, w in zip(torch.autograd.grad(parts, [hidden, weight]), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss_type,extra", [
    ("grpo", dict(entropy_coef=0.1)),
    ("dapo", dict(entropy_coef=-0.2, beta=0.04, importance_sampling_level="sequence")),
    ("bnpo", dict(entropy_coef=0.1, top_entropy_quantile=0.5)),  # takes the unfused path (whole micro-batch)
    ("cispo", dict(use_adaptive_entropy=True, entropy_coef=0.05)),  # the controller's coefficient passed in
])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_entropy_bonus_matches_grpo_loss_on_full_logits(loss_type, extra, path, weight_grad):
    """The bonus's gradient reaches the hidden states and the head through the entropies: in the
    fused path folded into each chunk's D, in the unfused one through token_logprobs' backward."""
    config = config_for(loss_type, **extra)
    kw = {"entropy_coef": 0.3} if config.use_adaptive_entropy else {}
    got, want = run_both(config, path=path, weight_grad=weight_grad, extra=kw)
    assert_same(got, want)
    no_bonus, _ = run_both(config_for(loss_type, **(extra | dict(entropy_coef=0.0, use_adaptive_entropy=False))),
                           path=path, weight_grad=weight_grad)
    assert not torch.allclose(got[2][0], no_bonus[2][0])  # the bonus moved the gradient to the hidden states
    assert "policy_loss" in got[1] and "entropy" in got[1]


@pytest.mark.parametrize("path", PATHS)
def test_entropy_bonus_on_row_slices_sums_to_the_whole(path):
    config = config_for("grpo", entropy_coef=0.2)
    hidden, weight, ids, mask, adv, old, _, _ = inputs()
    kw = dict(temperature=TEMP, vocab_chunk_size=16, impl="torch", **PATHS[path])
    whole, _ = chunked_grpo_loss(hidden, weight, ids, mask, adv, config, old_logps=old, **kw)
    want = torch.autograd.grad(whole, [hidden, weight])
    parts = sum(
        chunked_grpo_loss(
            hidden[rows], weight, ids[rows], mask[rows], adv[rows], config, old_logps=old[rows],
            micro_batch_rows=B, micro_batch_tokens=mask.sum(), **kw,
        )[0]
        for rows in (slice(0, 1), slice(1, 4))
    )
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-14)
    for g, w in zip(torch.autograd.grad(parts, [hidden, weight]), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


def test_a_loss_needing_the_whole_micro_batch_takes_the_unfused_path(monkeypatch):
    calls = []
    fused = logprobs.fused_linear_loss
    monkeypatch.setattr(logprobs, "fused_linear_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))
    config = GRPOConfig(loss_type="bnpo", max_completion_length=T)
    got, want = run_both(config)
    assert_same(got, want)
    assert calls == [1]
    # top_entropy_quantile < 1 takes a quantile over the whole micro-batch: the unfused path
    whole = config_for("bnpo", top_entropy_quantile=0.5)
    assert loss_module.needs_whole_micro_batch(whole)
    hidden, weight, ids, mask, adv, old, _, _ = inputs()
    loss, _ = chunked_grpo_loss(
        hidden, weight, ids, mask, adv, whole, old_logps=old, temperature=TEMP, vocab_chunk_size=16,
        impl="torch", with_entropy=True, chunk_size=22,
    )
    logps, ent = full_logprobs(hidden, weight, ids, TEMP, with_entropy=True)
    want, _ = grpo_loss(logps, old, None, adv, mask, whole, entropies=ent)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    assert calls == [1]  # not called again


def test_fused_gradient_is_handed_out_once_scaled_by_the_upstream_gradient():
    config = GRPOConfig(loss_type="bnpo", max_completion_length=T)
    hidden, weight, ids, mask, adv, old, _, _ = inputs()
    seen = []
    upstream = hidden * 1.0  # a node between the leaf and the loss, as the decoder is
    upstream.register_hook(lambda g: seen.append(g))
    kw = dict(temperature=TEMP, vocab_chunk_size=16, impl="torch", old_logps=old)
    loss, _ = chunked_grpo_loss(upstream, weight, ids, mask, adv, config, chunk_size=22, **kw)
    (2.5 * loss).backward(retain_graph=True)
    ref, _ = chunked_grpo_loss(hidden, weight, ids, mask, adv, config, fused=False, **kw)
    want = torch.autograd.grad(2.5 * ref, [hidden, weight])
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], want[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(hidden.grad, want[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(weight.grad, want[1], rtol=1e-10, atol=1e-13)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


@pytest.mark.parametrize("path", PATHS)
def test_entropy_metric(path):
    hidden, weight, ids, mask, adv, *_ = inputs()
    config = GRPOConfig(loss_type="bnpo")
    loss, metrics = chunked_grpo_loss(
        hidden, weight, ids, mask, adv, config, temperature=TEMP, vocab_chunk_size=16,
        impl="torch", with_entropy=True, **PATHS[path],
    )
    _, ent = full_logprobs(hidden, weight, ids, TEMP, with_entropy=True)
    want = (ent * mask).sum() / mask.sum()
    torch.testing.assert_close(metrics["entropy"], want, rtol=1e-10, atol=1e-12)
    # Without with_entropy, a caller's entropies pass through to grpo_loss.
    _, metrics2 = chunked_grpo_loss(
        hidden, weight, ids, mask, adv, config, temperature=TEMP, impl="torch", entropies=ent, **PATHS[path],
    )
    torch.testing.assert_close(metrics2["entropy"], want, rtol=1e-10, atol=1e-12)
