"""DeepSpeed ZeRO learners on CPU (DeepSpeed's CPU accelerator, gloo) through the real Ray loop.

Two ZeRO ranks (ZeRO-2 with the optimizer offloaded to CPU memory and its rows in the learner's
execution batches, ZeRO-3) with half the
per-rank batch must log the same per-step losses and gradient norms as one plain process with
the same seed and global batch (both average gradients over ranks), pass the stale-weight guard after every sync (the engine's logprobs against the
learner's: ZeRO-3 gathers its sharded weights for both), save a loadable checkpoint of full
tensors, and resume from DeepSpeed's own checkpoint to the same later steps. Skipped where
DeepSpeed is not installed. (LoRA under ZeRO: tests/actors/test_learner_deepspeed_gpu.py.)
"""

from __future__ import annotations

import pytest
import ray
import torch

from grpo_ray.trainer import GRPOTrainer
from tests.support.tiny import tiny_config

pytest.importorskip("deepspeed")

ROWS = [{"prompt": p} for p in ["1+2=", "33+4=", "5+", "ab", "7=", "12+12=", "9+9", "a+b="]]
STEPS = 3
LORA = False
#: fp32 on CPU: the ranks' gradient sums and DeepSpeed's flat buffers change float rounding order only.
CLOSE = dict(rel=1e-4, abs=1e-6)


def _config(checkpoint, out, backend, sync_backend="object_store", offload=False, max_tokens=None, **run):
    """Full fine-tuning (ZeRO-3 then shards every weight); one optimizer step per cycle of 16 completions."""
    ranks = 1 if backend == "plain" else 2
    return tiny_config(
        checkpoint, out, lora={"enabled": LORA}, rollout={"num_workers": 1, "sync_backend": sync_backend},
        reward={"num_workers": 1},
        batch={"per_device_train_batch_size": 8 // ranks, "steps_per_generation": 2, "gradient_accumulation_steps": 2,
               "num_processes": ranks, "train_backend": backend, "zero_offload_optimizer": offload,
               "max_tokens_per_forward": max_tokens},
        run={"max_steps": STEPS, "mode": "distributed"} | run,
    )


def _train(config):
    trainer = GRPOTrainer(config, ROWS)
    try:
        return trainer.run().history
    finally:
        trainer.shutdown()


def _assert_same_steps(history, reference):
    assert [r["step"] for r in history] == [r["step"] for r in reference]
    for mine, ref in zip(history, reference, strict=True):
        assert mine["reward"] == ref["reward"]  # same samples (same rollout seeds, same weights synced)
        assert mine["loss"] == pytest.approx(ref["loss"], **CLOSE)
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], **CLOSE)
        assert mine["skipped"] == 0.0 and mine["time/sync_check_s"] > 0  # the stale-weight guard passed


@pytest.fixture(scope="module")
def reference(cluster, checkpoint, tmp_path_factory):
    history = _train(_config(checkpoint, tmp_path_factory.mktemp("plain"), "plain"))
    assert len({round(r["loss"], 6) for r in history}) > 1  # the steps differ: a real comparison
    return history


def test_two_zero2_ranks_offloaded_in_execution_batches_match_one_plain_process(checkpoint, reference, tmp_path):
    """ZeRO-2 with the optimizer offloaded, each rank's rows packed into forwards of a few rows
    across the micro-steps of a window (batch.max_tokens_per_forward): ranks that pack different
    numbers of forwards must agree on one, since ZeRO reduces in every backward."""
    config = _config(checkpoint, tmp_path, "deepspeed_zero2", offload=True, max_tokens=16)
    _assert_same_steps(_train(config), reference)


def test_two_zero3_ranks_match_one_plain_process_save_full_weights_and_resume(checkpoint, reference, tmp_path):
    from transformers import AutoModelForCausalLM

    # the weights reach the engine by broadcast: every rank helps gather them, rank 0 sends
    history = _train(_config(checkpoint, tmp_path / "run", "deepspeed_zero3", "collective", save_steps=2))
    _assert_same_steps(history, reference)
    saved = tmp_path / "run" / "checkpoint-2"
    base = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(saved).state_dict()  # gathered from the shards
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in base.items()}
    assert all(not torch.equal(trained[k], base[k]) for k in base if "weight" in k and "norm" not in k)
    resumed = _train(_config(checkpoint, tmp_path / "resumed", "deepspeed_zero3", resume=str(saved)))
    _assert_same_steps(resumed, reference[2:])  # DeepSpeed's checkpoint: shards of weights and AdamW moments


def test_a_non_finite_zero2_step_is_skipped_and_leaves_the_weights_alone(cluster, checkpoint, tmp_path):
    """DeepSpeed's own check is the guard: a NaN gradient norm skips the step on every rank."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("zero_bench", Path(__file__).parents[2] / "benchmarks" / "zero_bench.py")
    bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shape = bench.Shape(prompts=4, generations=4, prompt_tokens=4, completion_tokens=4, micro_batch=4)
    config = _config(checkpoint, tmp_path, "deepspeed_zero2")  # 2 ranks x 2 micro-steps of 4: one step per batch
    group, ranks, pg = bench.start_learners(config, gpus=0.0)
    try:
        before = ray.get(group.weights.remote())[1]
        poisoned = bench.synthetic_batch(shape, 14, 0, seed=0)
        poisoned.advantages[:2] = float("nan")  # rank 0's first micro-step
        (bad,) = ray.get(group.train_generation.remote(poisoned, 0))
        version, after = ray.get(group.weights.remote())
        assert bad["skipped"] == 1.0 and version == 1
        assert all(torch.equal(before[k], after[k]) for k in before)
        (good,) = ray.get(group.train_generation.remote(bench.synthetic_batch(shape, 14, 0, seed=1), 1))
        assert good["skipped"] == 0.0 and good["grad_norm"] > 0
        assert any(not torch.equal(before[k], v) for k, v in ray.get(group.weights.remote())[1].items())
    finally:
        for r in ranks:
            ray.kill(r)
        ray.util.remove_placement_group(pg)
