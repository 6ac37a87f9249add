"""A dataset split turned into GRPO rows: rendered prompts, reference answers, SFT targets.

Prompts longer than ``grpo.max_prompt_length`` tokens are dropped and counted, as the Qwen3
tutorial does, never cut: a cut question is a different question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpo_ray.config import DataConfig
from grpo_ray.prompting import AnswerFormat, messages_of, render_prompt, split_solution


@dataclass
class PromptSet:
    rows: list[dict[str, Any]] = field(default_factory=list)  # "prompt" (the text the model sees), "answer", other columns
    questions: list[str] = field(default_factory=list)  # the question of each row, for printed samples
    solutions: list[str] = field(default_factory=list)  # the completion the SFT warm-up teaches ("" = none)
    dropped: int = 0  # prompts longer than max_prompt_length
    longest: int = 0  # tokens in the longest kept prompt


def build_prompt_set(
    dataset: Any,
    data: DataConfig,
    tokenizer: Any,
    fmt: AnswerFormat,
    max_prompt_length: int | None,
    limit: int | None = None,
) -> PromptSet:
    """Render every row (chat template, system prompt, format prefix); keep the first ``limit``
    whose prompt fits in ``max_prompt_length`` tokens."""
    system = data.system_prompt if data.system_prompt is not None else fmt.system_prompt
    out = PromptSet()
    rows = list(dataset)
    texts = [render_prompt(tokenizer, messages_of(r[data.prompt_column], system), data.chat_template, fmt.generation_prefix) for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    for row, text, n in zip(rows, texts, lengths):
        if limit is not None and len(out.rows) >= limit:
            break
        if max_prompt_length is not None and n > max_prompt_length:
            out.dropped += 1
            continue
        cell = row[data.prompt_column]
        record = {k: v for k, v in row.items() if k != data.prompt_column} | {"prompt": text}
        solution = ""
        if data.answer_column is not None:
            reasoning, record["answer"] = split_solution(row[data.answer_column])
            solution = fmt.solution(reasoning, record["answer"])
        out.rows.append(record)
        out.questions.append(cell if isinstance(cell, str) else messages_of(cell, None)[-1]["content"])
        out.solutions.append(solution)
        out.longest = max(out.longest, n)
    return out
