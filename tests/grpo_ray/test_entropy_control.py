"""grpo_ray.entropy_control: the entropy bonus's coefficient, static and adaptive (hand-worked
steps; TRL's own controller is cross-checked in test_loss.py), its window statistics taken out of
the metrics, the ratio whatever the reduction over ranks, and its state for an exact resume."""

import math

import pytest
import torch

from grpo_ray.config import GRPOConfig
from grpo_ray.entropy_control import EntropyControl
from grpo_ray.loss import ENTROPY_SUM, ENTROPY_TOKENS

ADAPTIVE = dict(use_adaptive_entropy=True, entropy_coef=0.01, entropy_coef_delta=0.01, entropy_coef_max=0.02,
                entropy_target=1.0)


def window(control, *calls):
    """Observe one loss call per (entropy sum, tokens); returns what was left to log."""
    left = []
    for total, tokens in calls:
        metrics = {ENTROPY_SUM: torch.tensor(total), ENTROPY_TOKENS: torch.tensor(tokens), "entropy": torch.tensor(0.0)}
        control.observe(metrics)
        left.append(set(metrics))
    return left


def test_static_and_disabled():
    assert EntropyControl(GRPOConfig()).step() == {}  # no bonus: nothing to log
    static = EntropyControl(GRPOConfig(entropy_coef=0.03))
    assert static.applied_coef == 0.03 and static.step() == {"entropy_coef": 0.03} and static.applied_coef == 0.03


def test_adaptive_steps_hand_worked():
    control = EntropyControl(GRPOConfig(**ADAPTIVE))
    assert control.applied_coef == 0.0 and control.last_entropy == math.inf  # no measurement yet: no bonus
    # 12 nats over 10 tokens in two calls: 1.2 > 1.0, so the coefficient steps down to 0.0, and the bonus stays off.
    assert window(control, (5.0, 4.0), (7.0, 6.0)) == [{"entropy"}, {"entropy"}]  # the statistics are taken out
    assert control.step() == {"entropy_coef": 0.0}
    assert control.last_entropy == pytest.approx(1.2) and control.applied_coef == 0.0
    # 0.5 <= 1.0: up by 0.01, and applied from the next window on; then capped at 0.02.
    window(control, (2.0, 4.0))
    assert control.step() == {"entropy_coef": 0.01} and control.applied_coef == 0.01
    window(control, (1.0, 4.0))
    assert control.step() == {"entropy_coef": 0.02}
    window(control, (0.0, 4.0))
    assert control.step() == {"entropy_coef": 0.02} and control.applied_coef == 0.02
    # A window without tokens measures 0 (TRL's clamped count), never divides by 0.
    assert control.step() == {"entropy_coef": 0.02} and control.last_entropy == 0.0


def test_the_reduction_over_ranks_may_sum_or_average():
    summed, averaged = EntropyControl(GRPOConfig(**ADAPTIVE)), EntropyControl(GRPOConfig(**ADAPTIVE))
    other = {"sum": 30.0, "tokens": 10.0}  # the other rank's window: 3 nats per token
    for control, reduce in ((summed, lambda d: {k: d[k] + other[k] for k in d}),
                            (averaged, lambda d: {k: (d[k] + other[k]) / 2 for k in d})):
        window(control, (0.5, 1.0))  # this rank: 0.5 nats over one token
        control.step(reduce)
    assert summed.last_entropy == averaged.last_entropy == pytest.approx(30.5 / 11)  # tokens weigh, not ranks


def test_state_round_trip_mid_window():
    control = EntropyControl(GRPOConfig(**ADAPTIVE))
    window(control, (1.0, 4.0))
    control.step()
    window(control, (3.0, 2.0))  # half a window pending at the checkpoint
    state = control.state_dict()
    assert all(isinstance(v, float) for k, v in state.items() if k != "adaptive")  # plain data for torch.load
    resumed = EntropyControl(GRPOConfig(**ADAPTIVE))
    resumed.load_state_dict(state)
    assert resumed.applied_coef == control.applied_coef == 0.02
    window(control, (1.0, 2.0))
    window(resumed, (1.0, 2.0))
    assert resumed.step() == control.step() and resumed.last_entropy == control.last_entropy == 1.0
    # Resumed without adaptive control, or switching it on over a static run's state: the config's coefficient.
    static = EntropyControl(GRPOConfig(entropy_coef=0.07))
    static.load_state_dict(state)
    assert static.applied_coef == 0.07 and static.step() == {"entropy_coef": 0.07}
    switched = EntropyControl(GRPOConfig(**ADAPTIVE))
    switched.load_state_dict(EntropyControl(GRPOConfig(entropy_coef=0.07)).state_dict())
    assert switched.coef == 0.01 and switched.last_entropy == math.inf
