"""Reward throughput through the reward pool: samples/s per core, math verifier and sandbox, beside peers.

    python benchmarks/reward_bench.py [--processes N] [--math-samples 20000] [--code-samples 400] [--skip-peers]

Math: GSM8K test rows (``--gsm8k``, default ../shared/data/gsm8k/test.jsonl beside the repo),
each turned into completions whose final answer is boxed, stated ("The answer is N dollars"),
given GSM8K-style (``#### N``, off by one: a wrong answer) or left as the last number, scored
by ``"math"`` against the row's raw ``answer``. Sandbox: the simple passing program
``print(sum(map(int, input().split())))`` with one stdin/stdout test per sample, scored by
``"code"`` (one sandboxed run each). Each figure is the best of ``--repeats`` timed
``RewardPool.score`` calls on the whole batch, after a warm-up call; per core = samples/s
divided by the processes used (at most the cores there are). Targets (issue 6): math >= 2,000
and sandbox >= 50 samples/s/core.

Peers (left out with ``--skip-peers``), each scored on the very same batch through its own
``RewardPool`` with the same number of processes, its timed calls alternating with ours so
that both see the same load; "vs peer" = our samples/s / the peer's:

* math: HuggingFace ``math-verify`` (:func:`math_verify_reward`, a TRL-style function):
  ``verify(parse(gold), parse(completion))`` with the gold the GSM8K answer after ``####``,
  1.0/0.0. Its signal-based timeouts stay on at their defaults (pool workers call reward
  functions on their main thread); they are turned off only off the main thread.
* sandbox: plain, unisolated execution (:func:`plain_subprocess_reward`): each program run
  with ``subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True,
  timeout=5)``, stdout compared as ``"code"`` compares it, with the same program extraction
  and the same number of programs in flight per process as ``"code"``, so the ratio is the
  cost (or gain) of our sandbox's isolation and zygote launcher alone.

Worker processes import the peers as ``benchmarks.reward_bench:...`` (``benchmarks/`` is a
namespace package under the repository root, which this script puts on ``sys.path``; the pool
hands its ``sys.path`` to its workers as ``PYTHONPATH``). The mean score of every row is
printed: the peers should agree with ours, and any disagreement is reported as measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grpo_ray.rewards.code import _same_output, code_reward, extract_code, parse_tests  # noqa: E402
from grpo_ray.rewards.math import extract_answer  # noqa: E402
from grpo_ray.rewards.pool import RewardPool  # noqa: E402
from grpo_ray.rewards.registry import completion_text  # noqa: E402
from grpo_ray.rewards.sandbox import isolation_level  # noqa: E402

TARGETS = {"math": 2000.0, "code": 50.0}
DEFAULT_GSM8K = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "shared", "data", "gsm8k", "test.jsonl")
#: The name worker processes import this file by (see the module docstring).
MODULE = "benchmarks.reward_bench"
#: Our reward -> (its peer's spec, the peer's label in the table).
PEERS = {
    "math": (f"{MODULE}:math_verify_reward", "math-verify (peer)"),
    "code": (f"{MODULE}:plain_subprocess_reward", "plain subprocess (peer)"),
}
PLAIN_TIMEOUT_S = 5


def math_verify_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """Peer of ``"math"``: math-verify's verdict on each completion against the GSM8K gold."""
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only the main thread may set: keep its defaults
    # there (pool workers call on their main thread), turn them off anywhere else.
    main = threading.current_thread() is threading.main_thread()
    parse_kw = {} if main else {"parsing_timeout": None}
    verify_kw = {} if main else {"timeout_seconds": None}
    scores = []
    for completion, gold in zip(completions, answer):
        gold = parse(gold.split("####")[-1].strip(), **parse_kw)
        pred = parse(completion_text(completion), **parse_kw)
        scores.append(1.0 if verify(gold, pred, **verify_kw) else 0.0)
    return scores


def _plain_pass_fraction(program: str, tests: tuple[str, list]) -> float:
    kind, cases = tests
    if kind != "io":
        raise ValueError("the plain-subprocess peer runs stdin/stdout tests only")
    passed = 0
    for stdin, expected in cases:
        try:
            result = subprocess.run([sys.executable, "-c", program], input=stdin, capture_output=True, text=True,
                                    timeout=PLAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            continue
        passed += result.returncode == 0 and _same_output(result.stdout, expected)
    return passed / len(cases)


def plain_subprocess_reward(prompts, completions, tests=None, **kwargs) -> list[float | None]:
    """Peer of ``"code"``: each program run by a plain ``subprocess.run``, no isolation."""
    rows = tests if tests is not None else [None] * len(completions)
    jobs = [(extract_code(completion_text(c)), parse_tests(row)) for c, row in zip(completions, rows)]
    with ThreadPoolExecutor(max_workers=code_reward.concurrency) as pool:
        return list(pool.map(lambda job: None if job[1] is None else _plain_pass_fraction(*job), jobs))


def math_batch(path: str, n: int) -> tuple[list, list, dict]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    prompts, completions, golds = [], [], []
    for i in range(n):
        row = rows[i % len(rows)]
        work, answer = row["answer"].rsplit("####", 1)[0].strip(), extract_answer(row["answer"])
        wrong = int(float(answer.replace(",", ""))) + 1
        endings = [f"The answer is \\boxed{{{answer}}}.", f"So the answer is {answer} dollars.", f"#### {wrong}",
                   f"In all: {answer}"]
        prompts.append(row["question"])
        completions.append(f"{work}\n{endings[i % 4]}")
        golds.append(row["answer"])
    return prompts, completions, {"answer": golds}


def code_batch(n: int) -> tuple[list, list, dict]:
    program = "```python\nprint(sum(map(int, input().split())))\n```"
    tests = [[{"input": f"{i} {i + 1}\n", "output": f"{2 * i + 1}\n"}] for i in range(n)]
    return ["Add two numbers read from stdin."] * n, [program] * n, {"tests": tests}


class _Failures(logging.Handler):
    """Collects the pool's warnings (a failed or timed-out call scores its chunk with the penalty)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def measure(functions: list[tuple[str, str]], batch: tuple, processes: int, repeats: int) -> list[dict]:
    """One row per ``(spec, label)``, each through its own pool on ``batch``; the timed calls
    take turns (ours, peer, ours, peer, ...) so that every function sees the same load."""
    prompts, completions, columns = batch
    failures = _Failures()
    logging.getLogger("grpo_ray.rewards").addHandler(failures)
    try:
        with ExitStack() as stack:
            pools = [stack.enter_context(RewardPool([spec], processes=processes, timeout_s=600.0))
                     for spec, _ in functions]
            warm = 4 * processes
            for pool in pools:
                pool.score(prompts[:warm], completions[:warm], {k: v[:warm] for k, v in columns.items()})
            best, scores = [math.inf] * len(pools), [None] * len(pools)
            failed: list[list[str]] = [[] for _ in pools]
            for _ in range(repeats):
                for i, pool in enumerate(pools):
                    before = len(failures.messages)
                    started = time.perf_counter()
                    scores[i] = pool.score(prompts, completions, columns)
                    best[i] = min(best[i], time.perf_counter() - started)
                    failed[i] += failures.messages[before:]
    finally:
        logging.getLogger("grpo_ray.rewards").removeHandler(failures)
    cores = min(processes, os.cpu_count() or 1)
    rows = []
    for (spec, label), seconds, got, bad in zip(functions, best, scores, failed):
        rate = len(completions) / seconds
        rows.append({"function": spec, "label": label, "samples": len(completions), "processes": processes,
                     "cores": cores, "seconds": seconds, "samples_per_s": rate, "per_core": rate / cores,
                     "mean_score": sum(row[0] for row in got) / len(got), "failed_calls": bad,
                     "target_per_core": TARGETS.get(spec), "met": rate / cores >= TARGETS[spec] if spec in TARGETS
                     else None})
    if len(rows) > 1:
        rows[0]["vs_peer"] = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
    return rows


def _check_importable() -> None:
    """Worker processes import the peers as MODULE: make sure that name is this file."""
    try:
        found = importlib.import_module(MODULE).__file__
    except ImportError as exc:
        raise SystemExit(f"{MODULE} is not importable ({exc}); run with --skip-peers") from exc
    if not found or not os.path.samefile(found, __file__):
        raise SystemExit(f"{MODULE} resolves to {found}, not {__file__}: another 'benchmarks' package shadows it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--math-samples", type=int, default=20_000)
    parser.add_argument("--code-samples", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gsm8k", default=DEFAULT_GSM8K)
    parser.add_argument("--skip-peers", action="store_true", help="measure our rewards only")
    args = parser.parse_args()
    if not args.skip_peers:
        _check_importable()

    def group(name: str) -> list[tuple[str, str]]:
        return [(name, name)] + ([] if args.skip_peers else [PEERS[name]])

    results = [
        *measure(group("math"), math_batch(args.gsm8k, args.math_samples), args.processes, args.repeats),
        *measure(group("code"), code_batch(args.code_samples), args.processes, args.repeats),
    ]
    print(f"# {time.strftime('%Y-%m-%d')} | {platform.machine()}, {os.cpu_count()} cores | "
          f"python {platform.python_version()} | sandbox isolation: {isolation_level()}")
    print("| reward | samples | processes | best s | samples/s | samples/s/core | target/core | met | vs peer "
          "| mean score |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        met = "-" if r["met"] is None else "yes" if r["met"] else "NO"
        target = "-" if r["target_per_core"] is None else f"{r['target_per_core']:,.0f}"
        ratio = f"{r['vs_peer']:.2f}x" if "vs_peer" in r else "-"
        print(f"| {r['label']} | {r['samples']} | {r['processes']} | {r['seconds']:.3f} | "
              f"{r['samples_per_s']:,.0f} | {r['per_core']:,.0f} | {target} | {met} | {ratio} | "
              f"{r['mean_score']:.3f} |")
    for r in results:
        if r["failed_calls"]:
            print(f"WARNING: {r['label']}: {len(r['failed_calls'])} pool call(s) failed or timed out and were "
                  "scored with the penalty, so its row is not valid; first: " + r["failed_calls"][0], file=sys.stderr)


if __name__ == "__main__":
    main()
