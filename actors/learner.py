"""Learner: owns the policy, its optimizer and schedule, and runs the GRPO micro-steps."""

from __future__ import annotations

import copy
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.train_backends import make_backend
from grpo_ray import collective
from grpo_ray.batching import plan_generation_cycle, rank_rows
from grpo_ray.checkpoint import LEARNER_STATE
from grpo_ray.config import TrainConfig
from grpo_ray.loss import grpo_loss, mask_truncated_completions
from grpo_ray.modeling import CompletionLogprobs, load_policy, load_tokenizer, probe_logprobs
from grpo_ray.off_policy import needs_old_logprobs
from grpo_ray.rollout_batch import RolloutBatch


#: Seconds a collective of the learner group (gradient all-reduce) waits for the slowest rank.
LEARNER_GROUP_TIMEOUT_S = 600.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def group_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


class Learner:
    """A plain class; the driver wraps it with ``ray.remote`` where it is placed.

    Reference logprobs (``beta > 0``) come from the same model with the LoRA adapter disabled,
    so LoRA runs hold one copy of the base weights; full fine-tuning keeps a frozen copy only
    when ``beta > 0``.

    Numerical guard: an optimizer step whose summed loss or gradient norm is not finite is
    skipped (its gradients dropped, the weights and the optimizer's moments untouched); it
    still counts as a step (the schedule and the weight version advance) and reports
    ``skipped = 1``. The driver counts skips and stops the run after too many in a row.

    Data parallel (``batch.num_processes = N``): N of these, ``rank`` 0..N-1, join one
    ``torch.distributed`` group (:meth:`host_group` on rank 0, then :meth:`join_group` on every
    rank); each trains on its rows of the batch plan with TRL's multi-process loss scaling,
    gradients and logged metrics are averaged over ranks before each optimizer step, so every
    rank takes the same step. Rank 0 exports the weights and saves. How the ranks share the
    gradients, the optimizer and (ZeRO-3) the weights is the train backend's business
    (:mod:`actors.train_backends`, ``batch.train_backend``).
    """

    def __init__(
        self, config: TrainConfig, num_cpus: int = 1, policy: torch.nn.Module | None = None, rank: int = 0
    ):
        """``policy``: a model built elsewhere (the colocated vLLM worker's, on the engine's tensors)."""
        from transformers import get_scheduler

        torch.set_num_threads(max(1, num_cpus))
        torch.manual_seed(config.run.seed)
        self.config = config
        self.policy = policy if policy is not None else load_policy(config.model, config.lora, trainable=True)
        self.reference = None
        if config.grpo.beta > 0 and not config.lora.enabled:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.score = CompletionLogprobs(self.policy)  # every forward of the policy runs through this
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay
        )
        total = config.run.max_steps
        self.scheduler = get_scheduler(
            o.lr_scheduler_type, self.optimizer, num_warmup_steps=int(o.warmup_ratio * total), num_training_steps=total
        )
        self.version = 0  # bumped by every optimizer step
        self.rank, self.world_size = rank, config.batch.num_processes
        self.backend = make_backend(config, self.score, self.optimizer, rank)
        self._store: Any = None  # the TCPStore rank 0 hosts for a group being formed
        self._sync_group: Any = None  # learner rank 0 + the rollout engines (collective weight sync)
        self._sync_on_cpu = True

    # -- process groups --------------------------------------------------------------------------

    def host_group(self, world_size: int, timeout_s: float) -> tuple[str, int]:
        """Rank 0: host the rendezvous of a group of ``world_size``; returns its (host, port)."""
        self._store, host, port = collective.host_store(world_size, timeout_s)
        return host, port

    def join_group(self, host: str, port: int) -> int:
        """Join the learner group; rank 0's trainable weights are copied to every rank, then the
        train backend starts (DeepSpeed builds its engine on the group). Returns the rank."""
        import torch.distributed as dist
        from datetime import timedelta

        timeout = timedelta(seconds=LEARNER_GROUP_TIMEOUT_S)
        store = self._store if self.rank == 0 else dist.TCPStore(host, port, self.world_size, timeout=timeout)
        dist.init_process_group(group_backend(), store=store, rank=self.rank, world_size=self.world_size, timeout=timeout)
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data, 0)
        self.backend.start()
        return self.rank

    def join_sync_group(self, backend: str, world_size: int, timeout_s: float) -> int:
        """Rank 0: join the weight-sync group it hosts (:meth:`host_group`) as its rank 0."""
        self._sync_group = collective.join_group(
            backend, 0, world_size, timeout_s, store=self._store, device=self._device()
        )
        self._sync_on_cpu = backend == "gloo"
        return 0

    def broadcast_weights(self, bucket_bytes: int) -> int:
        """Rank 0: send the current weights to the sync group (under ZeRO-3 every rank calls this
        and helps gather them); returns their version."""
        weights = self.weights(copy_to_cpu=self._sync_on_cpu)[1]  # gloo sends from CPU, NCCL from the GPU
        if self.rank == 0:
            collective.send(self._sync_group, weights, self.version, bucket_bytes)
        return self.version

    def weight_specs(self) -> list[collective.TensorSpec]:
        return collective.specs_of(self.weights(copy_to_cpu=False)[1])

    def weight_version(self) -> int:
        return self.version

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    # -- weights ---------------------------------------------------------------------------------

    def weights(self, copy_to_cpu: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, tensors) for the rollout engines: LoRA tensors, or the full state dict; full
        tensors on rank 0 whatever the backend shards (other ranks: ``{}``)."""
        return self.version, self.backend.full_weights(copy_to_cpu)

    def policy_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """The policy's logprobs of a probe sequence (the stale-weight guard's half)."""
        return probe_logprobs(self.score, token_ids)

    def save(self, path: str) -> str:
        """Rank 0: write the adapter (or full model, gathered where sharded) and tokenizer with ``save_pretrained``."""
        out = Path(path)
        with self.backend.gathered():
            if self.rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                self.policy.save_pretrained(out)
                load_tokenizer(self.config.model).save_pretrained(out)
        return str(out)

    def save_state(self, path: str) -> str:
        """``save`` (a loadable checkpoint) plus what an exact resume needs: the train backend's
        state (plain: trainable weights, pending gradients and optimizer in ``learner_state.pt``;
        DeepSpeed: its own checkpoint, every rank its shard) and, in ``learner_state.pt``, the
        scheduler, weight version and the torch / numpy / python RNG of rank 0."""
        self.save(path)
        extra = self.backend.state(Path(path))
        if self.rank != 0:
            return str(path)
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        py_version, py_internal, py_gauss = random.getstate()
        state = extra | {
            "version": self.version,
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
                "python": [py_version, list(py_internal), py_gauss],
            },
        }
        torch.save(state, Path(path) / LEARNER_STATE)
        return str(path)

    def load_state(self, path: str) -> int:
        """Restore what ``save_state`` wrote; returns the weight version."""
        state = torch.load(Path(path) / LEARNER_STATE, map_location="cpu", weights_only=True)
        self.backend.load_state(Path(path), state)
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        np_name, np_keys, *np_rest = rng["numpy"]
        np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), *np_rest))
        py_version, py_internal, py_gauss = rng["python"]
        random.setstate((py_version, tuple(py_internal), py_gauss))
        self.version = state["version"]
        return self.version

    # -- logprobs --------------------------------------------------------------------------------

    def _logps(self, model: Any, batch: RolloutBatch, with_entropy: bool = False) -> Any:
        """``model``: a :class:`CompletionLogprobs` (or the backend's wrapper of one)."""
        m = self.config.model
        return model(
            batch.prompt_ids,
            batch.prompt_mask,
            batch.completion_ids,
            batch.completion_mask,
            temperature=self.config.generation.temperature,
            impl=m.logprob_impl,
            chunk_size=m.logprob_chunk_size,
            with_entropy=with_entropy,
        )

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, *, reference: bool = False) -> torch.Tensor:
        """``[N, T]`` logprobs of the batch's completions under the policy (or the reference)."""
        chunk = self.config.batch.per_device_train_batch_size
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        for start in range(0, len(batch), chunk):
            rows = list(range(start, min(start + chunk, len(batch))))
            part = batch.select(rows)
            if not reference:
                logps = self._logps(self.score, part)
            elif self.reference is not None:
                logps = self._logps(CompletionLogprobs(self.reference), part)
            else:
                with self.policy.disable_adapter():
                    logps = self._logps(self.score, part)
            out[start : start + len(rows), : logps.shape[1]] = logps.float()
        return out

    def _old_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """``[N, T]`` logprobs of the policy the PPO ratio is measured against (pi_old), or None
        when they equal the detached current ones (:func:`grpo_ray.off_policy.needs_old_logprobs`:
        ``rollout.off_policy_correction``). ``batch.sampling_logps`` are the behaviour policy's."""
        c = self.config
        if not needs_old_logprobs(
            c.rollout.off_policy_correction, c.batch.gradient_accumulation_steps, c.batch.steps_per_generation_value,
            c.grpo.num_iterations,
        ):
            return None
        return self.logprobs(batch)

    # -- training --------------------------------------------------------------------------------

    def train_generation(self, batch: RolloutBatch, cycle: int, max_steps: int | None = None) -> list[dict[str, float]]:
        """Run the micro-steps of generation cycle ``cycle`` on ``batch``; metrics per optimizer step.

        ``max_steps`` ends the cycle after that many optimizer steps (the run's last cycle)."""
        c = self.config
        spg = c.batch.steps_per_generation_value
        gas = c.batch.gradient_accumulation_steps
        plan = plan_generation_cycle(
            c.batch.per_device_train_batch_size, gas, spg, c.grpo.num_generations,
            c.batch.num_processes, cycle=cycle, num_iterations=c.grpo.num_iterations,
        )
        if batch.advantages is None:
            raise ValueError("the batch has no advantages: the driver computes them before training")
        mask = batch.completion_mask.float()  # [N, T]
        if c.grpo.mask_truncated_completions:
            mask = mask_truncated_completions(mask, batch.truncated)
        num_items = mask.sum()  # over the whole generation batch, every rank's rows
        mine = rank_rows(plan, self.rank)
        position = {row: i for i, row in enumerate(mine)}
        batch, mask = batch.select(mine), mask[mine]
        started = time.perf_counter()
        old = self._old_logprobs(batch)
        ref = self.logprobs(batch, reference=True) if c.grpo.beta > 0 else None
        self.policy.train()
        results: list[dict[str, float]] = []
        window: dict[str, list[float]] = {}
        for step in plan:
            rows = [position[r] for r in step.rows[self.rank]]
            part = batch.select(rows)
            t = part.completion_ids.shape[1]
            logps, entropy = self._logps(self.backend.model, part, with_entropy=True)
            idx = torch.as_tensor(rows)
            on = lambda x: None if x is None else x.to(logps.device)  # noqa: E731
            loss, metrics = grpo_loss(
                logps,
                on(None if old is None else old[idx, :t]),
                on(None if ref is None else ref[idx, :t]),
                on(part.advantages),
                on(mask[idx, :t]),
                c.grpo,
                num_items_in_batch=num_items,
                sampling_logps=on(part.sampling_logps),
                entropies=entropy,
                gradient_accumulation_steps=gas,
                steps_per_generation=spg,
                num_processes=c.batch.num_processes,
            )
            self.backend.backward(loss, boundary=step.optimizer_step)
            window.setdefault("loss", []).append(loss.item())
            for k, v in metrics.items():
                window.setdefault(k, []).append(float(v))
            if step.optimizer_step:
                results.append(self._optimizer_step(window))
                window = {}
                if max_steps is not None and len(results) >= max_steps:
                    break
        if window:  # an accumulation window that continues into the next generation
            results.append({k: _mean(v) for k, v in window.items()} | {"partial_window": 1.0})
        results[-1]["time/train_s"] = time.perf_counter() - started
        return results

    def _optimizer_step(self, window: dict[str, list[float]]) -> dict[str, float]:
        out = {k: _mean(v) for k, v in window.items()}
        out["loss"] = sum(window["loss"])  # micro-losses are already scaled to sum to the step's loss
        if self.world_size > 1:
            out = self._average_over_ranks(out)
        loss = out["loss"]
        lr = self.scheduler.get_last_lr()[0]
        grad_norm, skipped = self.backend.step(loss)
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.version += 1
        out.update({
            "loss": loss, "grad_norm": grad_norm, "learning_rate": lr, "weight_version": float(self.version),
            "skipped": float(skipped),
        })
        return out

    def _average_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        """Logged metrics averaged over the learner group (each rank's loss carries TRL's
        ``num_processes`` factor, so the average is the whole batch's loss; the backend averages
        the gradients the same way)."""
        import torch.distributed as dist

        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self._device())
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist()))
