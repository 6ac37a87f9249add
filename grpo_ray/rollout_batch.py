"""The record one GRPO step passes between stages: completions and what the learner needs.

Rows are completions, ``num_generations`` consecutive rows per prompt. Prompts are
left-padded and completions right-padded, so row i of ``cat([prompt_ids, completion_ids], 1)``
holds the tokens generation saw for completion i with padding only at the two ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from grpo_ray.sampling import Sample


def pad_left(rows: list[torch.Tensor], width: int, value: int | float) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r) :] = r
    return out


@dataclass
class RolloutBatch:
    """Completions of one generation batch (N rows = prompts x num_generations)."""

    prompt_ids: torch.Tensor  # [N, P] long, left-padded
    prompt_mask: torch.Tensor  # [N, P] long, 1 = real token
    completion_ids: torch.Tensor  # [N, T] long, right-padded
    completion_mask: torch.Tensor  # [N, T] long, 1 = generated token up to and including EOS
    sampling_logps: torch.Tensor  # [N, T] float32, the engine's logprob of each sampled token
    truncated: torch.Tensor  # [N] bool, no EOS within max_completion_length
    completions: list[Any]  # N decoded completions (str, or chat messages for chat prompts)
    weight_version: int  # version of the weights that generated the batch
    pad_token_id: int
    advantages: torch.Tensor | None = None  # [N] float32, filled in by the driver
    rewards: torch.Tensor | None = None  # [N, R] float32, NaN = function did not apply
    meta: dict[str, float] = field(default_factory=dict)  # engine timings (concat keeps the slowest worker's)

    @staticmethod
    def from_samples(
        prompt_ids: Sequence[Sequence[int]],
        samples: Sequence[Sample],
        *,
        completions: list[Any],
        pad_token_id: int,
        weight_version: int,
        meta: dict[str, float] | None = None,
    ) -> "RolloutBatch":
        """Pad an engine's per-sample outputs into a batch; ``len(samples) // len(prompt_ids)`` per prompt.

        Prompt ``i``'s samples are rows ``i*G .. i*G+G-1``. Every sampled token is in the mask
        (the engine stops at EOS and includes it), nothing after it.
        """
        if not prompt_ids or len(samples) % len(prompt_ids):
            raise ValueError(f"{len(samples)} samples do not split evenly over {len(prompt_ids)} prompts")
        g = len(samples) // len(prompt_ids)
        p_width = max(len(ids) for ids in prompt_ids)
        t_width = max(1, max(len(s.token_ids) for s in samples))
        prompts = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
        prompt_ids_t = pad_left(prompts, p_width, pad_token_id).repeat_interleave(g, dim=0)  # [N, P]
        prompt_mask = pad_left([torch.ones(len(ids), dtype=torch.long) for ids in prompt_ids], p_width, 0)
        completion_ids = torch.full((len(samples), t_width), pad_token_id, dtype=torch.long)  # [N, T]
        completion_mask = torch.zeros((len(samples), t_width), dtype=torch.long)  # [N, T]
        sampling_logps = torch.zeros((len(samples), t_width), dtype=torch.float32)  # [N, T]
        for i, s in enumerate(samples):
            if len(s.logprobs) != len(s.token_ids):
                raise ValueError(f"sample {i}: {len(s.token_ids)} tokens but {len(s.logprobs)} logprobs")
            n = len(s.token_ids)
            completion_ids[i, :n] = torch.tensor(s.token_ids, dtype=torch.long)
            completion_mask[i, :n] = 1
            sampling_logps[i, :n] = torch.tensor(s.logprobs, dtype=torch.float32)
        return RolloutBatch(
            prompt_ids=prompt_ids_t,
            prompt_mask=prompt_mask.repeat_interleave(g, dim=0),
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            sampling_logps=sampling_logps,
            truncated=torch.tensor([s.truncated for s in samples], dtype=torch.bool),
            completions=completions,
            weight_version=weight_version,
            pad_token_id=pad_token_id,
            meta=dict(meta or {}),
        )

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @staticmethod
    def concat(parts: list["RolloutBatch"]) -> "RolloutBatch":
        """Stack batches from several rollout workers, re-padding to the widest prompt/completion."""
        if not parts:
            raise ValueError("nothing to concatenate")
        versions = {p.weight_version for p in parts}
        if len(versions) != 1:
            raise ValueError(f"rollout workers generated with different weight versions {sorted(versions)}")
        p_width = max(p.prompt_ids.shape[1] for p in parts)
        t_width = max(p.completion_ids.shape[1] for p in parts)

        def left(name: str, value: int | float) -> torch.Tensor:
            rows = [r[m.bool()] for p in parts for r, m in zip(getattr(p, name), p.prompt_mask)]
            return pad_left(rows, p_width, value)

        def right(name: str, value: int | float) -> torch.Tensor:
            grow = lambda p: t_width - p.completion_ids.shape[1]  # noqa: E731
            return torch.cat([torch.nn.functional.pad(getattr(p, name), (0, grow(p)), value=value) for p in parts])

        pad_id = parts[0].pad_token_id
        meta: dict[str, float] = {}
        for p in parts:
            for k, v in p.meta.items():
                meta[k] = max(meta.get(k, v), v)
        return RolloutBatch(
            prompt_ids=left("prompt_ids", pad_id),
            prompt_mask=left("prompt_mask", 0),
            completion_ids=right("completion_ids", pad_id),
            completion_mask=right("completion_mask", 0),
            sampling_logps=right("sampling_logps", 0.0),
            truncated=torch.cat([p.truncated for p in parts]),
            completions=[c for p in parts for c in p.completions],
            weight_version=parts[0].weight_version,
            pad_token_id=pad_id,
            meta=meta,
        )

    def select(self, rows: list[int]) -> "RolloutBatch":
        """The given rows (a micro-batch), trimmed to their longest prompt and completion."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        mask = self.completion_mask[idx]
        width = max(int(mask.sum(1).max()), 1)
        prompt_mask = self.prompt_mask[idx]
        start = int(prompt_mask.any(0).nonzero()[0]) if prompt_mask.any() else prompt_mask.shape[1] - 1
        return replace(
            self,
            prompt_ids=self.prompt_ids[idx, start:],
            prompt_mask=prompt_mask[:, start:],
            completion_ids=self.completion_ids[idx, :width],
            completion_mask=mask[:, :width],
            sampling_logps=self.sampling_logps[idx, :width],
            truncated=self.truncated[idx],
            completions=[self.completions[i] for i in rows],
            advantages=None if self.advantages is None else self.advantages[idx],
            rewards=None if self.rewards is None else self.rewards[idx],
        )
