"""Generation with transformers ``generate``: the CPU engine and the reference for the others."""

from __future__ import annotations

import time
from typing import Any

import torch

from grpo_ray.config import GenerationConfig, TrainConfig
from grpo_ray.modeling import import_weights, load_policy, load_tokenizer
from grpo_ray.rollout_batch import RolloutBatch


def encode_prompts(tokenizer: Any, prompts: list[Any], max_prompt_length: int | None) -> list[list[int]]:
    """Token ids of each prompt: chat messages through the chat template, strings as they are.

    Prompts longer than ``max_prompt_length`` keep their last tokens (TRL truncates on the left).
    """
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # a BatchEncoding in newer transformers
        if max_prompt_length is not None:
            ids = ids[-max_prompt_length:]
        encoded.append(list(ids))
    return encoded


def completion_mask_and_truncation(completion_ids: torch.Tensor, eos_ids: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first EOS; rows without EOS are truncated. ``[B, T]``, ``[B]``."""
    is_eos = torch.isin(completion_ids, torch.tensor(sorted(eos_ids)))  # [B, T]
    has_eos = is_eos.any(1)  # [B]
    first = torch.where(has_eos, is_eos.int().argmax(1), completion_ids.shape[1])  # [B]
    positions = torch.arange(completion_ids.shape[1]).unsqueeze(0)  # [1, T]
    return (positions <= first.unsqueeze(1)).long(), ~has_eos


class HFEngine:
    """Owns a policy copy and samples from it with ``model.generate``."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        self.model = load_policy(config.model, config.lora, trainable=False)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | {self.tokenizer.eos_token_id}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        import_weights(self.model, weights, self.config.lora)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[Any],
        *,
        num_generations: int,
        sampling: GenerationConfig,
        max_new_tokens: int,
        greedy: bool = False,
        seed: int = 0,
    ) -> RolloutBatch:
        started = time.perf_counter()
        tok = self.tokenizer
        encoded = encode_prompts(tok, prompts, self.config.grpo.max_prompt_length)
        width = max(len(ids) for ids in encoded)
        prompt_ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            prompt_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[i, width - len(ids) :] = 1
        torch.manual_seed(seed)
        kwargs: dict[str, Any] = dict(do_sample=False) if greedy else dict(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or 0,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
        )
        device = self.model.device
        out = self.model.generate(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask.to(device),
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_generations,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
            return_dict_in_generate=True,
            output_scores=True,
            **kwargs,
        )
        completion_ids = out.sequences[:, width:].cpu()  # [N, T]
        scores = torch.stack(out.scores, dim=1).float().cpu()  # [N, T, V], the processed sampling distribution
        sampling_logps = torch.log_softmax(scores, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        mask, truncated = completion_mask_and_truncation(completion_ids, self.eos_ids)
        completion_ids = completion_ids.masked_fill(mask == 0, tok.pad_token_id)
        sampling_logps = sampling_logps.masked_fill(mask == 0, 0.0)
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        repeated = [p for p in prompts for _ in range(num_generations)]
        completions = [t if isinstance(p, str) else [{"role": "assistant", "content": t}] for p, t in zip(repeated, texts)]
        t = max(int(mask.sum(1).max()), 1)  # trim columns that are padding in every row
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(num_generations, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(num_generations, dim=0),
            completion_ids=completion_ids[:, :t],
            completion_mask=mask[:, :t],
            sampling_logps=sampling_logps[:, :t],
            truncated=truncated,
            completions=completions,
            weight_version=-1,
            pad_token_id=tok.pad_token_id,
            meta={"time/generate_s": time.perf_counter() - started},
        )
