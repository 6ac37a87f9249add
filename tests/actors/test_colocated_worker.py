"""The asynchronous colocated worker in-process: each rollout samples with the weight version it
names while the learner trains and pushes newer ones (hf on CPU; vLLM LoRA slots on a GPU)."""

from __future__ import annotations

import threading

import pytest
import torch

from grpo_ray.advantages import compute_advantages
from grpo_ray.weight_sync import probe_tokens, sync_tolerance
from tests.support.tiny import tiny_config

PROMPTS = ["1+2=", "33+4=", "5+", "ab"]


def _train(worker, batch, cycle: int) -> None:
    batch.rewards = -batch.completion_mask.sum(1, keepdim=True).float()  # shorter is better
    batch.advantages = compute_advantages(batch.rewards, 4)
    worker.train_generation(batch, cycle)


def test_async_colocated_worker_samples_each_rollout_with_the_version_it_names(checkpoint, tmp_path):
    from actors.colocated_worker import ColocatedWorker

    worker = ColocatedWorker(tiny_config(checkpoint, tmp_path, rollout={"num_workers": 1, "max_staleness": 1},
                                         optim={"learning_rate": 0.2}, run={"mode": "colocate"}))
    assert worker.engine.model is not worker.learner.policy  # the engine samples from its own copy
    assert worker.sync_weights() == 0
    first = worker.generate(PROMPTS, num_generations=4, seed=1, weight_version=0)
    probe = probe_tokens(16)
    before = worker.sampler_logprobs(probe, weight_version=0)

    # a rollout due with version 2 waits for its push while the learner trains cycle 0
    later: dict = {}
    rollout = threading.Thread(target=lambda: later.update(batch=worker.generate(
        PROMPTS, num_generations=4, seed=2, weight_version=2)))
    rollout.start()
    _train(worker, first, 0)  # two optimizer steps: version 2
    assert rollout.is_alive()  # still waiting: version 2 is not pushed yet
    assert worker.sync_weights() == 2
    rollout.join(timeout=60)
    assert later["batch"].weight_version == 2

    # version 0 is still held (S + 1 = 2 versions): the same samples, the same probe
    again = worker.generate(PROMPTS, num_generations=4, seed=1, weight_version=0)
    assert torch.equal(again.completion_ids, first.completion_ids) and torch.equal(again.sampling_logps, first.sampling_logps)
    assert torch.equal(worker.sampler_logprobs(probe, weight_version=0), before)
    # version 2 is the learner's weights
    now = worker.sampler_logprobs(probe, weight_version=2)
    assert (now - worker.learner.policy_logprobs(probe)).abs().max() < sync_tolerance(worker.learner.config)
    assert (now - before).abs().max() > 1e-3  # the training moved them
    assert worker.weight_version() == 2

    # a third version evicts the oldest: two at most
    _train(worker, later["batch"], 1)
    assert worker.sync_weights() == 4 and sorted(worker._held) == [2, 4]


@pytest.mark.gpu
def test_vllm_lora_slots_keep_a_rollouts_adapter_while_the_learner_pushes_the_next(tmp_path_factory):
    """vLLM with max_loras = 2: a rollout with version 0's slot runs on a thread while the learner trains
    and copies version 2 into the other slot; the probe of each slot is its version's."""
    import dataclasses

    from actors.colocated_worker import ColocatedWorker
    from recipes.tiny_model import random_checkpoint

    checkpoint = random_checkpoint("small", tmp_path_factory.mktemp("small"))
    base = tiny_config(
        checkpoint, tmp_path_factory.mktemp("run"), model={"dtype": "bfloat16"}, lora={"r": 16, "alpha": 32},
        grpo={"max_completion_length": 24, "max_prompt_length": 16}, optim={"learning_rate": 5e-2},
        rollout={"backend": "vllm", "num_workers": 1, "enforce_eager": True, "max_staleness": 1}, run={"mode": "colocate"},
    )
    worker = ColocatedWorker(dataclasses.replace(base, generation=dataclasses.replace(base.generation, temperature=0.8)))
    prompts = ["w1 w2 w3 w4", "w9 w8", "w100 w200 w300", "w7"]
    assert worker.engine.lora_slots == 2 and not worker.engine.asleep
    assert worker.sync_weights() == 0
    probe = probe_tokens(512)
    before = worker.sampler_logprobs(probe, weight_version=0)
    batch = worker.generate(prompts, num_generations=4, seed=0, weight_version=0)
    with torch.no_grad():  # a plainly visible update on top of the step
        for name, p in worker.learner.policy.named_parameters():
            if ".lora_B." in name:
                p.add_(torch.randn_like(p) * 0.05)
    out: dict = {}
    rollout = threading.Thread(target=lambda: out.update(batch=worker.generate(
        prompts, num_generations=4, seed=1, weight_version=0)))
    rollout.start()  # generates with slot 0 while the learner trains and writes slot 1
    _train(worker, batch, 0)
    assert worker.sync_weights() == 2
    rollout.join(timeout=300)
    assert out["batch"].weight_version == 0 and len(out["batch"]) == 16
    tol = sync_tolerance(worker.learner.config)
    assert (worker.sampler_logprobs(probe, weight_version=0) - before).abs().mean() < tol  # slot 0 untouched
    now = worker.sampler_logprobs(probe, weight_version=2)
    assert (now - worker.learner.policy_logprobs(probe)).abs().mean() < tol < (now - before).abs().mean()
