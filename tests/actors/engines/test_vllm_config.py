"""What the vLLM engine decides before vLLM is imported: version gate, KV budget, LoRA rank slot."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from actors.engines import vllm_engine
from actors.engines.vllm_engine import SUPPORTED_VLLM, engine_sizes, kv_bytes_per_token, lora_rank_slot
from grpo_ray.config import BatchConfig, ConfigError, GRPOConfig, ModelConfig, RolloutConfig, TrainConfig

QWEN_05B = SimpleNamespace(num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896,
                           max_position_embeddings=32768)


def test_kv_bytes_per_token_of_the_qwen25_05b_shape():
    import torch

    # 2 (K and V) x 24 layers x 2 KV heads x 64 head dims x 2 bytes = 12 KiB
    assert kv_bytes_per_token(QWEN_05B, torch.bfloat16) == 12 * 1024


def test_kv_cache_is_sized_from_the_batch():
    config = TrainConfig(
        grpo=GRPOConfig(num_generations=8, max_prompt_length=64, max_completion_length=256),
        batch=BatchConfig(per_device_train_batch_size=16, gradient_accumulation_steps=32),
        model=ModelConfig(dtype="bfloat16"),
    )
    sizes = engine_sizes(config, QWEN_05B)
    assert sizes["max_model_len"] == 320
    assert sizes["max_num_seqs"] == 512  # the whole generation batch at once
    assert sizes["kv_cache_memory_bytes"] == 512 * (320 + 16) * 12 * 1024
    half = engine_sizes(dataclasses.replace(config, rollout=RolloutConfig(max_num_seqs=256)), QWEN_05B)
    assert half["kv_cache_memory_bytes"] * 2 == sizes["kv_cache_memory_bytes"]
    fixed = dataclasses.replace(config, rollout=RolloutConfig(kv_cache_tokens=1000))
    assert engine_sizes(fixed, QWEN_05B)["kv_cache_memory_bytes"] == 1000 * 12 * 1024


def test_lora_rank_rounds_up_to_a_rank_vllm_accepts():
    assert [lora_rank_slot(r) for r in (1, 4, 8, 16, 17, 64)] == [1, 8, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="lora.r=600"):
        lora_rank_slot(600)


def test_version_gate_names_the_supported_version(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda name: "0.11.0")
    with pytest.raises(RuntimeError, match=f"supports vLLM {SUPPORTED_VLLM}.*found vLLM 0.11.0.*pip install vllm=="):
        vllm_engine.require_supported_vllm()

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(RuntimeError, match=r"not installed.*\.\[gpu\].*rollout.backend='hf'"):
        vllm_engine.require_supported_vllm()


def test_preflight_refuses_vllm_before_any_actor_starts(tmp_path, monkeypatch):
    """The driver checks the vLLM version before Ray starts (no GPU work, no actor)."""
    from importlib import metadata

    import ray

    from grpo_ray.startup import preflight
    from tests.support.tiny import tiny_checkpoint, tiny_config

    monkeypatch.setattr(metadata, "version", lambda name: "0.9.9")
    config = tiny_config(tiny_checkpoint(tmp_path / "m"), tmp_path / "run", rollout={"backend": "vllm", "num_workers": 1})
    with pytest.raises(ConfigError, match="found vLLM 0.9.9"):
        preflight(config)
    assert not ray.is_initialized()


def test_lora_tensors_are_converted_in_bulk_like_one_by_one():
    """``converted`` (what the engine's LoRA load does to every A and B x alpha/r) matches the
    per-tensor conversion in float64, and hands out views of one buffer."""
    from actors.engines.vllm_engine import converted

    torch.manual_seed(0)
    tensors = {
        "q.lora_B": torch.randn(8, 4), "down.lora_B": torch.randn(3, 4, dtype=torch.float64), "k.lora_B": torch.randn(5),
    }
    got = converted(tensors, torch.bfloat16, scale=2.5)
    assert list(got) == list(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == torch.bfloat16 and got[name].shape == t.shape
        assert torch.equal(got[name], (t.double() * 2.5).to(torch.bfloat16))
    assert len({t.untyped_storage().data_ptr() for t in got.values()}) == 1
    assert converted({}, torch.bfloat16) == {}


def test_cudagraph_sizes_stop_at_the_largest_batch_a_run_decodes():
    assert vllm_engine.cudagraph_sizes(1) == [1]
    assert vllm_engine.cudagraph_sizes(16) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert vllm_engine.cudagraph_sizes(17) == [1, 2, 3, 4, 6, 8, 12, 16, 17]
    sizes = vllm_engine.cudagraph_sizes(512)
    assert sizes[-1] == 512 and len(sizes) == 18  # vLLM's default list for 512 sequences holds 51, up to 1024
    # every batch size up to the limit replays a graph padded by less than a third of it
    for b in range(1, 513):
        graph = min(s for s in sizes if s >= b)
        assert (graph - b) / graph < 1 / 3
    with pytest.raises(ValueError, match="max_num_seqs"):
        vllm_engine.cudagraph_sizes(0)


def test_compilation_config_captures_what_the_run_produces_once():
    derived = vllm_engine.compilation_config(RolloutConfig(), 16)
    assert derived == {"cudagraph_capture_sizes": [1, 2, 3, 4, 6, 8, 12, 16], "cudagraph_specialize_lora": False}
    given = vllm_engine.compilation_config(RolloutConfig(cudagraph_capture_sizes=(8, 1, 4, 8)), 16)
    assert given["cudagraph_capture_sizes"] == [1, 4, 8]
    plain = vllm_engine.compilation_config(RolloutConfig(compile=False), 4)
    assert plain["mode"] == 0 and plain["cudagraph_mode"] == "FULL_DECODE_ONLY"
    assert plain["cudagraph_capture_sizes"] == [1, 2, 3, 4]


@pytest.mark.parametrize("sizes", [(), (0, 2), (1.5,), (True,)])
def test_cudagraph_capture_sizes_refused_unless_positive_integers(sizes):
    with pytest.raises(ConfigError, match=r"rollout.cudagraph_capture_sizes=.*integers >= 1"):
        RolloutConfig(cudagraph_capture_sizes=sizes)
