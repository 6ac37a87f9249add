"""Registry: names, import paths, remote URIs, and clear errors."""

import pytest

from grpo_ray.rewards import RewardResolutionError, completion_text, register, registered_names, resolve
from grpo_ray.rewards.gsm8k import GSM8K
from grpo_ray.rewards.math import math_reward
from grpo_ray.rewards.remote import ActorReward, HttpReward


def test_builtin_names_are_registered():
    assert {"math", "code", "gsm8k_correctness", "gsm8k_int", "gsm8k_strict_format", "gsm8k_soft_format",
            "gsm8k_xmlcount", "qwen3_match_format_exactly", "qwen3_match_format_approximately",
            "qwen3_check_answer", "qwen3_check_numbers"} <= set(registered_names())


def test_resolve_names_import_paths_and_remote_uris():
    assert resolve("math") is math_reward
    assert resolve(" grpo_ray.rewards.math:math_reward ") is math_reward
    assert resolve("grpo_ray.rewards.gsm8k:GSM8K.correctness") == GSM8K.correctness
    assert resolve("http://127.0.0.1:8000/score") == HttpReward("http://127.0.0.1:8000/score")
    actor = resolve("actor://rewards/judge")
    assert isinstance(actor, ActorReward) and (actor.namespace, actor.name) == ("rewards", "judge")
    assert resolve("actor://judge").namespace is None


@pytest.mark.parametrize("spec, message", [
    ("gsm8k_corectness", r"'gsm8k_corectness' is not registered; did you mean 'gsm8k_correctness'\? registered names: code, gsm8k_correctness"),
    ("no.such.module:f", "cannot import module 'no.such.module'"),
    ("grpo_ray.rewards.math:nothing", "has no attribute 'nothing'"),
    ("grpo_ray.rewards.math:MAX_ANSWER_CHARS", "is not callable"),
    ("actor://a/b/c", "actor://namespace/name"),
    ("", "registered name"),
])
def test_resolution_errors_name_the_entry(spec, message):
    with pytest.raises(RewardResolutionError, match=message):
        resolve(spec)


def test_register_refuses_rebinding_a_name():
    def mine(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    register("test_registry_mine", mine)
    assert register("test_registry_mine", mine) is mine
    with pytest.raises(ValueError, match="already registered"):
        register("test_registry_mine", lambda prompts, completions, **kw: [])
    with pytest.raises(TypeError, match="not callable"):
        register("test_registry_other", 3)


def test_completion_text_accepts_strings_and_message_lists():
    assert completion_text("hi") == "hi"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "b"
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        completion_text(3)
