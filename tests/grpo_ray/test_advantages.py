"""grpo_ray.advantages: hand-worked numbers for every scale_rewards mode, NaN handling, and
a cross-check against TRL's own advantage code (copied verbatim below as the oracle)."""

import math

import pytest
import torch

from grpo_ray.advantages import STD_EPS, combine_rewards, compute_advantages, nanstd

E = STD_EPS  # 1e-4, added to the std before dividing (as TRL)


def col(*values):
    """A one-reward-function [N, 1] rewards tensor."""
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)


# Two prompts, G = 3, whose groups differ in mean, spread and shape, so each group's statistics
# must reach its own rows (repeat_interleave order; with repeat, row 4 would be divided by
# group 0's std, 5 / 1 instead of 5 / 7; a mean broadcast with repeat would centre row 1 on 8).
# Group 0 scores {0, 1, 2}: mean 1, unbiased std sqrt((1 + 0 + 1) / 2) = 1.
# Group 1 scores {11, 13, 0}: mean 8, deviations [3, 5, -8], std sqrt((9 + 25 + 64) / 2) = 7.
# Centred: [-1, 0, 1, 3, 5, -8].
# Whole batch {0, 1, 2, 11, 13, 0}: mean 4.5, squared deviations 20.25 + 12.25 + 6.25 + 42.25
# + 72.25 + 20.25 = 173.5, unbiased variance 173.5 / 5 = 34.7, std sqrt(34.7) = 5.89067059...
REWARDS = col(0, 1, 2, 11, 13, 0)
CENTRED = [-1.0, 0, 1, 3, 5, -8]


def test_group_mode_hand_worked():
    expected = [-1 / (1 + E), 0, 1 / (1 + E), 3 / (7 + E), 5 / (7 + E), -8 / (7 + E)]
    got = compute_advantages(REWARDS, group_size=3, scale_rewards="group")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_batch_mode_hand_worked():
    std = math.sqrt(34.7)
    expected = [v / (std + E) for v in CENTRED]
    got = compute_advantages(REWARDS, group_size=3, scale_rewards="batch")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_none_mode_hand_worked():
    # Dr. GRPO: centred only.
    got = compute_advantages(REWARDS, group_size=3, scale_rewards="none")
    torch.testing.assert_close(got, torch.tensor(CENTRED, dtype=torch.float64))


def test_default_mode_is_group():
    torch.testing.assert_close(compute_advantages(REWARDS, 3), compute_advantages(REWARDS, 3, scale_rewards="group"))


def test_equal_rewards_give_zero_advantage():
    # {5, 5}: mean 5, std 0 -> 0 / (0 + 1e-4) = 0, not 0/0.
    got = compute_advantages(col(5, 5, 1, 3), group_size=2)
    assert got[0] == 0 and got[1] == 0
    # {1, 3}: mean 2, std sqrt(2) -> -+1 / (sqrt(2) + 1e-4)
    torch.testing.assert_close(got[2:], torch.tensor([-1, 1], dtype=torch.float64) / (math.sqrt(2) + E))


def test_reward_weights_hand_worked():
    # Two functions, weights (1, 0.5). Totals: 1 + 0.5*2 = 2, 0 + 0 = 0, 2 + 0.5*(-2) = 1.
    # Group {2, 0, 1}: mean 1, std 1 -> [1, -1, 0] / (1 + 1e-4).
    rewards = torch.tensor([[1.0, 2.0], [0.0, 0.0], [2.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(combine_rewards(rewards, (1.0, 0.5)), torch.tensor([2.0, 0, 1], dtype=torch.float64))
    got = compute_advantages(rewards, group_size=3, reward_weights=(1.0, 0.5))
    torch.testing.assert_close(got, torch.tensor([1.0, -1, 0], dtype=torch.float64) / (1 + E))
    # Unweighted the totals are 3, 0, 0: mean 1, std sqrt((4 + 1 + 1) / 2) = sqrt(3).
    got = compute_advantages(rewards, group_size=3)
    torch.testing.assert_close(got, torch.tensor([2.0, -1, -1], dtype=torch.float64) / (math.sqrt(3) + E))


def test_partial_nan_is_skipped_like_nansum():
    # Function 0 does not apply to row 1 (NaN): its total is 0.5 * 4 = 2, not NaN.
    # Totals: 1 + 0.5*0 = 1, 2, 3 + 0.5*2 = 4 -> group {1, 2, 4}: mean 7/3,
    # squared deviations 16/9 + 1/9 + 25/9 = 42/9, variance 21/9, std sqrt(21)/3.
    nan = float("nan")
    rewards = torch.tensor([[1.0, 0.0], [nan, 4.0], [3.0, 2.0]], dtype=torch.float64)
    std = math.sqrt(21) / 3
    expected = torch.tensor([1 - 7 / 3, 2 - 7 / 3, 4 - 7 / 3], dtype=torch.float64) / (std + E)
    torch.testing.assert_close(compute_advantages(rewards, 3, reward_weights=(1.0, 0.5)), expected)


def test_all_nan_row_is_excluded_and_gets_zero():
    # Row 1 is unscorable (every function NaN): it is left out of its group's mean and std and
    # gets advantage 0. The rest of the group {1, 3}: mean 2, std sqrt(2).
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan], [nan, nan], [nan, 3.0]], dtype=torch.float64)
    total = combine_rewards(rewards)
    assert total[0] == 1 and math.isnan(total[1]) and total[2] == 3
    got = compute_advantages(rewards, 3)
    s = math.sqrt(2) + E
    torch.testing.assert_close(got, torch.tensor([-1 / s, 0.0, 1 / s], dtype=torch.float64))
    # none mode: centred on the scored rows' mean only (2), not on (1 + 0 + 3) / 3.
    torch.testing.assert_close(compute_advantages(rewards, 3, scale_rewards="none"), torch.tensor([-1.0, 0, 1], dtype=torch.float64))


def test_group_with_one_scored_completion_is_all_zero():
    # Group {7, NaN}: std of one value is undefined (NaN) -> advantages 0 in group mode.
    nan = float("nan")
    got = compute_advantages(col(7, nan, 0, 2), 2)
    assert got[:2].tolist() == [0.0, 0.0]
    assert torch.isfinite(got).all()


def test_nanstd_matches_torch_std_on_clean_values():
    x = torch.tensor([[1.0, 2.0, 4.0, float("nan")], [0.0, 3.0, 3.0, 6.0]], dtype=torch.float64)
    torch.testing.assert_close(nanstd(x, dim=1)[0], torch.std(x[0, :3]))
    torch.testing.assert_close(nanstd(x, dim=1)[1], torch.std(x[1]))
    torch.testing.assert_close(nanstd(x), torch.std(x[~torch.isnan(x)]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=col(1, 2, 3), group_size=2), "groups of 2"),
        (dict(rewards=col(1, 2), group_size=1), "groups of 1"),
        (dict(rewards=col(1, 2), group_size=2, scale_rewards="std"), "scale_rewards"),
        (dict(rewards=col(1, 2), group_size=2, reward_weights=(1.0, 2.0)), "reward_weights"),
        (dict(rewards=torch.ones(4), group_size=2), r"\[N, R\]"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_advantages(**kwargs)


# --- TRL cross-check -----------------------------------------------------------------------


def trl_advantages(rewards_per_func, num_generations, reward_weights, scale_rewards):
    """TRL 1.16 ``GRPOTrainer._generate_and_score_completions``, ``sum_then_normalize`` branch,
    copied verbatim (only ``self.`` dropped and the device move removed). trl is a dev
    dependency: imported unconditionally, so a missing peer fails this test instead of skipping it."""
    from trl.trainer.utils import nanstd

    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    # --- verbatim from trl/trainer/grpo_trainer.py ---
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        # If self.scale_rewards = "none", we'll only use std_rewards to check for zero std for logging
        if num_generations > 1:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:  # doesn't occur during training, but could occur in eval when num_generations_eval=1
            std_rewards = torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        # Compute global std
        if rewards.numel() > 1:
            std_rewards = nanstd(rewards).expand_as(rewards)
        else:  # doesn't occur during training, but could occur in eval when num_generations_eval=batch_size=1
            std_rewards = torch.zeros_like(rewards)
    else:
        raise ValueError(
            f"Invalid value for scale_rewards: {scale_rewards}. Must be one of 'batch', 'group', or 'none'."
        )

    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    # --- end verbatim ---
    return torch.nan_to_num(advantages, nan=0.0)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_trl(scale_rewards, weighted, dtype):
    gen = torch.Generator().manual_seed(1234)
    G, P, R = 4, 6, 3
    rewards = torch.randn(P * G, R, generator=gen, dtype=torch.float64).to(dtype)
    rewards[1, 0] = float("nan")  # partial NaN: one function does not apply
    rewards[5, :2] = float("nan")
    rewards[9, :] = float("nan")  # unscorable row
    rewards[12:16, :] = 1.0  # a group whose completions all scored the same (std 0)
    rewards[16:19, :] = float("nan")  # a group with one scored completion (std NaN)
    rewards[20:24, :] = float("nan")  # a group nobody could score
    weights = (0.5, 2.0, -1.0) if weighted else None
    trl_weights = torch.tensor(weights if weighted else (1.0,) * R, dtype=dtype)
    ours = compute_advantages(rewards, G, reward_weights=weights, scale_rewards=scale_rewards)
    theirs = trl_advantages(rewards, G, trl_weights, scale_rewards)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)
    assert torch.isfinite(ours).all()
    assert ours[9] == 0 and (ours[20:24] == 0).all()
