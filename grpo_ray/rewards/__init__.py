"""Reward functions (TRL contract), their registry, verifiers, the sandbox and the reward pool.

Ray-free: :class:`~grpo_ray.rewards.remote.ActorReward` imports Ray only when called.
"""

from grpo_ray.rewards.registry import (
    RewardContractError,
    RewardResolutionError,
    completion_text,
    register,
    registered_names,
    resolve,
)

__all__ = [
    "RewardContractError", "RewardResolutionError", "completion_text", "register", "registered_names", "resolve",
]
