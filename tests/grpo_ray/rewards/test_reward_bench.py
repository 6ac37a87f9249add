"""benchmarks/reward_bench.py: its peer functions resolve in RewardPool worker processes by
their "benchmarks.reward_bench:..." paths and score the benchmark batches as ours do, so the
table's ratios compare the same work (tiny batches; no timing is checked)."""

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

ROWS = [
    {"question": "q1", "answer": "She makes 9 * 2 = <<9*2=18>>18 dollars.\n#### 18"},
    {"question": "q2", "answer": "It takes 2 + 1 = <<2+1=3>>3 bolts.\n#### 3"},
]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.reward_bench")


def test_peers_run_in_pool_workers_and_agree(bench, tmp_path):
    gsm8k = tmp_path / "test.jsonl"
    gsm8k.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    math_rows = bench.measure([("math", "math"), bench.PEERS["math"]], bench.math_batch(str(gsm8k), 8), 2, 1)
    code_rows = bench.measure([("code", "code"), bench.PEERS["code"]], bench.code_batch(4), 2, 1)
    for ours, peer in (math_rows, code_rows):
        assert not ours["failed_calls"] and not peer["failed_calls"], (ours, peer)
        assert ours["vs_peer"] == pytest.approx(ours["samples_per_s"] / peer["samples_per_s"])
        assert "vs_peer" not in peer and peer["met"] is None
    assert math_rows[0]["mean_score"] == math_rows[1]["mean_score"] == 0.75  # the "#### N+1" ending is wrong
    assert code_rows[0]["mean_score"] == code_rows[1]["mean_score"] == 1.0


def test_plain_subprocess_peer_fails_wrong_programs(bench):
    completions = ["print(int(input()) * 2)", "```python\nimport sys; sys.exit(3)\n```", "print(7)"]
    tests = [[{"input": "4\n", "output": "8\n"}]] * 3
    assert bench.plain_subprocess_reward([""] * 3, completions, tests=tests) == [1.0, 0.0, 0.0]
