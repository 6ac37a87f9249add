"""RewardWorker: scores completions with the configured reward functions.

A plain class; the driver wraps it with ``ray.remote`` where it places it, and tests build it
in-process. All the work happens in :class:`grpo_ray.rewards.pool.RewardPool` (worker
processes, per-call timeout, penalties and warnings for hanging or crashing functions).
"""

from __future__ import annotations

from typing import Any

from grpo_ray.config import RewardConfig
from grpo_ray.rewards.pool import RewardPool


class RewardWorker:
    """Owns a :class:`RewardPool` built from a :class:`RewardConfig`."""

    def __init__(self, config: RewardConfig) -> None:
        self._pool = RewardPool(
            config.functions,
            processes=config.processes_per_worker,
            timeout_s=config.timeout_s,
            penalty=config.penalty,
        )

    def names(self) -> list[str]:
        """One name per reward function, in config order."""
        return list(self._pool.names)

    def score(
        self, prompts: list, completions: list, columns: dict[str, list[Any]], group_size: int = 1
    ) -> list[list[float]]:
        """Rewards ``[N][R]``: NaN where a function does not apply, the penalty where it failed.
        Groups of ``group_size`` consecutive completions stay in one call of each function."""
        return self._pool.score(prompts, completions, columns, group_size=group_size)

    def close(self) -> None:
        self._pool.close()
