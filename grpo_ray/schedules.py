"""Learning-rate schedules: transformers' ``get_scheduler`` formulas, without importing it.

``transformers.get_scheduler`` lives in ``transformers.optimization``, whose import pulls in
``transformers.trainer_utils`` and through it peft and bitsandbytes: seconds of every learner's
start-up (2.5 s of CPU on the 2-core box) for three one-line formulas. These are the same
formulas (``optimization.py`` of transformers 5.24), as :class:`torch.optim.lr_scheduler.LambdaLR`
over ``functools.partial`` factors, so the values and the saved scheduler state are the same;
tests/grpo_ray/test_schedules.py checks both against transformers.

- ``linear``: linear warm-up over ``num_warmup_steps``, then linear decay to 0 at ``num_training_steps``;
- ``cosine``: the same warm-up, then half a cosine down to 0;
- ``constant``: 1.0 throughout (as in transformers, which ignores the warm-up for it).
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, num_warmup_steps: int) -> float:
    return float(step) / float(max(1, num_warmup_steps))


def linear_factor(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def cosine_factor(step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 0.5) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def constant_factor(_: int = 0) -> float:
    return 1


def make_scheduler(kind: str, optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int) -> LambdaLR:
    """``get_scheduler(kind, optimizer, num_warmup_steps, num_training_steps)`` for kind in
    constant, linear, cosine (OptimConfig.lr_scheduler_type)."""
    if kind == "constant":
        return LambdaLR(optimizer, constant_factor)
    factors = {"linear": linear_factor, "cosine": cosine_factor}
    if kind not in factors:
        raise ValueError(f"lr scheduler {kind!r}: choose constant, linear or cosine")
    return LambdaLR(optimizer, partial(factors[kind], num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps))
