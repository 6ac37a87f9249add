"""Loading the policy and turning (prompt, completion) batches into per-token logprobs.

Shared by the learner and the HF rollout engine so both see the same model the same way.
The logprobs never go through the model's ``[B, T, V]`` logits: the decoder's hidden states at
completion positions meet the LM head in :func:`grpo_ray.logprobs.token_logprobs`, chunk by
chunk; or, for training, in the fused GRPO loss (:func:`completion_grpo_loss`), which forms
their gradient in the same pass.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_ray.config import GRPOConfig, LoraConfig, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    """CUDA where this process was given a GPU (Ray hides GPUs from actors that asked for none)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(config: ModelConfig) -> Any:
    """The checkpoint's tokenizer, left-padding, with a pad token.

    A tokenizer saved as a plain ``tokenizer.json`` pipeline (what this project makes on the
    spot) is loaded as exactly that: ``AutoTokenizer`` would rebuild it as the model family's
    tokenizer class (``Qwen2Tokenizer`` for a Qwen2 config) with that family's pre-tokenizer.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    saved = Path(config.name_or_path) / "tokenizer_config.json"
    generic = saved.is_file() and json.loads(saved.read_text()).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES
    loader = PreTrainedTokenizerFast if generic else AutoTokenizer
    tokenizer = loader.from_pretrained(config.name_or_path, trust_remote_code=config.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_token_ids(config: ModelConfig, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the checkpoint's generation config's EOS ids and ``tokenizer``'s."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(config.name_or_path)
    except OSError:  # no generation_config.json: transformers derives it from the model config
        generation = GenerationConfig.from_model_config(
            AutoConfig.from_pretrained(config.name_or_path, trust_remote_code=config.trust_remote_code)
        )
    eos = generation.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(eos) | {tokenizer.eos_token_id})


def load_policy(model: ModelConfig, lora: LoraConfig, *, trainable: bool) -> torch.nn.Module:
    """The causal LM from ``model.name_or_path``, wrapped with LoRA adapters when enabled.

    ``trainable=False`` (rollout engines) still attaches the adapters, so LoRA tensors from the
    learner load by name.
    """
    from transformers import AutoModelForCausalLM

    if not model.name_or_path:
        raise ValueError("model.name_or_path is empty: set it to a checkpoint directory")
    kwargs: dict[str, Any] = {}
    if model.load_in_4bit:  # QLoRA: NF4 with double-quantized statistics, computing in model.dtype
        from transformers import BitsAndBytesConfig

        kwargs = dict(
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=DTYPES[model.dtype],
            ),
            device_map={"": default_device()},  # quantized where it will run: a 4-bit model cannot move
        )
    policy = AutoModelForCausalLM.from_pretrained(
        model.name_or_path, dtype=DTYPES[model.dtype], trust_remote_code=model.trust_remote_code, **kwargs
    )
    return prepare_policy(policy, model, lora, trainable=trainable)


def prepare_policy(policy: torch.nn.Module, model: ModelConfig, lora: LoraConfig, *, trainable: bool) -> torch.nn.Module:
    """LoRA adapters, gradient checkpointing, device and train mode on a loaded causal LM."""
    if lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        policy = get_peft_model(
            policy,
            PeftLoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    if trainable and model.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora.enabled:
            policy.enable_input_require_grads()
    if not getattr(policy, "is_loaded_in_4bit", False):  # a 4-bit model is built on its device
        policy.to(default_device())
    policy.train(trainable)
    if not trainable:
        policy.requires_grad_(False)
    return policy


def causal_lm(policy: torch.nn.Module) -> torch.nn.Module:
    """The transformers CausalLM under an optional peft wrapper (adapters stay injected)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


def export_weights(policy: torch.nn.Module, lora: LoraConfig) -> dict[str, torch.Tensor]:
    """What a rollout engine needs to match the learner: LoRA tensors, or the full state dict,
    detached where they live (a walk over the model: :class:`WeightExport` does it once)."""
    if lora.enabled:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(policy)
    else:
        state = policy.state_dict()
    return {k: v.detach() for k, v in state.items()}


class WeightExport:
    """:func:`export_weights` of one policy, call after call, without walking the model each time.

    ``state_dict()``, and PEFT's ``get_peft_model_state_dict`` on top of it, visit every module
    of the model on each call: 15 ms for a Qwen2.5-0.5B-shaped model with LoRA (2-core box), on
    a LoRA weight sync whose budget is 50 ms. What the walk returns are the model's parameters
    and buffers themselves, under names fixed for the run; so the first call records which
    tensor each name is, and later calls only hand those out. The record holds the ``Parameter``
    objects, so it stays true when optimizer steps or loads write in place and when a wrapper
    (DeepSpeed) re-points a parameter's ``.data``. Should the walk return a tensor that is no
    parameter or buffer of the model, every call walks again.
    """

    def __init__(self, policy: torch.nn.Module, lora: LoraConfig):
        self.policy, self.lora = policy, lora
        self.sources: dict[str, torch.Tensor] | None = None
        self._recorded = False

    def __call__(self, copy_to_cpu: bool = True) -> dict[str, torch.Tensor]:
        """The tensors; ``copy_to_cpu=False`` hands them out where they live (an engine in the
        same process, or NCCL, reads them there)."""
        if self.sources is None:
            state = export_weights(self.policy, self.lora)
            if not self._recorded:
                self._recorded = True
                self.sources = self._record(state)
        else:
            state = {name: t.detach() for name, t in self.sources.items()}
        if not copy_to_cpu:
            return state
        return {k: v.to("cpu", copy=True) for k, v in state.items()}

    def _record(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        def key(t: torch.Tensor) -> tuple[Any, ...]:
            return t.data_ptr(), t.shape, t.stride(), t.dtype, t.device

        owners = {key(t): t for t in (*self.policy.parameters(), *self.policy.buffers())}
        sources = {name: owners.get(key(t)) for name, t in state.items()}
        return sources if all(t is not None for t in sources.values()) else None


def import_weights(policy: torch.nn.Module, weights: dict[str, torch.Tensor], lora: LoraConfig) -> None:
    """Load tensors produced by :func:`export_weights` into a policy of the same shape."""
    if lora.enabled:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(policy, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"LoRA tensors do not match the rollout model: unexpected {unexpected[:3]}")
    else:
        policy.load_state_dict(weights, strict=True)


def sequence_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` assigns them. ``[B, L]``."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def completion_hidden(
    policy: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden, head_weight, completion_ids)``: the decoder's final hidden state before each
    completion token ``[B, T, H]``, the LM head's ``[V, H]`` weight and ``completion_ids`` on its
    device. The decoder runs once over ``[B, P + T]`` (prompts left-padded)."""
    lm = causal_lm(policy)
    weight = lm.get_output_embeddings().weight
    device = weight.device
    completion_ids = completion_ids.to(device)
    input_ids = torch.cat([prompt_ids.to(device), completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).to(device)  # [B, P+T]
    hidden = lm.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=sequence_positions(attention_mask),
        use_cache=False,
    ).last_hidden_state  # [B, P+T, H]
    p, t = prompt_ids.shape[1], completion_ids.shape[1]
    return hidden[:, p - 1 : p + t - 1], weight, completion_ids  # the state that predicts each completion token


def completion_logprobs(
    policy: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float,
    impl: str = "auto",
    chunk_size: int = 4096,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each completion token under ``policy`` at ``temperature``. ``[B, T]``.

    prompt_ids/prompt_mask ``[B, P]`` (left-padded), completion_ids/completion_mask ``[B, T]``.
    The decoder runs once over ``[B, P + T]``; the hidden state before each completion token
    is scored against the LM head by :func:`grpo_ray.logprobs.token_logprobs`.
    """
    from grpo_ray.logprobs import token_logprobs

    hidden, weight, completion_ids = completion_hidden(policy, prompt_ids, prompt_mask, completion_ids, completion_mask)
    return token_logprobs(
        hidden, weight, completion_ids,
        temperature=temperature, chunk_size=chunk_size, impl=impl, with_entropy=with_entropy,
    )


def completion_grpo_loss(
    policy: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    config: GRPOConfig,
    temperature: float,
    impl: str = "auto",
    chunk_size: int = 1024,
    with_entropy: bool = False,
    **loss_kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, metrics)`` of :func:`grpo_ray.loss.grpo_loss` on ``policy``'s logprobs of the
    completions, in one call: the decoder runs as in :func:`completion_logprobs`, and its hidden
    states go to the fused :func:`grpo_ray.loss.chunked_grpo_loss`, which forms the gradient to
    them (and to the LM head, when it trains) in this forward pass, chunk by chunk of whole
    completions, never holding ``[B, T, V]`` logits nor recomputing them in backward. Same value,
    gradients and metrics as ``grpo_loss(completion_logprobs(...), ...)``.

    advantages ``[B]``; loss_mask ``[B, T]`` the tokens that train (grpo_loss's ``mask``);
    chunk_size: tokens (whole completions) per chunk, ``ModelConfig.fused_loss_chunk_size``;
    ``loss_kwargs``: grpo_loss's other inputs (``old_logps``, ``ref_logps``, ``sampling_logps``,
    ``num_items_in_batch``, the scaling and micro-batch keywords); tensors are moved to the
    model's device.
    """
    from grpo_ray.loss import chunked_grpo_loss

    hidden, weight, completion_ids = completion_hidden(policy, prompt_ids, prompt_mask, completion_ids, completion_mask)
    on = lambda x: x.to(hidden.device) if isinstance(x, torch.Tensor) else x  # noqa: E731
    return chunked_grpo_loss(
        hidden, weight, completion_ids, on(loss_mask), on(advantages), config,
        temperature=temperature, impl=impl, chunk_size=chunk_size, with_entropy=with_entropy, fused=True,
        **{k: on(v) for k, v in loss_kwargs.items()},
    )


def completion_fused_loss(
    policy: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    loss_fn: Any,
    temperature: float,
    impl: str = "auto",
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loss, logps, entropies)``: ``loss_fn`` (a :data:`grpo_ray.logprobs.RowLoss`, additive
    over rows) of ``policy``'s logprobs of the completions through
    :func:`grpo_ray.logprobs.fused_linear_loss`, its gradient to the hidden states (and the head)
    formed in this forward; the logprobs and entropies come back detached. The learner's
    execution batches call it with a closure over their micro-batch slices."""
    from grpo_ray.logprobs import fused_linear_loss

    hidden, weight, completion_ids = completion_hidden(policy, prompt_ids, prompt_mask, completion_ids, completion_mask)
    return fused_linear_loss(
        hidden, weight, completion_ids, loss_fn, temperature=temperature, chunk_size=chunk_size, impl=impl,
        with_entropy=with_entropy,
    )


class CompletionLogprobs(torch.nn.Module):
    """:func:`completion_logprobs` of ``policy`` as one module (same arguments, less ``policy``);
    given ``loss_fn``, :func:`completion_fused_loss` instead: ``(loss, logps, entropies)``.

    The learner runs every forward through it, and a train backend wraps it whole: ZeRO-3 gathers
    a sharded weight around the forward of the module that reads it, and the LM head's weight is
    read here, outside the LM head's own forward.
    """

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, *args: Any, loss_fn: Any = None, **kwargs: Any) -> Any:
        if loss_fn is not None:
            return completion_fused_loss(self.policy, *args, loss_fn=loss_fn, **kwargs)
        return completion_logprobs(self.policy, *args, **kwargs)


@torch.no_grad()
def probe_logprobs(score: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """``[len(token_ids) - 1]`` logprob of each token after the first, at temperature 1 (float32, CPU).

    ``score``: a :class:`CompletionLogprobs` (or what wraps one, e.g. a DeepSpeed engine)."""
    ids = torch.tensor([token_ids], dtype=torch.long)
    ones = torch.ones_like(ids)
    logps = score(ids[:, :1], ones[:, :1], ids[:, 1:], ones[:, 1:], temperature=1.0, impl="torch")
    return logps[0].float().cpu()
