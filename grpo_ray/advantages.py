"""Group-relative advantages (GRPO, Shao et al. 2024, arXiv:2402.03300, eq. 3).

Pure tensor math: no Ray, no model. Matches TRL's ``GRPOTrainer`` reward aggregation and
scaling for every ``scale_rewards`` mode.
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Added to the standard deviation before dividing, as TRL does, so that a group whose
#: completions all scored the same gets advantage 0 rather than 0/0.
STD_EPS = 1e-4


def combine_rewards(rewards: torch.Tensor, reward_weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted sum over reward functions, skipping NaN ("does not apply").

    rewards: ``[N, R]``; returns ``[N]``. A row where every function is NaN is unscorable and
    stays NaN (TRL >= 1.x does the same), so it can be left out of its group's statistics.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, R] (samples x reward functions), got shape {tuple(rewards.shape)}")
    weights = torch.ones(rewards.shape[1], dtype=rewards.dtype, device=rewards.device)
    if reward_weights is not None:
        if len(reward_weights) != rewards.shape[1]:
            raise ValueError(f"{len(reward_weights)} reward_weights for {rewards.shape[1]} reward functions")
        weights = torch.as_tensor(reward_weights, dtype=rewards.dtype, device=rewards.device)
    total = torch.nansum(rewards * weights.unsqueeze(0), dim=1)  # [N]
    return total.masked_fill(torch.isnan(rewards).all(dim=1), float("nan"))


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased (n - 1) standard deviation ignoring NaN, like ``torch.std`` on the non-NaN values."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    valid = ~torch.isnan(x)
    count = valid.sum() if dim is None else valid.sum(dim=dim)
    var = torch.nanmean((x - mean) ** 2) if dim is None else torch.nanmean((x - mean) ** 2, dim=dim)
    var = var * count / (count - 1)
    return var.sqrt()


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    reward_weights: Sequence[float] | None = None,
    scale_rewards: str = "group",
) -> torch.Tensor:
    """Advantage of each completion: its reward minus its group's mean, optionally scaled.

    ``rewards`` is ``[N, R]`` with ``N = prompts x group_size``; rows ``g*G .. g*G+G-1``
    are the completions of prompt ``g``. The total reward ``r`` is the weighted NaN-skipping
    sum over the R functions, then::

        A_i = r_i - mean(r over i's group)
        group: A_i /= std(r over i's group) + 1e-4        (GRPO)
        batch: A_i /= std(r over the whole batch) + 1e-4  (PPO-Lite, Liu et al. 2025)
        none:  no scaling                                  (Dr. GRPO, arXiv:2503.20783)

    ``std`` is the unbiased (n-1) estimator, as ``torch.std`` and TRL use. A completion that
    no function scored (all NaN) is left out of the means and deviations and gets advantage 0,
    as in TRL. Returns ``[N]``.
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    total = combine_rewards(rewards, reward_weights)  # [N]
    if group_size < 2 or total.numel() % group_size:
        raise ValueError(f"{total.numel()} rewards do not split into groups of {group_size} (>= 2)")
    grouped = total.view(-1, group_size)  # [P, G]
    advantages = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).reshape(-1)  # [N]
    if scale_rewards == "group":
        advantages = advantages / (nanstd(grouped, dim=1).repeat_interleave(group_size) + STD_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (nanstd(total) + STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0)
