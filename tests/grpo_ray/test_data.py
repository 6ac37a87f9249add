"""Prompt datasets: loading a local file with load_dataset, checking rows, the seeded order."""

import json

import pytest

from grpo_ray.data import PromptSampler, columns_of, load_prompt_dataset


def test_a_loaded_jsonl_dataset_feeds_the_sampler(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(5)))
    dataset = load_prompt_dataset(str(path))
    sampler = PromptSampler(dataset, seed=0)
    drawn = sampler.next(5) + sampler.next(5)  # two epochs, each a permutation
    assert sorted(r["prompt"] for r in drawn[:5]) == sorted(r["prompt"] for r in drawn[5:]) == [f"{i}+1=" for i in range(5)]
    assert [r["prompt"] for r in PromptSampler(dataset, seed=0).next(5)] == [r["prompt"] for r in drawn[:5]]


def test_rows_without_a_prompt_are_rejected_naming_the_row():
    with pytest.raises(ValueError, match="row 1 has no 'prompt'"):
        PromptSampler([{"prompt": "a"}, {"question": "b"}], seed=0)


def test_columns_repeat_once_per_completion():
    assert columns_of([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}], 2) == {
        "answer": ["1", "1", "2", "2"]
    }


def test_sampler_state_continues_the_same_sequence():
    rows = [{"prompt": str(i)} for i in range(7)]
    reference = PromptSampler(rows, seed=3)
    first = reference.next(5)
    saved = json.loads(json.dumps(reference.state()))  # as checkpoints store it
    rest = [reference.next(4) for _ in range(3)]  # crosses epochs
    resumed = PromptSampler(rows, seed=99)
    resumed.load_state(saved)
    assert first and [resumed.next(4) for _ in range(3)] == rest
