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


def slow_short_completion(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """short_completion after 0.2 s, so that a worker killed mid-run is often killed mid-call."""
    time.sleep(0.2)
    return short_completion(prompts, completions)


def flat_infinite_huge(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """For a batch of groups of 4: group 0 all 1.0 (no spread), the first completion of group 1
    infinite, every other one +-1e30 (a reward scale that overflows the gradient norm)."""
    scores = [1e30 if i % 2 else -1e30 for i in range(len(completions))]
    scores[:4] = [1.0] * 4
    scores[4] = float("inf")
    return scores


def one_score_short(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """Breaks the reward contract: one score fewer than there are completions."""
    return [0.0] * (len(completions) - 1)
