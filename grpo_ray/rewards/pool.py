"""Run reward functions over a batch in worker processes, with a per-call timeout.

:class:`RewardPool` is the Ray-free core of ``actors.reward_worker.RewardWorker``. Each
function's batch is cut into one contiguous chunk per worker process; every chunk is one call.
A call that raises, returns the wrong thing, or runs past ``timeout_s`` gives ``penalty`` to
each completion of its chunk and logs a warning on the ``grpo_ray.rewards`` logger; a process
that timed out (or died) is killed and replaced, so the pool keeps working. Functions that
declare ``run_inline = True`` (the HTTP and Ray-actor clients of :mod:`grpo_ray.rewards.remote`,
which only wait on I/O and need the caller's Ray connection) run on threads of the calling
process instead, over the whole batch, bounded by the same timeout.

Chunks hold whole groups (``group_size`` consecutive completions of one prompt), so a function
that looks at a group (a diversity bonus, a rank within the group) sees all of it.

Failure policy: a function that raises or times out is *penalised* (the data may have tripped
it: ``penalty`` for its chunk, a warning naming it, the run goes on). A function that returns
the wrong number of scores or something that is not a number breaks the reward contract on
every batch: :class:`RewardContractError` naming it is raised at once.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from grpo_ray.rewards._pool_worker import call_reward
from grpo_ray.rewards.registry import RewardContractError, RewardResolutionError, resolve

logger = logging.getLogger("grpo_ray.rewards")

#: Seconds a new worker process may take to start and resolve its functions.
_START_TIMEOUT_S = 60.0


class _Process:
    """One worker process and its two pipe ends."""

    def __init__(self, specs: Sequence[str]) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grpo_ray.rewards._pool_worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.inbox = Connection(from_child_r, writable=False)
        self.outbox.send(list(specs))

    def wait_ready(self) -> None:
        if not self.inbox.poll(_START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"reward worker process did not start within {_START_TIMEOUT_S:.0f}s")
        try:
            kind, message = self.inbox.recv()
        except EOFError:
            kind, message = "error", f"reward worker process exited with {self.proc.wait()}"
        if kind != "ready":
            self.kill()
            raise RewardResolutionError(message)

    def kill(self) -> None:
        """Kill the process (if still running) and close both pipes; safe to call twice."""
        self.proc.kill()
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


class RewardPool:
    """Reward functions named by config strings, run over batches; see the module docstring."""

    def __init__(self, functions: Sequence[str], *, processes: int = 1, timeout_s: float = 30.0, penalty: float = 0.0):
        if not functions:
            raise ValueError("no reward functions: name at least one (a registered name or 'module:function')")
        if processes < 1:
            raise ValueError(f"processes={processes}: give at least 1")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s}: give a positive number of seconds")
        self.names = [str(f) for f in functions]
        self._functions = [resolve(spec) for spec in self.names]  # errors here name the entry
        self._inline = [bool(getattr(fn, "run_inline", False)) for fn in self._functions]
        self._timeout_s = float(timeout_s)
        self._penalty = float(penalty)
        self._processes: list[_Process] = []
        if not all(self._inline):
            self._processes = [_Process(self.names) for _ in range(processes)]
            try:
                for p in self._processes:
                    p.wait_ready()
            except BaseException:
                self.close()
                raise

    def score(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        columns: dict[str, Sequence[Any]] | None = None,
        group_size: int = 1,
    ) -> list[list[float]]:
        """Scores ``[N][R]`` (one row per completion, one column per function); NaN = not applicable.
        Groups of ``group_size`` consecutive completions are never split between calls."""
        columns = dict(columns or {})
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions: give one prompt per completion")
        if group_size < 1 or n % group_size:
            raise ValueError(f"{n} completions do not split into groups of group_size={group_size}")
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
        scores = [[math.nan] * len(self.names) for _ in range(n)]
        if n == 0:
            return scores
        deadline = time.monotonic() + self._timeout_s
        futures = {
            r: _on_thread(fn, list(prompts), list(completions), columns)
            for r, fn in enumerate(self._functions) if self._inline[r]
        }
        broken = self._run_in_processes(prompts, completions, columns, scores, group_size)
        for r, future in futures.items():
            try:
                self._fill(scores, r, 0, n, future.result(timeout=max(0.0, deadline - time.monotonic())))
            except RewardContractError as exc:
                broken.append((r, str(exc)))
            except FutureTimeout:
                self._fail(scores, r, 0, n, f"timed out after {self._timeout_s:g}s (its thread is abandoned)")
            except Exception as exc:  # noqa: BLE001 - a broken reward function is penalised, not fatal
                self._fail(scores, r, 0, n, f"raised {type(exc).__name__}: {exc}")
        if broken:
            r, what = broken[0]
            raise RewardContractError(
                f"reward function {self.names[r]!r} {what}; a reward function must return one float "
                "(or None) per completion"
            )
        return scores

    def _run_in_processes(self, prompts, completions, columns, scores, group_size: int) -> list[tuple[int, str]]:
        """Fill ``scores`` from the worker processes; returns the (function, message) contract breaches."""
        n = len(completions)
        chunks = [(lo * group_size, hi * group_size) for lo, hi in _chunks(n // group_size, len(self._processes))]
        broken: list[tuple[int, str]] = []
        pending = [(r, lo, hi) for r in range(len(self.names)) if not self._inline[r] for lo, hi in chunks]
        busy: dict[int, tuple[tuple[int, int, int], float]] = {}  # process slot -> (task, deadline)
        while pending or busy:
            for slot in range(len(self._processes)):
                if pending and slot not in busy:
                    task = pending.pop(0)
                    r, lo, hi = task
                    chunk_columns = {k: list(v[lo:hi]) for k, v in columns.items()}
                    message = (r, list(prompts[lo:hi]), list(completions[lo:hi]), chunk_columns)
                    try:
                        self._processes[slot].outbox.send(message)
                    except OSError:  # the process died while idle: replace it and retry the task
                        self._replace(slot)
                        pending.insert(0, task)
                        continue
                    busy[slot] = (task, time.monotonic() + self._timeout_s)
            first_deadline = min(deadline for _, deadline in busy.values())
            ready = wait([self._processes[s].inbox for s in busy], timeout=max(0.0, first_deadline - time.monotonic()))
            for slot in [s for s in busy if self._processes[s].inbox in ready]:
                (r, lo, hi), _ = busy.pop(slot)
                try:
                    kind, payload = self._processes[slot].inbox.recv()
                except EOFError:
                    self._replace(slot)
                    self._fail(scores, r, lo, hi, "crashed its worker process (replaced)")
                    continue
                if kind == "ok":
                    self._fill(scores, r, lo, hi, payload)
                elif kind == "contract":
                    broken.append((r, payload))
                else:
                    self._fail(scores, r, lo, hi, f"raised:\n{payload}")
            now = time.monotonic()
            for slot in [s for s, (_, deadline) in busy.items() if deadline <= now]:
                (r, lo, hi), _ = busy.pop(slot)
                self._replace(slot)
                what = f"timed out after {self._timeout_s:g}s (its process was killed and replaced)"
                self._fail(scores, r, lo, hi, what)
        return broken

    def _replace(self, slot: int) -> None:
        self._processes[slot].kill()
        self._processes[slot] = _Process(self.names)
        self._processes[slot].wait_ready()

    @staticmethod
    def _fill(scores, r: int, lo: int, hi: int, values: list[float]) -> None:
        for i, value in enumerate(values):
            scores[lo + i][r] = value

    def _fail(self, scores, r: int, lo: int, hi: int, what: str) -> None:
        logger.warning(
            "reward function %r %s; gave penalty %g to completions %d..%d",
            self.names[r], what, self._penalty, lo, hi - 1,
        )
        self._fill(scores, r, lo, hi, [self._penalty] * (hi - lo))

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        for p in self._processes:
            p.kill()
        self._processes = []

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _on_thread(fn, prompts, completions, columns) -> Future:
    """Call an inline function on a new daemon thread: one that overruns is abandoned and never
    queues up the next call behind it."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(call_reward(fn, prompts, completions, columns))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name=f"reward-{getattr(fn, '__name__', 'inline')}").start()
    return future


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into at most ``parts`` contiguous, near-equal, non-empty chunks."""
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
