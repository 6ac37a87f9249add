"""The vLLM engine and the colocated worker on a GPU (vLLM 0.25): run on the device machine.

    python -m pytest -q -m gpu tests/actors/engines/test_vllm_engine.py

One colocated worker per setting (LoRA, full fine-tuning, LoRA on a 4-bit base; vLLM start-up
dominates), in-process, on a small random-weight Qwen2 model: samples and their logprobs, one
copy of the weights, KV-only sleep, sync correctness and the stale-weight guard.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from grpo_ray.advantages import compute_advantages
from grpo_ray.shared_model import Packed4bit
from grpo_ray.weight_sync import probe_tokens, sync_tolerance
from recipes.tiny_model import random_checkpoint
from tests.support.tiny import tiny_config

pytestmark = pytest.mark.gpu
PROMPTS = ["w1 w2 w3 w4", "w9 w8", "w100 w200 w300", "w7"]
VOCAB = 512  # the "small" shape's


def _config(checkpoint, tmp_path, mode: str):
    lora = mode != "full"
    base = tiny_config(
        checkpoint, tmp_path / "run",
        model={"dtype": "bfloat16", "load_in_4bit": mode == "qlora"}, lora={"enabled": lora, "r": 16, "alpha": 32},
        grpo={"max_completion_length": 24, "max_prompt_length": 16},
        rollout={"backend": "vllm", "num_workers": 1, "enforce_eager": True},
        optim={"learning_rate": 5e-2 if lora else 2e-3}, run={"mode": "colocate"},
    )
    return dataclasses.replace(base, generation=dataclasses.replace(base.generation, temperature=0.8))


@pytest.fixture(scope="module", params=["lora", "full", "qlora"])
def worker(request, tmp_path_factory):
    from actors.colocated_worker import ColocatedWorker

    checkpoint = random_checkpoint("small", tmp_path_factory.mktemp("small"))
    config = _config(checkpoint, tmp_path_factory.mktemp("run"), request.param)
    w = ColocatedWorker(config)
    yield w
    w.engine.wake_up()  # vLLM must be awake when it is torn down


def _storage(view) -> torch.Tensor:
    """A weight view's tensor (a 4-bit view's packed bytes)."""
    return view.data if isinstance(view, Packed4bit) else view


def _gap(worker) -> float:
    probe = probe_tokens(VOCAB)
    with worker._awake():
        engine = worker.engine.sampler_logprobs(probe)
    return float((engine - worker.learner.policy_logprobs(probe)).abs().mean())


def test_samples_carry_the_sampled_distributions_logprobs(worker):
    batch = worker.generate(PROMPTS, num_generations=4, seed=0)
    assert len(batch) == 16 and batch.completion_mask.sum() > 16
    eos = set(worker.engine.eos_ids)
    for ids, mask, truncated in zip(batch.completion_ids, batch.completion_mask, batch.truncated):
        n = int(mask.sum())
        assert truncated == (int(ids[n - 1]) not in eos)
    # the learner recomputes the logprob of every sampled token at the same temperature (bf16: rounding only)
    mask = batch.completion_mask.bool()
    gap = (worker.learner.logprobs(batch) - batch.sampling_logps)[mask].abs()
    assert gap.mean() < 0.02 and gap.max() < 0.2


def test_one_copy_of_the_weights(worker):
    views = worker.engine.base_weight_views()
    policy = worker.learner.policy
    lm = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    q = lm.model.layers[0].self_attn.q_proj
    q_weight = q.base_layer.weight if hasattr(q, "base_layer") else q.weight
    assert q_weight.data_ptr() == _storage(views["model.layers.0.self_attn.q_proj.weight"]).data_ptr()
    assert (q_weight.dtype == torch.uint8) == worker.learner.config.model.load_in_4bit
    shared = {_storage(v).data_ptr() for v in views.values()}
    own = [n for n, p in policy.named_parameters() if p.data_ptr() not in shared]
    # the learner's only tensors of its own are its LoRA adapters (none with full fine-tuning)
    assert all(".lora_" in n for n in own)
    assert bool(own) == worker.learner.config.lora.enabled


def test_kv_only_sleep_frees_memory_and_keeps_the_weights(worker):
    engine = worker.engine
    weights = {k: _storage(v).float().sum().item() for k, v in engine.base_weight_views().items()}
    engine.wake_up()
    torch.cuda.synchronize()
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    torch.cuda.synchronize()
    freed = torch.cuda.mem_get_info()[0] - free_awake
    assert freed >= 0.9 * engine.sizes["kv_cache_memory_bytes"]
    assert {k: _storage(v).float().sum().item() for k, v in engine.base_weight_views().items()} == weights
    assert len(worker.generate(PROMPTS, num_generations=2, seed=1)) == 8  # wakes, generates, sleeps


def test_sync_makes_the_engine_sample_from_the_learners_weights(worker):
    batch = worker.generate(PROMPTS, num_generations=4, seed=2)
    batch.rewards = batch.completion_mask.sum(1, keepdim=True).float()  # reward length: a clear direction
    batch.advantages = compute_advantages(batch.rewards, 4)
    worker.train_generation(batch, cycle=0)
    with torch.no_grad():  # a plainly visible update on top (one step at a test's lr moves a random model little)
        for name, p in worker.learner.policy.named_parameters():
            if ".lora_B." in name:
                p.add_(torch.randn_like(p) * 0.05)
    tol = sync_tolerance(worker.learner.config)
    if not worker.engine.shares_weights:  # LoRA: the engine still has the old adapter
        assert _gap(worker) > tol, "the update was too small for the guard to see a skipped sync"
    assert worker.sync_weights() == worker.learner.version
    assert _gap(worker) < tol
