"""Numerical guards of the loop: what happens to non-finite rewards and signal-free groups.

Policy (the README's "Numerical guards" paragraph says the same):

* a completion with an infinite reward (from any function) is dropped: all its rewards become
  NaN (so it is left out of its group's mean and deviation) and the driver masks it out of the
  loss; the count is logged (``dropped_samples``). NaN itself keeps its contract meaning, "does
  not apply";
* a non-finite loss or gradient skips the optimizer step (in the learner, ``skipped``);
* a group whose scored completions all got the same reward (or fewer than two were scored)
  carries no learning signal: counted and logged (``frac_reward_zero_std``, TRL's name).

Pure tensor code: no Ray, no model.
"""

from __future__ import annotations

import torch


def drop_nonfinite_rewards(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rewards [N, R]`` with every row holding an infinity set to NaN, and that row mask ``[N]``."""
    dropped = torch.isinf(rewards).any(dim=1)  # [N]
    return rewards.masked_fill(dropped.unsqueeze(1), float("nan")), dropped


def zero_variance_groups(total: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[P]`` bool: groups (``group_size`` consecutive rows of ``total [N]``) without a reward spread."""
    grouped = total.view(-1, group_size)  # [P, G]
    scored = ~torch.isnan(grouped)
    high = torch.where(scored, grouped, -torch.inf).amax(dim=1)
    low = torch.where(scored, grouped, torch.inf).amin(dim=1)
    return (scored.sum(dim=1) < 2) | (high == low)
