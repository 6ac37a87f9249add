"""RewardPool: shapes, chunking over processes, and failures that become penalties."""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time

import pytest

from grpo_ray.rewards import RewardContractError, RewardResolutionError
from grpo_ray.rewards.pool import RewardPool, _chunks

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def fixtures_importable(monkeypatch):
    monkeypatch.syspath_prepend(HERE)


def test_chunks_cover_the_batch_once():
    for n in range(0, 12):
        for parts in range(1, 5):
            chunks = _chunks(n, parts)
            assert [i for lo, hi in chunks for i in range(lo, hi)] == list(range(n))
            assert all(hi > lo for lo, hi in chunks)


def test_scores_shape_none_to_nan_and_columns():
    completions = ["a", "bb", "ccc", "dddd", "eeeee"]
    functions = ["reward_fixtures:length", "reward_fixtures:none_for_odd", "reward_fixtures:uses_column"]
    with RewardPool(functions, processes=2, timeout_s=10) as pool:
        assert pool.names == functions
        scores = pool.score(["p"] * 5, completions, {"weight": [1, 2, 3, 4, 5]})
    assert [row[0] for row in scores] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [math.isnan(row[1]) for row in scores] == [True, False, True, False, True]
    assert [row[2] for row in scores] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_batch_is_split_over_the_processes():
    with RewardPool(["reward_fixtures:pid"], processes=2, timeout_s=10) as pool:
        pids = [row[0] for row in pool.score(["p"] * 5, ["a"] * 5)]
    assert len(set(pids[:2])) == 1 and len(set(pids[2:])) == 1  # chunks 0..1 and 2..4
    assert pids[0] != pids[2] and os.getpid() not in pids


def test_async_reward_function():
    with RewardPool(["reward_fixtures:async_length"], timeout_s=10) as pool:
        assert pool.score(["p", "p"], ["ab", "abc"]) == [[2.0], [3.0]]


def test_groups_are_never_split_across_processes():
    prompts = [f"p{i // 4}" for i in range(12)]  # 3 groups of 4: a plain 2-way cut would split group 1
    with RewardPool(["reward_fixtures:group_count"], processes=2, timeout_s=10) as pool:
        assert pool.score(prompts, ["c"] * 12, group_size=4) == [[4.0]] * 12
        with pytest.raises(ValueError, match="groups of group_size=5"):
            pool.score(prompts, ["c"] * 12, group_size=5)


@pytest.mark.parametrize("name, reason", [
    ("wrong_length", "returned 1 scores for [23] completions"),  # the chunk of one process
    ("not_numbers", "returned the score 'good', which is not a number or None"),
])
def test_a_function_breaking_the_contract_fails_fast_naming_it(name, reason):
    with RewardPool([f"reward_fixtures:{name}", "reward_fixtures:length"], processes=2, timeout_s=10) as pool:
        with pytest.raises(RewardContractError, match=rf"reward function 'reward_fixtures:{name}' {reason}"):
            pool.score(["p"] * 3, ["a", "bb", "ccc"])
        with pytest.raises(RewardContractError):  # every call: it is the function, not the data
            pool.score(["p"] * 4, ["dddd", "e", "f", "g"])


@pytest.mark.parametrize("name, reason", [
    ("crash", "RuntimeError: reward function exploded"),
    ("die", "crashed its worker process"),
])
def test_failing_function_gives_penalty_warning_and_pool_keeps_working(name, reason, caplog):
    with RewardPool([f"reward_fixtures:{name}", "reward_fixtures:length"], timeout_s=10, penalty=-1.5) as pool:
        with caplog.at_level(logging.WARNING, logger="grpo_ray.rewards"):
            scores = pool.score(["p"] * 3, ["a", "bb", "ccc"])
        assert scores == [[-1.5, 1.0], [-1.5, 2.0], [-1.5, 3.0]]
        assert any(reason in r.getMessage() and name in r.getMessage() for r in caplog.records)
        assert pool.score(["p"], ["dddd"])[0][1] == 4.0


def test_hanging_call_is_killed_penalised_and_its_process_replaced(caplog):
    with RewardPool(["reward_fixtures:hang_on_marker"], processes=2, timeout_s=1.0, penalty=-2.0) as pool:
        before = [p.proc.pid for p in pool._processes]
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="grpo_ray.rewards"):
            scores = pool.score(["p"] * 4, ["a", "b", "HANG", "d"])
        assert time.monotonic() - started < 5
        assert scores == [[1.0], [1.0], [-2.0], [-2.0]]  # the second chunk hung
        assert any("timed out after 1s" in r.getMessage() for r in caplog.records)
        after = [p.proc.pid for p in pool._processes]
        assert before[0] == after[0] and before[1] != after[1]
        assert not os.path.exists(f"/proc/{before[1]}")  # killed and reaped, not left behind
        assert pool.score(["p"] * 4, ["a", "b", "c", "d"]) == [[1.0]] * 4


def test_hanging_inline_function_is_abandoned_with_a_penalty(caplog):
    with RewardPool(["reward_fixtures:slow_inline", "reward_fixtures:length"], timeout_s=0.5, penalty=-3.0) as pool:
        with caplog.at_level(logging.WARNING, logger="grpo_ray.rewards"):
            scores = pool.score(["p", "p"], ["a", "bb"])
    assert scores == [[-3.0, 1.0], [-3.0, 2.0]]
    assert any("slow_inline" in r.getMessage() and "timed out" in r.getMessage() for r in caplog.records)


def test_sandboxed_code_runs_inside_pool_processes():
    program = "```python\nprint(int(input()) * 2)\n```"
    with RewardPool(["code"], processes=2, timeout_s=30) as pool:
        scores = pool.score(["p"] * 3, [program, program, "print(0)"],
                            {"tests": [[{"input": "3", "output": "6"}], None, [{"input": "3", "output": "6"}]]})
    assert scores[0] == [1.0] and math.isnan(scores[1][0]) and scores[2] == [0.0]


def test_killing_a_hung_worker_takes_its_sandboxed_programs_down():
    marker = f"grpo{secrets.token_hex(5)}"  # the program names its process after it (comm)

    def alive() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    name, rest = f.read().rsplit(")", 1)
            except OSError:
                continue
            if marker in name and rest.split()[0] != "Z":
                return True
        return False

    seen = threading.Event()
    scoring = threading.Event()

    def watch() -> None:
        while not scoring.is_set():
            if alive():
                seen.set()
            time.sleep(0.05)

    program = f"open('/proc/self/comm', 'w').write('{marker}')\nimport time\ntime.sleep(300)"
    watcher = threading.Thread(target=watch)
    with RewardPool(["code"], timeout_s=1.0, penalty=-1.0) as pool:
        watcher.start()
        scores = pool.score(["p"], [program], {"tests": [[{"input": "", "output": "1"}]]})
        scoring.set()
        watcher.join()
        assert scores == [[-1.0]]
        assert seen.is_set()  # the program was running in the sandbox when its worker was killed
        deadline = time.monotonic() + 3
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive()


def test_bad_names_fail_at_construction_naming_the_entry():
    with pytest.raises(RewardResolutionError, match=r"'no_such_reward'.*registered names: .*gsm8k_correctness"):
        RewardPool(["math", "no_such_reward"])
    with pytest.raises(RewardResolutionError, match="reward_fixtures:nope"):
        RewardPool(["reward_fixtures:nope"])
    with pytest.raises(ValueError, match="no reward functions"):
        RewardPool([])


def test_mismatched_batch_is_rejected():
    with RewardPool(["reward_fixtures:length"]) as pool:
        with pytest.raises(ValueError, match="2 prompts for 1 completions"):
            pool.score(["p", "p"], ["a"])
        with pytest.raises(ValueError, match="column 'answer'"):
            pool.score(["p"], ["a"], {"answer": []})
        assert pool.score([], []) == []
