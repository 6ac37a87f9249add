"""Prompts to token ids and sampled token ids back to completions, shared by every engine."""

from __future__ import annotations

from typing import Any


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


def as_completions(prompts: list[Any], texts: list[str], num_generations: int) -> list[Any]:
    """Decoded completions in the prompts' form: strings for string prompts, an assistant message for chats."""
    repeated = [p for p in prompts for _ in range(num_generations)]
    return [t if isinstance(p, str) else [{"role": "assistant", "content": t}] for p, t in zip(repeated, texts)]
