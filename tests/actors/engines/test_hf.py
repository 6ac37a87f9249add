"""The hf engine: per-sample outputs, and sampler logprobs of the distribution actually sampled."""

from __future__ import annotations

import pytest
import torch

from actors.engines.hf import HFEngine
from grpo_ray.sampling import SamplingSpec
from tests.support.tiny import tiny_checkpoint, tiny_config


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    return HFEngine(tiny_config(checkpoint, tmp_path_factory.mktemp("run"), lora={"enabled": False}))


PROMPTS = [[3, 4, 5], [7, 1]]


@pytest.mark.parametrize(
    "filters",
    [
        dict(temperature=0.7),
        dict(temperature=1.3, top_k=5),
        dict(temperature=0.9, top_p=0.8, repetition_penalty=1.3),
        dict(min_p=0.2),
    ],
)
def test_sampler_logprobs_are_those_of_the_processed_distribution(engine, filters):
    """Same seed, same filters through generate's own path with every step's scores kept (the
    old [N, T, V] way): the same tokens come out, and each logprob is that token's entry."""
    spec = SamplingSpec(n=3, max_new_tokens=8, seed=11, **filters)
    samples = engine.generate(PROMPTS, spec)

    width = max(map(len, PROMPTS))
    ids = torch.tensor([[engine.pad_token_id] * (width - len(p)) + p for p in PROMPTS])
    torch.manual_seed(spec.seed)
    out = engine.model.generate(
        input_ids=ids, attention_mask=(torch.arange(width) >= width - torch.tensor([[len(p)] for p in PROMPTS])).long(),
        max_new_tokens=spec.max_new_tokens, num_return_sequences=spec.n, pad_token_id=engine.pad_token_id,
        eos_token_id=engine.eos_ids, do_sample=True, temperature=spec.temperature, top_k=spec.top_k or 0,
        top_p=spec.top_p, min_p=spec.min_p, repetition_penalty=spec.repetition_penalty,
        return_dict_in_generate=True, output_scores=True,
    )
    reference = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)  # [N, T, V]
    completions = out.sequences[:, width:]
    assert len(samples) == len(PROMPTS) * spec.n
    for i, s in enumerate(samples):
        n = len(s.token_ids)
        assert s.token_ids == completions[i, :n].tolist()
        expected = reference[i, torch.arange(n), completions[i, :n]]
        torch.testing.assert_close(torch.tensor(s.logprobs), expected, rtol=0, atol=1e-5)
        assert torch.isfinite(expected).all()


def test_samples_stop_after_eos_or_are_marked_truncated(engine):
    samples = engine.generate(PROMPTS, SamplingSpec(n=8, max_new_tokens=6, seed=0))
    eos = set(engine.eos_ids)
    for s in samples:
        assert len(s.token_ids) == len(s.logprobs) >= 1
        assert all(t not in eos for t in s.token_ids[:-1])  # nothing after the first EOS
        assert s.truncated == (s.token_ids[-1] not in eos)
        assert not s.truncated or len(s.token_ids) == 6
    assert any(s.truncated for s in samples) and any(not s.truncated for s in samples)


def test_greedy_is_deterministic_and_probe_matches_sampling(engine):
    spec = SamplingSpec(n=1, max_new_tokens=5, greedy=True)
    a, b = engine.generate(PROMPTS, spec), engine.generate(PROMPTS, spec)
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    # the probe's logprob of a greedy continuation equals what generate recorded for it
    seq = PROMPTS[0] + a[0].token_ids
    probe = engine.sampler_logprobs(seq)
    torch.testing.assert_close(probe[-len(a[0].token_ids):], torch.tensor(a[0].logprobs), rtol=0, atol=1e-5)
