"""The GRPO objective on per-token log-probabilities: clipped surrogate, KL, IS correction.

Pure tensor math (no Ray, no model, no GPU needed). All per-token tensors are ``[B, T]``
over completion tokens, advantages ``[B]``. The value and gradient equal TRL's
``GRPOTrainer._compute_loss`` for one process and one accumulation step; the two keyword
arguments ``gradient_accumulation_steps`` and ``num_processes`` reproduce its scaling when
there are more.

Per token t of completion i, with ratio r = exp(logp - logp_old) (or, at sequence level,
the exponentiated masked mean log-ratio of the completion, GSPO)::

    r_clip = clamp(r, 1 - epsilon, 1 + epsilon_high)
    r      = min(r, delta)                          if delta is set (two-sided GRPO)
    l_t    = -min(r * A_i, r_clip * A_i)
    l_t   *= min(exp(logp_old - logp_sampler), C)   if sampler logprobs are given (TIS)
    l_t   += beta * (exp(ref - logp) - (ref - logp) - 1)   (k3 KL estimator, Schulman 2020)

and the per-token losses are reduced by the ``loss_type`` normaliser (see ``LOSS_REDUCERS``).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from grpo_ray.config import GRPOConfig

Metrics = dict[str, torch.Tensor]
Count = torch.Tensor | float  # a token count: a 0-dim tensor, or a float known on the host


# --- loss_type normalisers ------------------------------------------------------------------


# Each reducer sees the per-token losses of a micro-batch, or of a slice of its rows: ``rows``
# and ``tokens`` are then the whole micro-batch's rows and (>= 1) loss-mask tokens, and the
# slices' losses sum to the micro-batch's.


def _reduce_grpo(
    per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, num_items: torch.Tensor, rows: int, tokens: Count
) -> torch.Tensor:
    """GRPO (Shao et al. 2024, arXiv:2402.03300, eq. 3): mean over each sequence's tokens,
    then mean over sequences. Shorter completions weigh more per token (length bias)."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / rows


def _reduce_dr_grpo(
    per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, num_items: torch.Tensor, rows: int, tokens: Count
) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783):
    sum over tokens divided by the constant B x max_completion_length, removing length bias."""
    return (per_token * mask).sum() / (rows * config.max_completion_length)


def _reduce_dapo(
    per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, num_items: torch.Tensor, rows: int, tokens: Count
) -> torch.Tensor:
    """DAPO (Yu et al. 2025, arXiv:2503.14476, token-level policy gradient loss): sum over
    tokens divided by the number of completion tokens in the whole generation batch, so every
    token of the batch weighs the same whatever micro-batch it lands in."""
    return (per_token * mask).sum() / num_items


def _reduce_bnpo(
    per_token: torch.Tensor, mask: torch.Tensor, config: GRPOConfig, num_items: torch.Tensor, rows: int, tokens: Count
) -> torch.Tensor:
    """BNPO (batch-normalised policy optimisation, as in TRL): sum over tokens divided by the
    number of completion tokens of this local micro-batch only."""
    return (per_token * mask).sum() / tokens


LOSS_REDUCERS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": _reduce_grpo,
    "dr_grpo": _reduce_dr_grpo,
    "dapo": _reduce_dapo,
    "bnpo": _reduce_bnpo,
}


# --- the loss ---------------------------------------------------------------------------------


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked tokens; a ``[B, 1]`` (sequence-level) tensor is averaged plainly."""
    if x.shape[1] == 1:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def needs_whole_micro_batch(config: GRPOConfig) -> bool:
    """True when the loss needs a statistic of a whole micro-batch's logprobs or entropies
    (a quantile threshold, say), so that it cannot be computed on slices of its rows with
    ``micro_batch_rows`` / ``micro_batch_tokens``; the learner then runs whole micro-batches.
    Every loss here sums over rows and tokens, so none does."""
    return False


def importance_log_weights(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, level: str
) -> torch.Tensor:
    """log(pi / pi_old): ``[B, T]`` per token, or ``[B, 1]`` per sequence (GSPO, Zheng et al.
    2025, arXiv:2507.18071: the length-normalised sequence log-ratio)."""
    log_ratio = logps - old_logps  # [B, T]
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def truncated_importance_weights(old_logps: torch.Tensor, sampling_logps: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework
    Secretly Brings You Off-Policy RL Training"): min(pi_old / pi_sampler, C) per token, which
    corrects for the rollout engine sampling from slightly different numerics. ``[B, T]``."""
    # A NaN sampler logprob (the engine gave none) means no correction for that token.
    return torch.exp(torch.nan_to_num(old_logps - sampling_logps, nan=0.0)).clamp(max=cap)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: GRPOConfig,
    *,
    num_items_in_batch: torch.Tensor | float | None = None,
    sampling_logps: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    gradient_accumulation_steps: int = 1,
    steps_per_generation: int = 1,
    num_processes: int = 1,
    micro_batch_rows: int | None = None,
    micro_batch_tokens: Count | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """The GRPO loss of one micro-batch (or of a slice of its rows) and its metrics.

    Args:
        logps: ``[B, T]`` log-probabilities of the completion tokens under the policy (with grad).
        old_logps: ``[B, T]`` under the policy that generated the batch; None means the batch
            is on-policy (``num_iterations == 1``) and the detached ``logps`` stand in.
        ref_logps: ``[B, T]`` under the reference policy; needed only when ``config.beta > 0``.
        advantages: ``[B]``.
        mask: ``[B, T]`` 1 for completion tokens that count, 0 for padding (any dtype).
        config: the algorithm's knobs.
        num_items_in_batch: completion tokens in the whole generation batch (all processes),
            the ``dapo`` normaliser; None means ``mask.sum()``.
        sampling_logps: ``[B, T]`` the rollout engine's logprobs; with
            ``config.vllm_importance_sampling_correction`` they enable TIS.
        entropies: ``[B, T]`` per-token entropies, only reported in the metrics.
        gradient_accumulation_steps, steps_per_generation, num_processes: TRL's scaling
            across micro-steps and ranks. Every loss_type but dapo is divided by the
            accumulation steps. dapo's normaliser, which counts the whole generation batch, is
            rescaled to one accumulation window: ``num_items / num_processes x
            gradient_accumulation_steps / steps_per_generation`` (DDP averages gradients).
        micro_batch_rows, micro_batch_tokens: when ``logps`` holds a slice of the rows of a
            micro-batch (the learner's execution batches), that micro-batch's rows and
            loss-mask tokens (``mask.sum()`` over all its rows; a host float or a 0-dim
            tensor). Every loss normaliser then is the micro-batch's, so the slices' losses
            sum to the micro-batch's loss (the metrics stay the slice's own). None = the
            slice's own ``B`` and ``mask.sum()``.

    Returns:
        ``(loss, metrics)``; metrics are detached 0-dim tensors: ``clip_ratio/low_mean``,
        ``clip_ratio/high_mean``, ``clip_ratio/region_mean``, and ``kl``, ``entropy``,
        ``is_ratio_mean`` when they apply.
    """
    if logps.dim() != 2:
        raise ValueError(f"logps must be [B, T], got shape {tuple(logps.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be [B]={tuple(logps.shape[:1])}, got {tuple(advantages.shape)}")
    if config.beta != 0.0 and ref_logps is None:
        raise ValueError("config.beta > 0 needs ref_logps (the reference policy's logprobs)")
    mask = mask.to(logps.dtype)
    rows = logps.shape[0] if micro_batch_rows is None else micro_batch_rows
    tokens: Count = mask.sum() if micro_batch_tokens is None else micro_batch_tokens
    tokens = tokens.clamp(min=1.0) if torch.is_tensor(tokens) else max(tokens, 1.0)
    if old_logps is None:
        old_logps = logps.detach()
    adv = advantages.unsqueeze(1)  # [B, 1]

    log_w = importance_log_weights(logps, old_logps, mask, config.importance_sampling_level)
    coef_1 = torch.exp(log_w)  # [B, T] or [B, 1]
    coef_2 = torch.clamp(coef_1, 1 - config.epsilon, 1 + config.epsilon_high_value)
    if config.delta is not None:
        coef_1 = torch.clamp(coef_1, max=config.delta)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)  # [B, T]

    metrics: Metrics = {}
    if sampling_logps is not None and config.vllm_importance_sampling_correction:
        is_ratio = truncated_importance_weights(old_logps, sampling_logps, config.vllm_importance_sampling_cap)
        per_token = per_token * is_ratio
        metrics["is_ratio_mean"] = _masked_mean(is_ratio, mask).detach()
    if config.beta != 0.0:
        delta_ref = ref_logps - logps
        per_token_kl = torch.exp(delta_ref) - delta_ref - 1  # [B, T] k3 estimator
        per_token = per_token + config.beta * per_token_kl
        metrics["kl"] = _masked_mean(per_token_kl, mask).detach()

    if num_items_in_batch is None:  # no batch count given: the micro-batch's tokens
        num_items_in_batch = mask.sum() if micro_batch_tokens is None else micro_batch_tokens
    num_items = torch.as_tensor(num_items_in_batch, dtype=logps.dtype, device=logps.device)
    num_items = num_items.clamp(min=1.0) / num_processes * gradient_accumulation_steps / steps_per_generation
    loss = LOSS_REDUCERS[config.loss_type](per_token, mask, config, num_items, rows, tokens)
    if config.loss_type != "dapo":
        loss = loss / gradient_accumulation_steps

    is_low = (coef_1 < 1 - config.epsilon) & (adv < 0)
    is_high = (coef_1 > 1 + config.epsilon_high_value) & (adv > 0)
    metrics["clip_ratio/low_mean"] = _masked_mean(is_low.to(logps.dtype), mask).detach()
    metrics["clip_ratio/high_mean"] = _masked_mean(is_high.to(logps.dtype), mask).detach()
    metrics["clip_ratio/region_mean"] = _masked_mean((is_low | is_high).to(logps.dtype), mask).detach()
    if entropies is not None:
        metrics["entropy"] = _masked_mean(entropies.detach(), mask)
    return loss, metrics


def truncated_completions(completion_ids: torch.Tensor, eos_token_ids: Iterable[int]) -> torch.Tensor:
    """``[B]`` True for completions that never produced an end-of-sequence token."""
    eos = torch.as_tensor(list(eos_token_ids), device=completion_ids.device)
    return ~torch.isin(completion_ids, eos).any(dim=1)


def mask_truncated_completions(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Zero the mask rows of truncated completions (``mask_truncated_completions``, DAPO).

    mask ``[B, T]``, truncated ``[B]`` bool; returns a new mask of the same dtype.
    """
    return mask * (~truncated).unsqueeze(1).to(mask.dtype)


# --- the loss from hidden states, chunked over tokens and vocabulary ----------------------------


def chunked_grpo_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    config: GRPOConfig,
    *,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    sampling_logps: torch.Tensor | None = None,
    temperature: float = 1.0,
    num_items_in_batch: torch.Tensor | float | None = None,
    chunk_size: int = 4096,
    impl: str = "auto",
    with_entropy: bool = False,
    vocab_chunk_size: int = 8192,
    **grpo_loss_kwargs,
) -> tuple[torch.Tensor, Metrics]:
    """:func:`grpo_loss` straight from the final hidden states, never forming ``[B, T, V]`` logits.

    The per-token logprobs come from :func:`grpo_ray.logprobs.token_logprobs` (chunked over
    tokens and the vocabulary; backward recomputes each chunk), then the very same
    :func:`grpo_loss` runs on them, so the loss math exists once.

    Args:
        hidden: ``[B, T, H]`` final hidden states at the positions that predict the completion
            tokens (what the LM head would be applied to).
        lm_head_weight: ``[V, H]``; gets a gradient when it requires grad (full fine-tuning),
            none when frozen (LoRA).
        completion_ids: ``[B, T]`` the completion tokens.
        mask, advantages, config, old_logps, ref_logps, sampling_logps, num_items_in_batch: as
            in :func:`grpo_loss`.
        temperature: the sampling temperature the logits are divided by.
        chunk_size: tokens per chunk (``ModelConfig.logprob_chunk_size``).
        impl: 'auto', 'torch', 'triton' or 'full' (``ModelConfig.logprob_impl``).
        with_entropy: also compute per-token entropies and report them as ``metrics['entropy']``
            (otherwise an ``entropies`` keyword, if given, is passed through as in grpo_loss).
        vocab_chunk_size: vocabulary entries per chunk.
        **grpo_loss_kwargs: passed on to :func:`grpo_loss` (``gradient_accumulation_steps``,
            ``steps_per_generation``, ``num_processes``).
    """
    from grpo_ray.logprobs import token_logprobs  # local: keeps `import grpo_ray.loss` light

    out = token_logprobs(
        hidden, lm_head_weight, completion_ids,
        temperature=temperature, chunk_size=chunk_size, impl=impl, with_entropy=with_entropy,
        vocab_chunk_size=vocab_chunk_size,
    )
    given_entropies = grpo_loss_kwargs.pop("entropies", None)
    logps, entropies = out if with_entropy else (out, given_entropies)
    return grpo_loss(
        logps, old_logps, ref_logps, advantages, mask, config,
        num_items_in_batch=num_items_in_batch, sampling_logps=sampling_logps, entropies=entropies,
        **grpo_loss_kwargs,
    )
