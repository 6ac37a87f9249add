"""The supervised warm-up before GRPO (the tutorials' "SFT first" step): teach the answer format.

Teacher-forced training on ``prompt + solution + EOS`` with the loss on the solution and EOS
only, in the driver process, with the run's LoRA settings (the adapter is merged afterwards).
The result is a full checkpoint that GRPO starts from.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from grpo_ray.config import TrainConfig
from grpo_ray.modeling import load_policy


def encode_examples(tokenizer: Any, prompts: list[str], solutions: list[str], max_solution_tokens: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """``(prompt_ids, solution_ids + [eos])`` pairs, and how many were dropped for a solution
    longer than ``max_solution_tokens`` (or no solution at all)."""
    pairs = [(p, s) for p, s in zip(prompts, solutions) if s]
    dropped = len(prompts) - len(pairs)
    if not pairs:
        return [], dropped
    prompt_ids = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    solution_ids = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
    examples = []
    for p, s in zip(prompt_ids, solution_ids):
        if len(s) + 1 > max_solution_tokens:
            dropped += 1
            continue
        examples.append((list(p), list(s) + [tokenizer.eos_token_id]))
    return examples, dropped


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``[B, L]``; labels are -100 off the solution."""
    width = max(len(p) + len(s) for p, s in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, s) in enumerate(examples):
        n = len(p) + len(s)
        ids[i, :n] = torch.tensor(p + s)
        labels[i, len(p) : n] = torch.tensor(s)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def supervised_warmup(
    config: TrainConfig, tokenizer: Any, prompts: list[str], solutions: list[str], path: Path, stop: Any = None
) -> tuple[Path, dict[str, float]]:
    """Run ``sft.steps`` steps and save the (merged) model and ``tokenizer`` at ``path``.
    ``stop``: a ``threading.Event`` that, once set, ends the warm-up at its next step
    (KeyboardInterrupt, nothing saved), for a warm-up run on a thread."""
    from tqdm import tqdm

    examples, dropped = encode_examples(tokenizer, prompts, solutions, config.grpo.max_completion_length)
    if not examples:
        raise ValueError(
            f"sft.steps={config.sft.steps} but no training row has a solution of at most "
            f"grpo.max_completion_length={config.grpo.max_completion_length} tokens: raise it, or set sft.steps=0"
        )
    torch.manual_seed(config.run.seed)
    model = load_policy(config.model, config.lora, trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.sft.learning_rate)
    rng = random.Random(config.run.seed)
    size = min(config.sft.batch_size, len(examples))
    losses = []
    with tqdm(range(config.sft.steps), desc="SFT warm-up", unit="step", dynamic_ncols=True) as bar:  # closed on Ctrl-C too
        for _ in bar:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            batch = {k: v.to(model.device) for k, v in collate(rng.sample(examples, size), tokenizer.pad_token_id).items()}
            loss = model(**batch).loss
            loss.backward()
            if config.sft.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.sft.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model = model.merge_and_unload() if config.lora.enabled else model
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10) :]
    return path, {
        "sft/examples": float(len(examples)),
        "sft/dropped": float(dropped),
        "sft/loss_first": sum(head) / len(head),
        "sft/loss_last": sum(tail) / len(tail),
    }
