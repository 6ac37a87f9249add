"""Reward functions for runtime tests, importable by name from Ray workers (``tests.support.reward_fns:...``)."""

from __future__ import annotations

import time
from typing import Any, Sequence


def hangs(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """Never returns in any reasonable time: the pool must time it out."""
    time.sleep(3600)
    return [0.0] * len(completions)


def short_completion(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """Prefers short completions (a signal every policy can learn fast)."""
    return [-float(len(c)) for c in completions]


def constant_one(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """1.0 for every completion: a score that no penalty or NaN can be mistaken for."""
    return [1.0] * len(completions)
