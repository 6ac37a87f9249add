"""grpo_ray.guards: infinite rewards drop their sample; groups without a reward spread are found."""

import math

import torch

from grpo_ray.guards import drop_nonfinite_rewards, zero_variance_groups

nan, inf = math.nan, math.inf


def test_a_row_with_an_infinite_reward_is_dropped_whole_and_nan_keeps_its_meaning():
    rewards = torch.tensor([[1.0, 2.0], [inf, 0.5], [nan, 1.0], [0.0, -inf]])
    clean, dropped = drop_nonfinite_rewards(rewards)
    assert dropped.tolist() == [False, True, False, True]
    assert torch.isnan(clean[dropped]).all()
    assert torch.equal(clean[0], rewards[0]) and math.isnan(clean[2, 0]) and clean[2, 1] == 1.0


def test_zero_variance_groups():
    total = torch.tensor([1.0, 1.0, 1.0,    # all equal
                          0.0, 1.0, 0.0,    # spread
                          2.0, nan, 2.0,    # equal among the scored
                          nan, nan, 5.0,    # one scored: no spread to learn from
                          nan, nan, nan])   # none scored
    assert zero_variance_groups(total, 3).tolist() == [True, False, True, True, True]
