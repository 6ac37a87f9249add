"""The asynchronous schedule (``rollout.max_staleness``): which weights generate which cycle, and
what each step reports about it. Pure functions: no Ray, no model.

Staleness counts **weight updates of the rollout engines**, one per generation cycle (the
driver pushes the learner's weights after each cycle's optimizer steps), as AReaL counts
policy versions (Fu et al. 2025, "AReaL: A Large-Scale Asynchronous Reinforcement Learning
System for Language Reasoning", arXiv:2505.24298, sec. 5.1: ``max_head_offpolicyness``). With
the usual one optimizer step per cycle (``steps_per_generation == gradient_accumulation_steps``)
that is the number of optimizer steps; with k steps per cycle, one update is k steps
(``async/version_lag`` reports the lag in optimizer steps beside it).

The schedule is fixed, not timing-dependent: cycle c is generated with the weights of update
``max(c - S, 0)`` (the learner's weights after c - S cycles), so the learner, which trains cycle
c with update c, is S updates ahead at most, exactly S once the pipeline is full. A rollout
starts as soon as those weights are on the engines and waits for them otherwise; the samples
of a cycle, its seed and its weights never depend on how fast either side ran, so a run is
reproducible and resumes bit-identical.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

Interval = tuple[float, float]


def generation_policy(cycle: int, max_staleness: int) -> int:
    """The weight update (cycles trained) whose weights generate ``cycle``."""
    return max(cycle - max_staleness, 0)


def startable_cycles(policy: int, max_staleness: int) -> int:
    """With the weights of update ``policy`` on the engines, cycles ``< policy + S + 1`` may start."""
    return policy + max_staleness + 1


def last_cycle(max_steps: int, gradient_accumulation_steps: int, micro_steps_per_cycle: int) -> int:
    """The cycle during which optimizer step ``max_steps`` happens (0-based): cycles after it are never
    trained, so their rollouts are not started. Steps are counted across cycles (an accumulation
    window may span two), so after cycle c there have been ``(c + 1) * m // gas`` of them."""
    return math.ceil(max_steps * gradient_accumulation_steps / micro_steps_per_cycle) - 1


def staleness_histogram(staleness: int, samples: int, max_staleness: int) -> dict[str, float]:
    """``async/staleness_hist/<k>``: completions of this step generated k updates before it, k = 0..S."""
    if not 0 <= staleness <= max_staleness:
        raise ValueError(f"staleness {staleness} is outside the bound 0..{max_staleness}")
    return {f"async/staleness_hist/{k}": float(samples if k == staleness else 0) for k in range(max_staleness + 1)}


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[list[float]] = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def busy_overlap(first: Sequence[Interval], second: Sequence[Interval], window: Interval) -> float:
    """Seconds within ``window`` during which both phases were busy: the length of
    (union of ``first``) intersected with (union of ``second``), each clipped to the window."""
    lo, hi = window
    clip = lambda xs: _union((max(s, lo), min(e, hi)) for s, e in xs)  # noqa: E731
    a, b = clip(first), clip(second)
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, end - start)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total
