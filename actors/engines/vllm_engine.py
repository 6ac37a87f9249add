"""The vLLM engine, and every use of vLLM's internals in this project.

vLLM changes its internals between releases, so they all live here, behind the
:class:`~actors.engines.base.GenerationEngine` methods, and the engine refuses to start on
any vLLM but :data:`SUPPORTED_VLLM` (checked in the driver's preflight, before any GPU work).
The public API (``LLM``, ``SamplingParams``, ``TokensPrompt``, ``LoRARequest``,
``sleep``/``wake_up``, ``reset_prefix_cache``) is used where it serves; the internals used,
with the vLLM 0.25.0 source they rely on (``../shared/gpu/COLOCATE.md`` maps them):

- the in-process model (``VLLM_ENABLE_V1_MULTIPROCESSING=0``):
  ``llm_engine.model_executor.driver_worker.worker.model_runner.model``;
- full weights load in place through the model's own ``load_weights`` (HF names in);
- LoRA: one adapter registered once and pinned to its GPU slot; every update copies the
  learner's A and B x alpha/r straight into the slot with each LoRA layer's ``set_lora``
  (``lora/layers/base_linear.py``), GPU to GPU, never through disk;
- a 4-bit base (``model.load_in_4bit``): vLLM's bitsandbytes loader quantizes the checkpoint
  to NF4 and attaches ``bnb_quant_state`` / ``bnb_shard_offsets`` to each packed weight
  (``model_loader/bitsandbytes_loader.py``); the learner's ``Linear4bit`` layers use them;
- KV-only sleep: a ``SleepModeBackend`` (``device_allocator/sleep_mode_backend.py``) that
  releases and re-maps only the ``kv_cache``-tagged allocations of vLLM's ``CuMemAllocator``.
  Stock ``sleep`` unmaps the weights too, which would pull them from under the learner.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from grpo_ray.config import RolloutConfig, TrainConfig
from grpo_ray.modeling import eos_token_ids, load_tokenizer
from grpo_ray.sampling import Sample, SamplingSpec
from grpo_ray.shared_model import Packed4bit, model_on_tensors

SUPPORTED_VLLM = "0.25.0"
LORA_NAME, LORA_ID = "grpo-ray-policy", 1
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks


def require_supported_vllm() -> None:
    """Raise unless the installed vLLM is the version this adapter was written against (no import)."""
    from importlib import metadata

    try:
        found = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            "rollout.backend='vllm' needs vLLM, which is not installed: pip install -e \".[gpu]\" "
            f"(vllm=={SUPPORTED_VLLM}), or use rollout.backend='hf'"
        ) from None
    if found != SUPPORTED_VLLM:
        raise RuntimeError(
            f"rollout.backend='vllm' supports vLLM {SUPPORTED_VLLM} (its internals change between "
            f"releases); found vLLM {found}: pip install vllm=={SUPPORTED_VLLM}"
        )


def kv_bytes_per_token(hf_config: Any, dtype: torch.dtype) -> int:
    """Key + value bytes one token takes in the KV cache, over all layers."""
    heads = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    return 2 * hf_config.num_hidden_layers * heads * head_dim * torch.finfo(dtype).bits // 8


def engine_sizes(config: TrainConfig, hf_config: Any) -> dict[str, int]:
    """Sequence, token and KV-cache budgets from the batch, not from a share of GPU memory."""
    from grpo_ray.modeling import DTYPES

    g = config.grpo
    prompt = g.max_prompt_length or hf_config.max_position_embeddings - g.max_completion_length
    max_model_len = prompt + g.max_completion_length
    per_worker = math.ceil(config.batch.effective_batch_size / config.rollout.num_workers)
    max_num_seqs = config.rollout.max_num_seqs or per_worker
    block = 16  # vLLM's default block size: a sequence can leave up to one block partly used
    kv_tokens = config.rollout.kv_cache_tokens or max_num_seqs * (max_model_len + block)
    return {
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max(max_model_len, min(16384, max_num_seqs * max_model_len)),
        "kv_cache_memory_bytes": kv_tokens * kv_bytes_per_token(hf_config, DTYPES[config.model.dtype]),
    }


def cudagraph_sizes(max_num_seqs: int) -> list[int]:
    """The decode batch sizes a run can produce, thinned: 1, 2, 3, 4, 6, 8, 12, 16, ... (each power
    of two and the point half-way to the next), up to and including ``max_num_seqs``.

    A decode step of ``b`` sequences replays the graph of the smallest captured size >= ``b``
    (padding at most a third of it); a run never decodes more than ``max_num_seqs`` at once, so
    larger graphs (vLLM captures up to twice that by default) would only cost start-up time and
    graph-pool memory.
    """
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes, power = [], 1
    while power < max_num_seqs:
        sizes.append(power)
        if power >= 2 and power + power // 2 < max_num_seqs:
            sizes.append(power + power // 2)
        power *= 2
    return [*sizes, max_num_seqs]


def compilation_config(rollout: RolloutConfig, max_num_seqs: int) -> dict[str, Any]:
    """vLLM's ``compilation_config`` for a run that is not eager (``rollout.enforce_eager``).

    Graphs only for the batch sizes the run can produce (``rollout.cudagraph_capture_sizes``, or
    :func:`cudagraph_sizes`); one set of graphs, with LoRA, when LoRA is on (every request this
    engine serves carries the adapter, so vLLM's second set without it would never replay);
    ``rollout.compile=False`` skips torch.compile and captures full graphs of decode steps only.
    """
    sizes = sorted(set(rollout.cudagraph_capture_sizes or cudagraph_sizes(max_num_seqs)))
    out: dict[str, Any] = {"cudagraph_capture_sizes": sizes, "cudagraph_specialize_lora": False}
    if not rollout.compile:
        out |= {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}  # CompilationMode.NONE
    return out


def converted(tensors: dict[str, torch.Tensor], dtype: torch.dtype, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``tensors`` times ``scale`` (in their own dtype), then in ``dtype``: three kernels for all
    of them instead of two per tensor (a LoRA update has hundreds). Views of one new buffer."""
    if not tensors:
        return {}
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    if scale != 1.0:
        flat.mul_(scale)
    flat = flat.to(dtype)
    parts = flat.split([t.numel() for t in tensors.values()])
    return {name: part.view(t.shape) for (name, t), part in zip(tensors.items(), parts)}


def lora_rank_slot(r: int) -> int:
    """The smallest rank vLLM accepts for ``max_lora_rank`` that holds rank ``r``."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"lora.r={r} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


class KVOnlySleep:
    """A vLLM sleep-mode backend that releases only the KV cache; the weights stay mapped.

    The learner's parameters are views of the engine's weights in colocate mode, so the
    weights must never be unmapped. Waking re-maps the KV cache at the same virtual
    addresses, so CUDA graphs captured on it stay valid.
    """

    def __init__(self) -> None:
        from vllm.device_allocator.sleep_mode_backend import CuMemBackend

        self._inner = CuMemBackend()

    def _kv_allocations(self) -> list[Any]:
        from vllm.device_allocator.cumem import CuMemAllocator

        return [d for d in CuMemAllocator.get_instance().pointer_to_data.values() if d.tag == "kv_cache"]

    def suspend(self, level: int = 1) -> None:
        from vllm.device_allocator.cumem import unmap_and_release

        for data in self._kv_allocations():
            if not data.is_asleep:
                unmap_and_release(data.handle)
                data.is_asleep = True
        torch.cuda.empty_cache()

    def resume(self, tags: list[str] | None = None) -> None:
        from vllm.device_allocator.cumem import create_and_map

        for data in self._kv_allocations():
            if data.is_asleep:
                create_and_map(data.handle)
                data.is_asleep = False

    def __getattr__(self, name: str) -> Any:  # the rest of the backend interface: CuMemBackend's
        return getattr(self._inner, name)


class VLLMEngine:
    """vLLM's offline ``LLM`` in this process, started once per run."""

    def __init__(self, config: TrainConfig, *, colocated: bool = False, lora_slots: int = 1):
        """``lora_slots``: adapters held at once (LoRA only), one per weight version an asynchronous
        colocated run keeps (``rollout.max_staleness + 1``); :meth:`use_slot` picks the one sampled from."""
        require_supported_vllm()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # keep the model in this process
        from transformers import AutoConfig
        from vllm import LLM

        started = time.perf_counter()
        self.config = config
        self.colocated = colocated
        m = config.model
        self.hf_config = AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code)
        self.sizes = engine_sizes(config, self.hf_config)
        self.eos_ids = eos_token_ids(m, load_tokenizer(m))
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        needed = self.sizes["kv_cache_memory_bytes"] + 2 * 2**30
        lora = config.lora
        kwargs: dict[str, Any] = dict(
            model=m.name_or_path,
            dtype=m.dtype,
            seed=config.run.seed,
            trust_remote_code=m.trust_remote_code,
            skip_tokenizer_init=True,  # token ids in and out: the rollout worker tokenises and decodes
            enable_sleep_mode=colocated,
            enforce_eager=config.rollout.enforce_eager,
            logprobs_mode="processed_logprobs",  # the distribution sampled from, as the TIS correction needs
            max_model_len=self.sizes["max_model_len"],
            max_num_seqs=self.sizes["max_num_seqs"],
            max_num_batched_tokens=self.sizes["max_num_batched_tokens"],
            kv_cache_memory_bytes=self.sizes["kv_cache_memory_bytes"],
            # with kv_cache_memory_bytes set, vLLM only checks that this share of the card is free
            gpu_memory_utilization=min(0.9, max(0.02, needed / total)),
        )
        rollout = config.rollout
        self.compilation = {} if rollout.enforce_eager else compilation_config(rollout, self.sizes["max_num_seqs"])
        if self.compilation:
            kwargs.update(compilation_config=self.compilation)
        if m.load_in_4bit:
            kwargs.update(quantization="bitsandbytes")  # NF4, quantized once while loading the checkpoint
        if lora.enabled:
            kwargs.update(enable_lora=True, max_loras=lora_slots, max_lora_rank=lora_rank_slot(lora.r))
        self.llm = LLM(**kwargs)
        self.model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        if colocated:
            self.llm.llm_engine.model_executor.driver_worker.worker._sleep_mode_backend = KVOnlySleep()
        self.lora_slots = lora_slots if lora.enabled else 0
        self.lora_requests = [self._register_lora(slot) for slot in range(self.lora_slots)]
        self.lora_request = self.lora_requests[0] if self.lora_requests else None
        self._prefix_stale = False  # a slot was rewritten off this thread: reset the prefix cache before sampling
        # colocated full fine-tuning trains the engine's own tensors (shared_policy); LoRA
        # adapters live in vLLM's slots and are copied there on every sync
        self.shares_weights = colocated and not lora.enabled
        self.asleep = False
        self.init_s = time.perf_counter() - started

    # -- generation ------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=spec.n,
            max_tokens=spec.max_new_tokens,
            temperature=0.0 if spec.greedy else spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k or 0,
            min_p=spec.min_p or 0.0,
            repetition_penalty=spec.repetition_penalty,
            stop_token_ids=self.eos_ids,  # included in the output, as the rollout batch expects
            logprobs=0,  # the sampled token's own logprob
            detokenize=False,
        )
        self._reset_stale_prefix_cache()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        samples = []
        for request in outputs:  # in prompt order
            for out in request.outputs:
                ids = list(out.token_ids)
                logps = [step[token].logprob for step, token in zip(out.logprobs, ids)]
                samples.append(Sample(token_ids=ids, logprobs=logps, truncated=out.finish_reason == "length"))
        return samples

    def sampler_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        self._reset_stale_prefix_cache()
        (request,) = self.llm.generate(
            [TokensPrompt(prompt_token_ids=token_ids)], params, lora_request=self.lora_request, use_tqdm=False
        )
        steps = request.prompt_logprobs[1:]  # the first token has no logprob
        return torch.tensor([step[token].logprob for step, token in zip(steps, token_ids[1:])], dtype=torch.float32)

    # -- weights ---------------------------------------------------------------------------------

    def update_weights(self, weights: dict[str, torch.Tensor], slot: int | None = None) -> None:
        """LoRA tensors (peft names) into the pinned slot, or a full HF state dict in place; then
        drop the prefix cache, whose keys do not change with the weights.

        ``slot``: LoRA into that adapter slot, from another thread than the one generating (an
        asynchronous colocated run, which samples from another slot meanwhile): the prefix cache
        is dropped by the generating thread before its next request, between requests."""
        if slot is not None:
            self._set_lora(weights, slot)
            self._prefix_stale = True
            return
        if weights and self.config.lora.enabled:
            self._set_lora(weights, 0)
        elif weights:
            self.model.load_weights((name, tensor) for name, tensor in weights.items())
        self.llm.reset_prefix_cache()

    def use_slot(self, slot: int) -> None:
        """Sample from LoRA slot ``slot`` from the next request on."""
        self.lora_request = self.lora_requests[slot]

    def _reset_stale_prefix_cache(self) -> None:
        if self._prefix_stale:
            self._prefix_stale = False
            self.llm.reset_prefix_cache()

    def _lora_manager(self) -> Any:
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.lora_manager._adapter_manager

    def _register_lora(self, slot: int) -> Any:
        """Register a zero adapter of the configured shape once, pinned to GPU slot ``slot``.

        vLLM loads adapters only from a directory, so the first one (all zeros: the base model)
        is written to a temporary directory; every later update goes to the slot from memory.
        """
        from vllm.lora.request import LoRARequest

        folder = Path(tempfile.mkdtemp(prefix="grpo-ray-lora-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        write_zero_adapter(self.config, self.hf_config, folder)
        # distinct names: vLLM's prefix-cache keys hold the adapter's name
        request = LoRARequest(LORA_NAME if slot == 0 else f"{LORA_NAME}-{slot}", LORA_ID + slot, str(folder))
        self.llm.llm_engine.add_lora(request)
        self.llm.llm_engine.pin_lora(LORA_ID + slot)
        return request

    @torch.no_grad()
    def _set_lora(self, weights: dict[str, torch.Tensor], adapter: int) -> None:
        manager = self._lora_manager()
        slot = manager.lora_index_to_id.index(LORA_ID + adapter)
        lora = self.config.lora
        scale = lora.alpha / lora.r
        a_of, b_of = {}, {}
        for name, tensor in weights.items():
            module = name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
            if ".lora_A." in name:
                a_of[module] = tensor
            elif ".lora_B." in name:
                b_of[module] = tensor
        dtype = next(iter(manager.modules.values())).lora_a_stacked[0].dtype
        a_of, b_of = converted(a_of, dtype), converted(b_of, dtype, scale)
        written = set()
        for module_name, module in manager.modules.items():
            parts = manager.packed_modules.get(module_name, [module_name])
            if not any(p in a_of for p in parts):
                continue
            a = [a_of.get(p) for p in parts]
            b = [b_of.get(p) for p in parts]
            module.set_lora(slot, a if len(parts) > 1 else a[0], b if len(parts) > 1 else b[0])
            written.update(p for p in parts if p in a_of)
        missing = set(a_of) - written
        if missing:
            raise RuntimeError(f"vLLM has no LoRA layer for {sorted(missing)[:3]}: check lora.target_modules")

    # -- colocate: one copy of the base weights ------------------------------------------------

    def base_weight_views(self) -> dict[str, torch.Tensor | Packed4bit]:
        """The engine's weights as HF-named tensors that share its memory.

        Fused projections (``qkv_proj``, ``gate_up_proj``) are cut into their parts: plain
        weights by the layer's ``output_sizes`` (contiguous row blocks); 4-bit weights
        (``model.load_in_4bit``: packed bytes with one bitsandbytes ``QuantState`` per part) by
        the ``bnb_shard_offsets`` and ``bnb_quant_state`` vLLM's bitsandbytes loader attaches.
        The vocabulary rows vLLM pads are cut off.
        """
        packed = getattr(self.model, "packed_modules_mapping", {})
        vocab = self.hf_config.vocab_size
        views: dict[str, torch.Tensor | Packed4bit] = {}
        for name, param in self.model.named_parameters():
            owner_path, leaf = name.rsplit(".", 1)
            hf_name = name.replace(".base_layer", "")
            module_path, _ = hf_name.rsplit(".", 1)
            prefix, _, module_name = module_path.rpartition(".")
            parts = packed.get(module_name, [module_name])
            data = param.data
            quant_states = getattr(param, "bnb_quant_state", None)
            if quant_states is not None:
                if not isinstance(quant_states, dict):  # an unfused layer may carry its one state bare
                    quant_states = {0: quant_states}
                offsets = [int(o) for o in getattr(param, "bnb_shard_offsets", [0, data.shape[0]])]
                pieces: list[Any] = [
                    Packed4bit(data[offsets[i] : offsets[i + 1]], quant_states[i]) for i in range(len(parts))
                ]
            elif len(parts) > 1:
                pieces = list(data.split(list(self.model.get_submodule(owner_path).output_sizes), dim=0))
            elif module_name in ("embed_tokens", "lm_head"):
                pieces = [data[:vocab]]
            else:
                pieces = [data]
            for part, piece in zip(parts, pieces, strict=True):
                views[f"{prefix}.{part}.{leaf}" if prefix else f"{part}.{leaf}"] = piece
        return views

    def shared_policy(self) -> torch.nn.Module:
        """The learner's model, built on the engine's weights (no second copy), LoRA and all."""
        from grpo_ray.modeling import DTYPES, prepare_policy

        m = self.config.model
        model = model_on_tensors(
            self.hf_config, self.base_weight_views(), dtype=DTYPES[m.dtype],
            trainable=not self.config.lora.enabled, trust_remote_code=m.trust_remote_code,
        )
        return prepare_policy(model, m, self.config.lora, trainable=True)

    # -- sleep -----------------------------------------------------------------------------------

    def sleep(self) -> None:
        if self.colocated and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()  # all tags: a partial wake leaves the scheduler paused
            self.asleep = False


def write_zero_adapter(config: TrainConfig, hf_config: Any, folder: Path) -> None:
    """A peft adapter of the configured shape with every tensor zero (the base model's output)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    lora = config.lora
    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules), task_type="CAUSAL_LM"
    )
    with torch.device("meta"):
        shapes = get_peft_model_state_dict(get_peft_model(AutoModelForCausalLM.from_config(hf_config), peft_config))
    save_file({k: torch.zeros(v.shape, dtype=torch.float32) for k, v in shapes.items()}, folder / "adapter_model.safetensors")
    peft_config.save_pretrained(folder)
