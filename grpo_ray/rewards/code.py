"""Code reward: run each completion's program against its row's tests in the sandbox.

The score is the fraction of tests passed, in [0, 1]; ``None`` (not applicable) for a row
without tests. A row's ``tests`` column may hold

* stdin/stdout pairs: ``[{"input": "1 2\\n", "output": "3\\n"}, ...]`` or the APPS layout
  ``{"inputs": [...], "outputs": [...]}``; each pair is one sandboxed run, passing when the
  program exits 0 and its output equals the expected one up to trailing whitespace per line;
* assert-style tests: ``["assert add(1, 2) == 3", ...]`` (MBPP's ``test_list``), run after the
  program in one sandboxed run, each counted separately;

or any of these as a JSON string. The program is the last fenced code block of the
completion (```python ... ```), else the whole completion.

Assert results come back on a line tagged with a random nonce, so a program that exits early
(``sys.exit(0)``, ``os._exit(0)``) passes nothing. The program runs in the same interpreter as
its tests, so one written to inspect the harness could still forge that line; stdin/stdout
tests have no such hole.
"""

from __future__ import annotations

import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from grpo_ray.rewards.registry import completion_text, register
from grpo_ray.rewards.sandbox import run_python

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

_HARNESS = """\
import sys
_NONCE, _TESTS, _SOURCE = {nonce!r}, {tests!r}, {source!r}
_scope = {{"__name__": "__main__"}}
_passed = 0
try:
    exec(compile(_SOURCE, "solution.py", "exec"), _scope)
except BaseException:
    _TESTS = []
for _test in _TESTS:
    try:
        exec(compile(_test, "test.py", "exec"), _scope)
        _passed += 1
    except BaseException:
        pass
sys.stdout.flush()
print("\\n" + _NONCE, _passed, flush=True)
"""


def extract_code(text: str) -> str:
    """The last fenced code block of ``text``, or all of it when there is none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def parse_tests(tests: Any) -> tuple[str, list] | None:
    """``("io", [(stdin, expected), ...])`` or ``("assert", [code, ...])``; None for no tests."""
    if tests is None:
        return None
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            return ("assert", [tests]) if tests.strip() else None
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError(f"tests: {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, (list, tuple)):
        if not tests:
            return None
        if all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
            return "io", [(_as_text(t["input"]), _as_text(t["output"])) for t in tests]
        if all(isinstance(t, str) for t in tests):
            return "assert", list(tests)
    raise ValueError(
        "tests: give stdin/stdout pairs [{'input': ..., 'output': ...}], {'inputs': [...], 'outputs': [...]}, "
        f"or assert statements ['assert f(1) == 2', ...]; got {type(tests).__name__}"
    )


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _same_output(actual: str, expected: str) -> bool:
    def lines(s: str) -> list[str]:
        return [line.rstrip() for line in s.rstrip().splitlines()]

    return lines(actual) == lines(expected)


@dataclass(frozen=True)
class CodeReward:
    """Pass fraction of each completion's program on its row's tests, under these sandbox limits.

    Up to ``concurrency`` completions are run at once (threads waiting on sandbox processes), so
    that a batch of programs that all hang costs about ``timeout_s`` per ``concurrency`` of them
    and stays inside the reward pool's per-call timeout (``RewardConfig.timeout_s``).
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    concurrency: int = 8

    def pass_fraction(self, program: str, tests: tuple[str, list]) -> float:
        kind, cases = tests
        limits = {"timeout_s": self.timeout_s, "memory_mb": self.memory_mb}
        if kind == "io":
            passed = 0
            for stdin, expected in cases:
                result = run_python(program, stdin=stdin, **limits)
                passed += result.status == "ok" and _same_output(result.stdout, expected)
            return passed / len(cases)
        nonce = secrets.token_hex(16)
        result = run_python(_HARNESS.format(nonce=nonce, tests=cases, source=program), **limits)
        tagged = [line for line in result.stdout.splitlines() if line.startswith(nonce + " ")]
        return min(int(tagged[-1].split()[1]), len(cases)) / len(cases) if tagged else 0.0

    def __call__(self, prompts, completions, tests=None, **kwargs) -> list[float | None]:
        rows = tests if tests is not None else [None] * len(completions)
        jobs = [(extract_code(completion_text(c)), parse_tests(row)) for c, row in zip(completions, rows)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda job: None if job[1] is None else self.pass_fraction(*job), jobs))


code_reward = CodeReward()
register("code", code_reward)
