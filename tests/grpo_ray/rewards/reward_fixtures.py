"""Reward functions that misbehave on purpose, importable by reward-pool worker processes
(tests put this directory on sys.path and name them 'reward_fixtures:NAME')."""

import asyncio
import os
import time


def length(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def none_for_odd(prompts, completions, **kwargs):
    return [None if len(c) % 2 else 1.0 for c in completions]


def hang(prompts, completions, **kwargs):
    time.sleep(3600)


def hang_on_marker(prompts, completions, **kwargs):
    if any("HANG" in c for c in completions):
        time.sleep(3600)
    return [1.0] * len(completions)


def crash(prompts, completions, **kwargs):
    raise RuntimeError("reward function exploded")


def die(prompts, completions, **kwargs):
    os._exit(7)


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def not_numbers(prompts, completions, **kwargs):
    return ["good"] * len(completions)


async def async_length(prompts, completions, **kwargs):
    await asyncio.sleep(0.01)
    return [float(len(c)) for c in completions]


def uses_column(prompts, completions, weight, **kwargs):
    return [float(w) for w in weight]


def pid(prompts, completions, **kwargs):
    return [float(os.getpid())] * len(completions)


class SlowInline:
    """Runs on a thread of the pool's own process, like the remote clients."""

    run_inline = True

    def __call__(self, prompts, completions, **kwargs):
        time.sleep(3600)


slow_inline = SlowInline()


def group_count(prompts, completions, **kwargs):
    """How many completions of this call share each completion's prompt (its group, if whole)."""
    return [float(prompts.count(p)) for p in prompts]
