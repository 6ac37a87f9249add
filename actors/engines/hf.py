"""Generation with transformers ``generate``: the CPU engine and the reference for the others."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from grpo_ray.config import TrainConfig
from grpo_ray.modeling import (
    CompletionLogprobs, eos_token_ids, import_weights, load_policy, load_tokenizer, probe_logprobs,
)
from grpo_ray.sampling import Sample, SamplingSpec


def sampling_processors(spec: SamplingSpec) -> list[Any]:
    """Temperature and the top-k/top-p/min-p filters, in ``generate``'s own order.

    ``generate`` puts caller-given processors before the filters it builds itself, so the
    engine builds them here and passes none to ``generate``: the recorder after them then
    sees the distribution that is actually sampled from.
    """
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if spec.temperature != 1.0:
        out.append(TemperatureLogitsWarper(spec.temperature))
    if spec.top_k:
        out.append(TopKLogitsWarper(top_k=spec.top_k))
    if spec.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=spec.top_p))
    if spec.min_p is not None:
        out.append(MinPLogitsWarper(min_p=spec.min_p))
    return out


class ChosenTokenLogprobs(LogitsProcessor):
    """A logits processor, last in line, that records the logprob of each sampled token.

    It sees the fully processed scores of step t (repetition penalty, temperature,
    top-k/top-p/min-p) but not yet the token drawn from them; at step t+1 that token is the
    last column of ``input_ids``. So it keeps one ``[N, V]`` row of log-softmax at a time
    instead of every step's scores (``output_scores`` would hold ``[N, T, V]``).
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None  # [N, V] log-softmax of the last step's scores
        self.chosen: list[torch.Tensor] = []  # T x [N]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.pending is not None:
            self.chosen.append(self.pending.gather(1, tokens.unsqueeze(1)).squeeze(1))
            self.pending = None

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """``[N, T]`` after generation, given the last sampled column."""
        self._take(last_tokens)
        return torch.stack(self.chosen, dim=1).cpu()


class HFEngine:
    """Samples with ``model.generate`` from its own policy copy, or from the learner's (colocated)."""

    def __init__(self, config: TrainConfig, policy: torch.nn.Module | None = None):
        self.config = config
        self.shares_weights = policy is not None
        self.model = policy if policy is not None else load_policy(config.model, config.lora, trainable=False)
        tokenizer = load_tokenizer(config.model)
        self.eos_ids = eos_token_ids(config.model, tokenizer)
        self.pad_token_id = tokenizer.pad_token_id

    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if weights:
            import_weights(self.model, weights, self.config.lora)

    def sleep(self) -> None:
        """Nothing to release: ``generate`` keeps no cache between calls."""

    def wake_up(self) -> None:
        """Nothing to take back."""

    def sampler_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        return probe_logprobs(CompletionLogprobs(self.model), token_ids)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Sample]:
        width = max(len(ids) for ids in prompt_ids)
        padded = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)  # [P, L]
        attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)  # [P, L]
        for i, ids in enumerate(prompt_ids):
            padded[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids) :] = 1
        torch.manual_seed(spec.seed)
        recorder = ChosenTokenLogprobs()
        if spec.greedy:
            kwargs: dict[str, Any] = dict(do_sample=False, logits_processor=[recorder])
        else:  # the filters come from sampling_processors, so generate's own are switched off
            kwargs = dict(
                do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None,
                repetition_penalty=spec.repetition_penalty,
                logits_processor=[*sampling_processors(spec), recorder],
            )
        device = self.model.device
        was_training = self.model.training
        self.model.eval()
        try:
            sequences = self.model.generate(
                input_ids=padded.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=spec.max_new_tokens,
                num_return_sequences=spec.n,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_ids,
                **kwargs,
            )
        finally:
            self.model.train(was_training)
        completion_ids = sequences[:, width:].cpu()  # [N, T]
        logps = recorder.finish(sequences[:, -1])  # [N, T]
        return [self._sample(row, lp) for row, lp in zip(completion_ids.tolist(), logps.tolist())]

    def _sample(self, ids: list[int], logps: list[float]) -> Sample:
        """Cut a generated row after its first EOS; a row without one hit the length limit."""
        eos = set(self.eos_ids)
        end = next((i + 1 for i, t in enumerate(ids) if t in eos), None)
        if end is None:
            return Sample(token_ids=ids, logprobs=logps, truncated=True)
        return Sample(token_ids=ids[:end], logprobs=logps[:end], truncated=False)
