"""Bad runs fail in the driver with a clear message, before Ray or any actor starts."""

from __future__ import annotations

import pytest
import ray

from grpo_ray.rewards import RewardResolutionError
from grpo_ray.trainer import GRPOTrainer
from tests.support.tiny import tiny_checkpoint, tiny_config

ROWS = [{"prompt": "1+2="}, {"prompt": "3+4="}]


def test_bad_reward_name_and_bad_model_path_fail_before_ray_starts(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    with pytest.raises(RewardResolutionError, match="not_a_reward"):
        GRPOTrainer(tiny_config(checkpoint, tmp_path, reward={"functions": ("not_a_reward",)}), ROWS)
    with pytest.raises(ValueError, match="model.name_or_path"):
        GRPOTrainer(tiny_config(tmp_path / "missing", tmp_path), ROWS)
    with pytest.raises(ValueError, match="'prompt'"):
        GRPOTrainer(tiny_config(checkpoint, tmp_path), [{"question": "1+2="}])
    assert not ray.is_initialized()
