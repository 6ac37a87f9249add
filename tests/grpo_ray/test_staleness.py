"""The asynchronous schedule's arithmetic (grpo_ray.staleness), against hand-worked cases."""

import pytest

from grpo_ray.batching import plan_generation_cycle
from grpo_ray.staleness import busy_overlap, generation_policy, last_cycle, staleness_histogram, startable_cycles


def test_cycle_c_is_generated_with_the_weights_of_update_c_minus_s():
    assert [generation_policy(c, 0) for c in range(4)] == [0, 1, 2, 3]  # synchronous
    assert [generation_policy(c, 1) for c in range(4)] == [0, 0, 1, 2]
    assert [generation_policy(c, 2) for c in range(5)] == [0, 0, 0, 1, 2]
    for s in range(4):
        for policy in range(6):
            startable = startable_cycles(policy, s)
            # every cycle the weights of `policy` may start is due with them or older ones, the next one is not
            assert all(generation_policy(c, s) <= policy for c in range(startable))
            assert generation_policy(startable, s) == policy + 1
            # and trained at update c, each is at most s updates stale
            assert all(c - generation_policy(c, s) <= s for c in range(startable))


@pytest.mark.parametrize("spg,gas,iterations", [(2, 1, 1), (1, 1, 1), (4, 2, 1), (1, 2, 1), (2, 3, 1), (2, 2, 2), (1, 4, 3)])
def test_last_cycle_is_where_the_plan_takes_step_max_steps(spg, gas, iterations):
    steps, cycle, found = 0, 0, {}
    while len(found) < 9:
        plan = plan_generation_cycle(8, gas, spg, 4, cycle=cycle, num_iterations=iterations)
        for micro in plan:
            if micro.optimizer_step:
                steps += 1
                found.setdefault(steps, cycle)
        cycle += 1
    for max_steps, cycle in found.items():
        assert last_cycle(max_steps, gas, spg * iterations) == cycle, (max_steps, cycle)


def test_the_histogram_puts_every_completion_at_its_staleness():
    assert staleness_histogram(1, 16, 2) == {
        "async/staleness_hist/0": 0.0, "async/staleness_hist/1": 16.0, "async/staleness_hist/2": 0.0,
    }
    assert staleness_histogram(0, 8, 0) == {"async/staleness_hist/0": 8.0}
    with pytest.raises(ValueError, match="outside the bound"):
        staleness_histogram(3, 8, 2)


def test_overlap_is_the_time_both_phases_were_busy_within_the_window():
    # rollout busy 0-4 and 6-10 (two rollouts, one overlapping interval merged in: 3-4.5), learner 2-7
    rollout = [(0.0, 4.0), (3.0, 4.5), (6.0, 10.0)]
    learner = [(2.0, 7.0)]
    assert busy_overlap(rollout, learner, (0.0, 10.0)) == pytest.approx(2.5 + 1.0)  # 2-4.5 and 6-7
    assert busy_overlap(rollout, learner, (3.0, 6.5)) == pytest.approx(1.5 + 0.5)  # clipped to the window
    assert busy_overlap(rollout, [], (0.0, 10.0)) == 0.0
    assert busy_overlap([(0.0, 1.0)], [(1.0, 2.0)], (0.0, 2.0)) == 0.0  # touching is not overlapping
    assert busy_overlap([(5.0, 4.0)], [(0.0, 9.0)], (0.0, 9.0)) == 0.0  # an empty interval counts nothing
