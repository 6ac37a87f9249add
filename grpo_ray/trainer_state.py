"""The driver's state of a run: everything besides the learner that an exact resume needs.

Owned by the driver (:class:`grpo_ray.trainer.GRPOTrainer`), saved as ``trainer_state.json``
in each checkpoint beside the learner's state, and restored on resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainerState:
    """Counters of the loop and the prompt sampler's position."""

    step: int = 0  # optimizer steps taken (skipped ones included: the schedule advanced)
    cycle: int = 0  # generation cycles completed
    weight_version: int = 0  # version of the weights the rollout workers hold (== step)
    sampler: dict[str, Any] = field(default_factory=dict)  # PromptSampler.state()
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    consecutive_skips: int = 0  # of those, how many in a row up to now
    dropped_samples: int = 0  # completions left out of the loss for a non-finite reward
    zero_variance_groups: int = 0  # groups whose completions all scored the same
    worker_restarts: int = 0  # rollout/reward workers that died and were restarted

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"trainer state has unknown fields {sorted(unknown)}: written by another version?")
        return cls(**data)
