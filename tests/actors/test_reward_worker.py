"""RewardWorker in-process, and as a real Ray actor next to a named reward actor."""

from __future__ import annotations

import math
import os
import time

import pytest

from actors.reward_worker import RewardWorker
from grpo_ray.config import RewardConfig
from grpo_ray.rewards import RewardResolutionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "grpo_ray", "rewards")  # reward_fixtures.py: misbehaving functions

PROMPTS = ["What is 9 x 2?"] * 3
COMPLETIONS = ["so \\boxed{18}", [{"role": "assistant", "content": "The answer is 17."}], "```python\nprint(18)\n```"]
COLUMNS = {"answer": ["18", "18", None], "tests": [None, None, [{"input": "", "output": "18"}]]}


@pytest.fixture
def fixtures_importable(monkeypatch):
    monkeypatch.syspath_prepend(FIXTURES)


def test_names_and_scores_in_process(fixtures_importable, caplog):
    config = RewardConfig(functions=("math", "gsm8k_xmlcount", "reward_fixtures:hang", "reward_fixtures:crash"),
                          processes_per_worker=2, timeout_s=1.0, penalty=-1.0)
    worker = RewardWorker(config)
    try:
        assert worker.names() == ["math", "gsm8k_xmlcount", "reward_fixtures:hang", "reward_fixtures:crash"]
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="grpo_ray.rewards"):
            scores = worker.score(PROMPTS, COMPLETIONS, COLUMNS)
        assert time.monotonic() - started < 5
        assert [row[0] for row in scores[:2]] == [1.0, 0.0] and math.isnan(scores[2][0])
        assert [row[1] for row in scores] == [0.0, 0.0, 0.0]
        assert [row[2:] for row in scores] == [[-1.0, -1.0]] * 3
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "'reward_fixtures:hang' timed out" in messages and "reward function exploded" in messages
        assert worker.score(PROMPTS[:1], COMPLETIONS[:1], {"answer": ["18"]})[0][0] == 1.0  # still working
    finally:
        worker.close()


def test_bad_function_fails_at_construction_naming_it():
    with pytest.raises(RewardResolutionError, match=r"'gsm8k_corectness' is not registered; did you mean 'gsm8k_correctness'\? registered names: "):
        RewardWorker(RewardConfig(functions=("math", "gsm8k_corectness")))


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([REPO, FIXTURES])}})
    yield ray
    ray.shutdown()


def test_as_a_ray_actor_with_a_named_reward_actor(ray_cluster):
    ray = ray_cluster

    @ray.remote
    class Judge:
        def score(self, prompts, completions, **columns):
            return [0.5 if isinstance(c, str) else 0.25 for c in completions]

    judge = Judge.options(name="judge", namespace="grpo-test", num_cpus=0).remote()
    functions = ("math", "actor://grpo-test/judge", "reward_fixtures:hang", "reward_fixtures:crash", "code")
    config = RewardConfig(functions=functions, processes_per_worker=1, timeout_s=2.0, penalty=-1.0)
    worker = ray.remote(RewardWorker).options(num_cpus=0).remote(config)
    scores = ray.get(worker.score.remote(PROMPTS, COMPLETIONS, COLUMNS), timeout=60)
    assert ray.get(worker.names.remote()) == list(config.functions)
    assert [row[0] for row in scores[:2]] == [1.0, 0.0] and math.isnan(scores[2][0])
    assert [row[1] for row in scores] == [0.5, 0.25, 0.5]
    assert [row[2:4] for row in scores] == [[-1.0, -1.0]] * 3  # hang and crash became penalties
    assert [math.isnan(row[4]) for row in scores] == [True, True, False] and scores[2][4] == 1.0  # sandbox ran
    again = ray.get(worker.score.remote(PROMPTS[:1], COMPLETIONS[:1], {"answer": ["18"]}), timeout=60)
    assert again[0][:2] == [1.0, 0.5]
    ray.get(worker.close.remote())
    ray.kill(judge)
