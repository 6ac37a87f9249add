"""RolloutBatch: stacking several workers' batches and cutting micro-batches keep rows intact."""

import pytest
import torch

from grpo_ray.rollout_batch import RolloutBatch

PAD = 0


def _batch(prompts, completions, version=3, seconds=1.0):
    p_width = max(map(len, prompts))
    t_width = max(map(len, completions))
    prompt_ids = torch.tensor([[PAD] * (p_width - len(p)) + p for p in prompts])
    completion_ids = torch.tensor([c + [PAD] * (t_width - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (t_width - len(c)) for c in completions])
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=(prompt_ids != PAD).long(),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        sampling_logps=-completion_ids.float() / 10 * completion_mask,
        truncated=torch.zeros(len(prompts), dtype=torch.bool),
        completions=[str(c) for c in completions],
        weight_version=version,
        pad_token_id=PAD,
        meta={"time/generate_s": seconds},
    )


def test_concat_repads_prompts_left_and_completions_right():
    a = _batch([[5, 6], [7]], [[1, 2, 3], [4]], seconds=1.0)
    b = _batch([[8, 9, 9, 9]], [[2]], seconds=2.5)
    both = RolloutBatch.concat([a, b])
    assert both.prompt_ids.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7], [8, 9, 9, 9]]
    assert both.prompt_mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert both.completion_ids.tolist() == [[1, 2, 3], [4, 0, 0], [2, 0, 0]]
    assert both.completion_mask.sum(1).tolist() == [3, 1, 1]
    assert both.sampling_logps[2].tolist() == pytest.approx([-0.2, 0.0, 0.0])
    assert both.completions == ["[1, 2, 3]", "[4]", "[2]"] and both.meta["time/generate_s"] == 2.5


def test_concat_refuses_batches_from_different_weight_versions():
    with pytest.raises(ValueError, match="weight versions"):
        RolloutBatch.concat([_batch([[5]], [[1]], version=1), _batch([[5]], [[1]], version=2)])


def test_select_trims_to_the_rows_own_widths():
    batch = _batch([[5, 6, 7], [8]], [[1, 2, 3], [4]])
    batch.advantages = torch.tensor([0.5, -0.5])
    part = batch.select([1])
    assert part.prompt_ids.tolist() == [[8]] and part.completion_ids.tolist() == [[4]]
    assert part.advantages.tolist() == [-0.5] and part.completions == ["[4]"]


def test_from_samples_pads_groups_and_keeps_each_samples_tokens():
    from grpo_ray.sampling import Sample

    prompts = [[5, 6, 7], [8]]
    samples = [
        Sample([1, 2], [-0.1, -0.2], truncated=False),
        Sample([3], [-0.3], truncated=False),
        Sample([4, 4, 4], [-0.4, -0.5, -0.6], truncated=True),
        Sample([9, 2], [-0.7, -0.8], truncated=False),
    ]
    batch = RolloutBatch.from_samples(prompts, samples, completions=list("abcd"), pad_token_id=PAD, weight_version=7)
    assert batch.prompt_ids.tolist() == [[5, 6, 7], [5, 6, 7], [PAD, PAD, 8], [PAD, PAD, 8]]  # groups of 2, left-padded
    assert batch.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert batch.completion_ids.tolist() == [[1, 2, PAD], [3, PAD, PAD], [4, 4, 4], [9, 2, PAD]]
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]]
    assert batch.sampling_logps[2].tolist() == pytest.approx([-0.4, -0.5, -0.6])
    assert batch.sampling_logps[1].tolist() == pytest.approx([-0.3, 0.0, 0.0])
    assert batch.truncated.tolist() == [False, False, True, False]
    assert batch.weight_version == 7 and batch.completions == list("abcd")


def test_from_samples_rejects_uneven_groups_and_ragged_logprobs():
    from grpo_ray.sampling import Sample

    with pytest.raises(ValueError, match="split evenly"):
        RolloutBatch.from_samples([[1], [2]], [Sample([1], [0.0], False)] * 3, completions=[], pad_token_id=0, weight_version=0)
    with pytest.raises(ValueError, match="2 tokens but 1 logprobs"):
        RolloutBatch.from_samples([[1]], [Sample([1, 2], [0.0], False)], completions=[], pad_token_id=0, weight_version=0)
