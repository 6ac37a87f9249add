"""One reward-pool worker process: ``python -m grpo_ray.rewards._pool_worker IN_FD OUT_FD``.

Receives the reward specs, resolves them and answers ``("ready", None)`` (or
``("error", message)``), then serves ``(index, prompts, completions, columns)`` requests with
``("ok", scores)``, ``("contract", message)`` (the function returned something other than one
number per completion) or ``("error", traceback)`` (it raised) until its input closes. A plain interpreter
rather than a multiprocessing child, so that it imports nothing of its parent's ``__main__``
(a Ray worker's, say) and may itself start processes. It exits when its parent dies.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from numbers import Real

from grpo_ray.rewards.registry import RewardContractError


def validate_scores(scores, n: int) -> list[float]:
    """``scores`` as n floats, None -> NaN; raises :class:`RewardContractError` naming what is wrong."""
    if inspect.isawaitable(scores) or not hasattr(scores, "__len__") or isinstance(scores, (str, bytes, dict)):
        raise RewardContractError(f"returned a {type(scores).__name__}, not a list of floats")
    if len(scores) != n:
        raise RewardContractError(f"returned {len(scores)} scores for {n} completions")
    out = []
    for s in scores:
        if s is None:
            out.append(math.nan)
        elif isinstance(s, Real) and not isinstance(s, bool):
            out.append(float(s))
        else:
            raise RewardContractError(f"returned the score {s!r}, which is not a number or None")
    return out


def call_reward(fn, prompts, completions, columns) -> list[float]:
    """Call a TRL-style reward function (sync or async) and validate what it returns."""
    scores = fn(prompts=prompts, completions=completions, **columns)
    if inspect.isawaitable(scores):
        scores = asyncio.run(_await(scores))
    return validate_scores(scores, len(completions))


async def _await(awaitable):
    return await awaitable


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def main() -> None:
    from grpo_ray.rewards.registry import resolve

    inbox = Connection(int(sys.argv[1]), writable=False)
    outbox = Connection(int(sys.argv[2]), readable=False)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        functions = [resolve(spec) for spec in inbox.recv()]
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    outbox.send(("ready", None))
    while True:
        try:
            index, prompts, completions, columns = inbox.recv()
        except EOFError:
            return
        try:
            outbox.send(("ok", call_reward(functions[index], prompts, completions, columns)))
        except RewardContractError as exc:
            outbox.send(("contract", str(exc)))
        except Exception:  # noqa: BLE001 - any failure of user code becomes a penalty upstream
            outbox.send(("error", traceback.format_exc(limit=-3)))


if __name__ == "__main__":
    main()
