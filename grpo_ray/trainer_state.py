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
    sampler: dict[str, Any] = field(default_factory=dict)  # PromptSampler.state() at the start of cycle ``cycle``
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    consecutive_skips: int = 0  # of those, how many in a row up to now
    dropped_samples: int = 0  # completions left out of the loss for a non-finite reward
    zero_variance_groups: int = 0  # groups whose completions all scored the same
    worker_restarts: int = 0  # rollout/reward workers that died and were restarted
    # asynchronous rollouts (rollout.max_staleness): the cycles generated ahead of the learner and not
    # yet trained on (grpo_ray.rollout_pipeline encodes them; ``sampler`` is the position before
    # their prompts were drawn), and the completions generated ahead that were dropped (a resumed
    # run with a lower max_staleness regenerates those beyond its bound)
    pending_rollouts: list[dict[str, Any]] = field(default_factory=list)
    stale_dropped_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"trainer state has unknown fields {sorted(unknown)}: written by another version?")
        return cls(**data)
