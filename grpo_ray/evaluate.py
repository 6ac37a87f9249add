"""Greedy pass@1 during a run, as the trainer's ``on_step`` hook.

Before the first step, every ``eval.steps`` steps and at the last step, the rollout workers
(holding the policy's current weights) answer the eval questions greedily; ``eval.judge`` (the
math verifier by default) marks each answer; ``eval/accuracy`` joins that step's record. A few
answers are printed the way the Qwen3 tutorial prints them (question, reference, response,
extracted answer, training reward) and appended to ``samples.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from grpo_ray.advantages import combine_rewards
from grpo_ray.config import TrainConfig
from grpo_ray.data import columns_of
from grpo_ray.prompt_set import PromptSet
from grpo_ray.rewards import completion_text, resolve
from grpo_ray.rewards.math import extract_answer
from grpo_ray.tracking import squeeze_repeats

RESPONSE_CHARS = 800  # longest response shown on the console, repeats squeezed (samples.jsonl has it whole)


class Evaluator:
    def __init__(self, trainer: Any, eval_set: PromptSet, config: TrainConfig, write: Callable[[str], None] = print):
        self.trainer = trainer
        self.eval_set = eval_set
        self.config = config
        self.judge = resolve(config.eval.judge)
        self.write = write
        self.samples_path = Path(config.run.output_dir) / "samples.jsonl"
        self.accuracy: dict[int, float] = {}  # step -> pass@1

    def due(self, step: int) -> bool:
        k, last = self.config.eval.steps, self.config.run.max_steps
        return bool(self.eval_set.rows) and (step == 0 or step == last or (k > 0 and step % k == 0))

    def on_step(self, step: int, record: dict[str, Any]) -> dict[str, float]:
        extra: dict[str, float] = {}
        if record.get("time/generate_s"):
            completions = self.trainer.plan.unique_prompts * self.config.grpo.num_generations
            extra["tokens_per_s"] = record["completion_length"] * completions / record["time/generate_s"]
        if self.due(step):
            extra |= self.evaluate(step)
        return extra

    def evaluate(self, step: int) -> dict[str, float]:
        rows = self.eval_set.rows
        prompts = [r["prompt"] for r in rows]
        batch = self.trainer.generate(prompts, num_generations=1, seed=0, greedy=True)
        scores = self.judge(prompts, batch.completions, **columns_of(rows, 1))
        correct = [s is not None and s > 0 for s in scores]
        accuracy = sum(correct) / len(correct)
        self.accuracy[step] = accuracy
        self.show(step, batch, correct)
        return {"eval/accuracy": accuracy, "eval/completion_length": float(batch.completion_mask.sum(1).float().mean())}

    def show(self, step: int, batch: Any, correct: list[bool]) -> None:
        n = min(self.config.eval.samples, len(correct))
        if n == 0:
            return
        picked = batch.select(list(range(n)))
        rewards = combine_rewards(self.trainer.score(self.eval_set.rows[:n], picked), self.config.grpo.reward_weights)
        with self.samples_path.open("a") as f:
            for i in range(n):
                text = completion_text(batch.completions[i])
                sample = {
                    "step": step,
                    "question": self.eval_set.questions[i],
                    "answer": self.eval_set.rows[i].get("answer"),
                    "response": text,
                    "extracted": extract_answer(text),
                    "correct": correct[i],
                    "reward": float(rewards[i]),
                }
                f.write(json.dumps(sample) + "\n")
                shown = squeeze_repeats(text)
                shown = shown if len(shown) <= RESPONSE_CHARS else shown[:RESPONSE_CHARS] + " [...]"
                self.write(
                    f"---- sample {i + 1}/{n} at step {step} ----\nQuestion: {sample['question']}\n"
                    f"Answer: {sample['answer']}\nResponse: {shown}\nExtracted: {sample['extracted']} | "
                    f"{'correct' if sample['correct'] else 'wrong'} | reward {sample['reward']:.2f}"
                )
