"""Weights and masks on the per-token policy loss: which tokens train, and how much.

Pure tensor math, one function per knob of TRL 1.16's ``GRPOConfig``:

* :func:`engine_importance_weights`: ``vllm_importance_sampling_mode`` (the rollout engine's
  numerics differ from the learner's: truncated or masked importance sampling, per token or
  per sequence);
* :func:`off_policy_sequence_mask`: ``off_policy_mask_threshold`` (DeepSeek-V3.2's OPSM);
* :func:`high_entropy_mask`: ``top_entropy_quantile`` (train on the high-entropy "forking"
  tokens only).

Shapes: per-token tensors ``[B, T]``, advantages ``[B, 1]``; every function but
:func:`high_entropy_mask` (a quantile over a pool of tokens) is local to each row.
"""

from __future__ import annotations

import math

import torch


def engine_importance_weights(
    old_logps: torch.Tensor,
    sampling_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> torch.Tensor:
    """The correction pi_old / pi_sampler for the rollout engine sampling with other numerics.

    ``token_*`` modes: one ratio per token ``[B, T]``; ``sequence_*`` modes: the product over the
    row's tokens ``[B, 1]``. ``*_truncate``: clamp to [C_min, C_max] (truncated IS, TIS: Yao et
    al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training");
    ``*_mask``: set ratios outside [C_min, C_max] to 0 (masked IS, MIS: Liu et al. 2025, "When
    Speed Kills Stability: Demystifying RL Collapse from the Training-Inference Mismatch").
    A None bound is open. A NaN sampler logprob (the engine gave none) and padding count as no
    mismatch (log-ratio 0), as in TRL.
    """
    level, _, constraint = mode.partition("_")
    if level not in ("token", "sequence") or constraint not in ("truncate", "mask"):
        raise ValueError(f"unknown vllm_importance_sampling_mode {mode!r}")
    log_diff = torch.nan_to_num((old_logps - sampling_logps) * mask, nan=0.0)
    if level == "sequence":
        log_diff = log_diff.sum(-1, keepdim=True)
    ratio = torch.exp(log_diff)
    if constraint == "truncate":
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def off_policy_sequence_mask(
    adv: torch.Tensor,
    logps: torch.Tensor,
    behaviour_logps: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Off-policy sequence masking (DeepSeek-V3.2, arXiv:2512.02556, eq. 9): drop a completion
    with a negative advantage whose mean per-token KL(pi_behaviour || pi) estimate,
    ``mean_t(log pi_behaviour - log pi)``, exceeds ``threshold`` (delta in the paper). Learning
    from its own mistakes far off-policy destabilises training; positive samples are kept.

    ``behaviour_logps``: the engine's (sampler) logprobs when given, else the old policy's; NaN
    entries carry no evidence (0). ``[B, 1]``, 1 = keep.
    """
    kl = torch.nan_to_num(behaviour_logps - logps.detach(), nan=0.0)
    mean_kl = (kl * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    return ((adv >= 0) | (mean_kl <= threshold)).to(mask.dtype)


def high_entropy_mask(
    entropies: torch.Tensor, mask: torch.Tensor, quantile: float, pool: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep only the top-``quantile`` fraction of tokens by entropy ("Beyond the 80/20 Rule:
    High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning", Wang et al. 2025,
    arXiv:2506.01939, rho = 0.2 in the paper): a token trains if its entropy is >= the
    (1 - quantile) quantile (linear interpolation) of the pool; 0 keeps only the maximum.

    ``pool``: the 1-D entropies the quantile is taken over: every loss token of the user's
    micro-batch on every process (TRL gathers across processes); None = this call's own masked
    entropies, so a caller that slices a micro-batch or runs several processes passes it.
    Returns a ``[B, T]`` bool mask (padding always False).
    """
    keep = mask.bool()
    if pool is None:
        pool = entropies.detach()[keep]
    if pool.numel() == 0:
        return torch.zeros_like(keep)
    threshold = torch.quantile(pool.to(entropies.dtype), 1.0 - quantile)
    return (entropies.detach() * mask >= threshold) & keep
