"""The policy term of each ``loss_type``: per-token losses from the importance ratio and advantage.

Pure tensor math. ``coef`` is the importance ratio pi/pi_old: ``[B, T]`` per token or ``[B, 1]``
per sequence (``importance_sampling_level``, see :func:`importance_log_weights`); ``adv`` is
``[B, 1]``. Each function returns the per-token loss (``[B, T]`` or ``[B, 1]``, broadcast
against the mask by the reducer); :func:`policy_term` picks one by ``config.loss_type`` and
returns it with the metrics TRL 1.16's ``GRPOTrainer._compute_loss`` logs for that type.
"""

from __future__ import annotations

import math

import torch

from grpo_ray.config import CLIPPED_LOSS_TYPES, GRPOConfig

Metrics = dict[str, torch.Tensor]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked tokens; a ``[B, 1]`` (sequence-level) tensor is averaged over rows."""
    if x.shape[1] == 1:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def importance_log_weights(log_ratio: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log(pi / pi_old) from the per-token ``log_ratio`` ``[B, T]``: itself per token, or ``[B, 1]``
    per sequence (GSPO, Zheng et al. 2025, arXiv:2507.18071: the length-normalised sequence
    log-ratio, a mean over the row's own tokens)."""
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def clipped_surrogate(
    coef: torch.Tensor, adv: torch.Tensor, epsilon_low: float, epsilon_high: float, delta: float | None
) -> torch.Tensor:
    """PPO's clipped surrogate as GRPO uses it (Shao et al. 2024, arXiv:2402.03300, eq. 3):
    ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``; DAPO's clip-higher (Yu et al. 2025,
    arXiv:2503.14476) makes the bounds asymmetric, and two-sided GRPO (INTELLECT-2,
    arXiv:2505.07291) also caps the unclipped ``r`` at ``delta``."""
    clipped = torch.clamp(coef, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        coef = torch.clamp(coef, max=delta)
    return -torch.min(coef * adv, clipped * adv)


def cispo_surrogate(coef: torch.Tensor, adv: torch.Tensor, logps: torch.Tensor, epsilon_max: float) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv:2506.13585; in the one-sided form of ScaleRL, arXiv:2510.13786):
    ``-sg(min(r, eps_max)) A log pi``. The importance weight is clipped and detached, not the
    update, so every token keeps a REINFORCE gradient ``min(r, eps_max) A grad log pi``."""
    return -torch.clamp(coef, max=epsilon_max).detach() * adv * logps


def sapo_surrogate(coef: torch.Tensor, adv: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """SAPO (Soft Adaptive Policy Optimization, arXiv:2511.20347): the hard clip becomes the
    smooth gate ``f(r) = 4 / tau * sigmoid(tau (r - 1))`` (slope 1 at r = 1, like the
    unclipped surrogate), loss ``-f(r) A``, with ``tau = tau_pos`` where A > 0 and ``tau_neg``
    otherwise (a faster decay for negative advantages)."""
    tau = torch.where(adv > 0, tau_pos, tau_neg)
    return -torch.sigmoid(tau * (coef - 1)) * 4 / tau * adv


@torch.no_grad()
def vespo_gamma_weights(
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    engine_is_ratio: torch.Tensor | None,
    config: GRPOConfig,
) -> torch.Tensor:
    """VESPO's sequence weight (Variational Sequence-Level Soft Policy Optimization,
    arXiv:2602.10693): ``phi(w) = exp(lambda) w^k exp(-lambda w)`` (a Gamma-shaped kernel with
    phi(1) = 1) of the sequence ratio ``w = prod_t pi/pi_old`` (times the engine correction
    ``pi_old/pi_sampler`` when given), with (k, lambda) = (``vespo_k_pos``, ``vespo_lambda_pos``)
    for A >= 0 and the ``_neg`` pair otherwise. Computed in log space with the reference
    implementation's clamps (per-token log-ratios to [-20, 20], log w to [log 1e-8, 20]).
    Detached: phi only scales the gradient. ``[B, 1]``."""
    log_floor = math.log(1e-8)
    log_w = (torch.clamp(log_ratio, -20.0, 20.0) * mask).sum(-1, keepdim=True)
    if engine_is_ratio is not None:
        log_w = log_w + torch.clamp(torch.log(engine_is_ratio), log_floor, 20.0).sum(-1, keepdim=True)
    log_w = torch.clamp(log_w, log_floor, 20.0)
    nonneg = adv >= 0
    k = torch.where(nonneg, config.vespo_k_pos, config.vespo_k_neg)
    lam = torch.where(nonneg, config.vespo_lambda_pos, config.vespo_lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def policy_term(
    config: GRPOConfig,
    logps: torch.Tensor,
    log_ratio: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    engine_is_ratio: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
    """The per-token policy loss of ``config.loss_type``, the importance ratio ``r`` it was
    built on (``[B, T]`` or ``[B, 1]``, for the bias-corrected KL), and its metrics.

    ``log_ratio``: ``[B, T]`` log(pi / pi_old) per token; ``engine_is_ratio``: the engine
    correction (:func:`grpo_ray.loss_weights.engine_importance_weights`), used here only by
    vespo, which folds it into its sequence weight (the other types multiply it on afterwards).
    """
    coef = torch.exp(importance_log_weights(log_ratio, mask, config.importance_sampling_level))
    metrics: Metrics = {}
    lt = config.loss_type
    if lt in CLIPPED_LOSS_TYPES:
        eps_low, eps_high = config.epsilon, config.epsilon_high_value
        per_token = clipped_surrogate(coef, adv, eps_low, eps_high, config.delta)
        # delta > 1 + epsilon_high (the config checks it), so the cap never moves these counts.
        is_low = (coef < 1 - eps_low) & (adv < 0)
        is_high = (coef > 1 + eps_high) & (adv > 0)
        metrics["clip_ratio/low_mean"] = masked_mean(is_low.to(logps.dtype), mask).detach()
        metrics["clip_ratio/high_mean"] = masked_mean(is_high.to(logps.dtype), mask).detach()
        metrics["clip_ratio/region_mean"] = masked_mean((is_low | is_high).to(logps.dtype), mask).detach()
    elif lt == "cispo":
        per_token = cispo_surrogate(coef, adv, logps, config.epsilon_high_value)
        clipped = (coef > config.epsilon_high_value) & (adv > 0)
        metrics["cispo_clip_ratio"] = masked_mean(clipped.to(logps.dtype), mask).detach()
    elif lt == "sapo":
        per_token = sapo_surrogate(coef, adv, config.sapo_temperature_pos, config.sapo_temperature_neg)
    elif lt == "vespo":
        phi = vespo_gamma_weights(log_ratio, mask, adv, engine_is_ratio, config)
        per_token = -phi * adv * logps
        metrics["vespo/phi_seq_mean"] = phi.mean()
    else:
        raise ValueError(f"unknown loss_type {lt!r}")
    return per_token, coef, metrics
