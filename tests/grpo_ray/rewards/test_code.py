"""code_reward: program extraction, test formats, pass fractions, and programs that cheat or hang."""

import json
import time

import pytest

from grpo_ray.rewards.code import CodeReward, code_reward, extract_code, parse_tests

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
SUM_STDIN = "Here you go:\n```python\nprint(sum(map(int, input().split())))\n```\nDone."


def test_extract_code_takes_the_last_fenced_block():
    assert extract_code("```python\nx = 1\n```\ntext\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("```\nz = 3\n```") == "z = 3\n"
    assert extract_code("print(1)") == "print(1)"


def test_parse_tests_formats():
    io = [{"input": "1 2", "output": "3"}]
    assert parse_tests(io) == ("io", [("1 2", "3")])
    assert parse_tests(json.dumps(io)) == ("io", [("1 2", "3")])
    assert parse_tests({"inputs": ["1 2"], "outputs": ["3"]}) == ("io", [("1 2", "3")])
    assert parse_tests(["assert f(1) == 2"]) == ("assert", ["assert f(1) == 2"])
    assert parse_tests("assert f(1) == 2") == ("assert", ["assert f(1) == 2"])
    assert parse_tests(None) is None and parse_tests([]) is None
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        parse_tests({"inputs": ["1", "2"], "outputs": ["3"]})
    with pytest.raises(ValueError, match="stdin/stdout pairs"):
        parse_tests([1, 2])


def test_stdin_stdout_pass_fraction():
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2", "output": "4  \n\n"},
             {"input": "5 5", "output": "11"}]
    assert code_reward(None, [SUM_STDIN], tests=[tests]) == [pytest.approx(2 / 3)]


def test_assert_tests_count_each_assert():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
    wrong = "def add(a, b):\n    return abs(a) + b"
    assert code_reward(None, [ADD, wrong], tests=[tests, tests]) == [pytest.approx(2 / 3), pytest.approx(1 / 3)]


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "raise SystemExit",
    "print('\\n' + 'deadbeef' * 4, 3)\nimport os\nos._exit(0)",  # a forged result line, then exit
])
def test_programs_that_exit_early_or_print_a_fake_result_pass_nothing(program):
    assert code_reward(None, [program], tests=[["assert True", "assert 1", "assert 2"]]) == [0.0]


def test_hanging_and_crashing_programs_score_zero_and_no_tests_is_none():
    fast = CodeReward(timeout_s=0.5)
    assert fast(None, ["while True: pass"], tests=[[{"input": "", "output": "1"}]]) == [0.0]
    assert fast(None, ["raise ValueError"], tests=[[{"input": "", "output": ""}]]) == [0.0]
    assert code_reward(None, [ADD, ADD], tests=[None, []]) == [None, None]
    assert code_reward(None, [ADD]) == [None]


def test_hanging_programs_run_concurrently():
    reward = CodeReward(timeout_s=1.0, concurrency=8)
    started = time.monotonic()
    scores = reward(None, ["while True: pass"] * 7 + [SUM_STDIN], tests=[[{"input": "1 2", "output": "3"}]] * 8)
    assert scores == [0.0] * 7 + [1.0]
    assert time.monotonic() - started < 4  # not 7 x 1 s


def test_chat_completions():
    assert code_reward(None, [[{"role": "assistant", "content": ADD}]], tests=[["assert add(1, 1) == 2"]]) == [1.0]
