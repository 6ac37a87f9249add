"""Learner: owns the policy, its optimizer and schedule, and runs the GRPO micro-steps."""

from __future__ import annotations

import copy
import random
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.train_backends import fused_adamw, make_backend
from grpo_ray import collective
from grpo_ray.batching import (
    Forward, accumulation_windows, forward_token_budget, plan_forwards, plan_generation_cycle, rank_rows,
    split_forwards,
)
from grpo_ray.checkpoint import LEARNER_STATE
from grpo_ray.config import TrainConfig
from grpo_ray.entropy_control import EntropyControl
from grpo_ray.loss import grpo_loss, mask_truncated_completions, needs_whole_micro_batch
from grpo_ray.modeling import CompletionLogprobs, load_policy, load_tokenizer, probe_logprobs
from grpo_ray.off_policy import needs_old_logprobs
from grpo_ray.rollout_batch import RolloutBatch
from grpo_ray.schedules import make_scheduler


#: Seconds a collective of the learner group (gradient all-reduce) waits for the slowest rank.
LEARNER_GROUP_TIMEOUT_S = 600.0


@dataclass
class _Rows:
    """A batch's rows on the learner's device, with their lengths known on the host (so the
    forwards are planned without waiting for the device)."""

    batch: RolloutBatch  # every tensor on the device
    prompt_lengths: list[int]
    completion_lengths: list[int]

    @staticmethod
    def of(batch: RolloutBatch, device: torch.device) -> "_Rows":
        tensors = {f.name: v.to(device) for f in fields(batch) if torch.is_tensor(v := getattr(batch, f.name))}
        return _Rows(replace(batch, **tensors), batch.prompt_mask.sum(1).tolist(), batch.completion_mask.sum(1).tolist())

    @property
    def device(self) -> torch.device:
        return self.batch.completion_ids.device


@dataclass
class _Targets:
    """What the loss needs beside the batch, per row of the learner's rows (on its device)."""

    mask: torch.Tensor  # [n, T] the loss mask
    old: torch.Tensor | None  # [n, T] old logprobs (None: the detached current ones)
    ref: torch.Tensor | None  # [n, T] reference logprobs (beta > 0)
    num_items: torch.Tensor  # loss tokens of the whole generation batch (dapo)

    @property
    def per_token(self) -> tuple[torch.Tensor | None, ...]:
        return self.mask, self.old, self.ref


@dataclass
class _Seen:
    """The detached logprobs and entropies of a window's rows, as its forwards compute them."""

    logps: torch.Tensor  # [n, T]
    entropy: torch.Tensor  # [n, T]

    @staticmethod
    def like(per_token: torch.Tensor, dtype: torch.dtype) -> "_Seen":
        return _Seen(torch.zeros_like(per_token, dtype=dtype), torch.zeros_like(per_token, dtype=dtype))

    def keep(self, index: torch.Tensor, logps: torch.Tensor, entropy: torch.Tensor) -> None:
        t = logps.shape[1]
        self.logps[:, :t].index_copy_(0, index, logps.detach().to(self.logps.dtype))
        self.entropy[:, :t].index_copy_(0, index, entropy.to(self.entropy.dtype))


def _take(batch: RolloutBatch, forward: Forward, index: torch.Tensor) -> RolloutBatch:
    """``forward``'s rows of every per-row tensor of ``batch``; ``index``: those rows, on the
    batch's device (a gather there: no host sync)."""
    n = len(batch)
    rows = {
        f.name: v.index_select(0, index)
        for f in fields(batch)
        if torch.is_tensor(v := getattr(batch, f.name)) and v.dim() and v.shape[0] == n
    }
    return replace(batch, **rows, completions=[batch.completions[r] for r in forward.rows])


def _add(totals: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor]) -> None:
    """Accumulate 0-dim metric tensors in float64, where they are (no host sync)."""
    for k, v in metrics.items():
        totals[k] = totals[k] + v.double() if k in totals else v.double()


def _on_host(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    """The accumulated metrics as floats: one device-to-host transfer."""
    keys = sorted(totals)
    return dict(zip(keys, torch.stack([totals[k] for k in keys]).tolist()))


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
            self.params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay,
            fused=fused_adamw(self.params, config.batch.train_backend) or None,  # None: torch's choice (foreach)
        )
        total = config.run.max_steps
        self.scheduler = make_scheduler(
            o.lr_scheduler_type, self.optimizer, num_warmup_steps=int(o.warmup_ratio * total), num_training_steps=total
        )
        self.version = 0  # bumped by every optimizer step
        self.entropy_control = EntropyControl(config.grpo)  # the entropy bonus's coefficient (adaptive or not)
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
            "entropy_control": self.entropy_control.state_dict(),
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
        if "entropy_control" in state:  # (absent from checkpoints older than the entropy bonus)
            self.entropy_control.load_state_dict(state["entropy_control"])
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

    def _logps(
        self, model: Any, batch: RolloutBatch, forward: Forward, with_entropy: bool = False, loss_fn: Any = None
    ) -> Any:
        """Logprobs ``[n, t]`` of ``batch``'s rows trimmed to ``forward``'s widths; ``model``: a
        :class:`CompletionLogprobs` (or the backend's wrapper of one). Given ``loss_fn`` (a
        :data:`grpo_ray.logprobs.RowLoss`), the fused loss instead: ``(loss, logps, entropies)``,
        the logprobs and entropies detached.

        Logprobs at padding positions are set to 0 (``loss_fn`` sees them so too): the old,
        reference and training passes may lay the same row out in forwards of different widths,
        and a padding position's value would differ between them (the loss masks it, but an
        overflowing ratio times 0 is NaN).
        """
        m = self.config.model
        p, t = forward.prompt_width, forward.completion_width
        completion_mask = batch.completion_mask[:, :t]
        padding = completion_mask == 0
        args = (batch.prompt_ids[:, -p:], batch.prompt_mask[:, -p:], batch.completion_ids[:, :t], completion_mask)
        kwargs: dict[str, Any] = dict(temperature=self.config.generation.temperature, impl=m.logprob_impl,
                                      with_entropy=with_entropy)
        if loss_fn is not None:
            masked = lambda rows, logps, ent: loss_fn(rows, logps.masked_fill(padding[rows], 0.0), ent)  # noqa: E731
            loss, logps, entropy = model(*args, loss_fn=masked, chunk_size=m.fused_loss_chunk_size, **kwargs)
            return loss, logps.masked_fill(padding, 0.0), entropy
        out = model(*args, chunk_size=m.logprob_chunk_size, **kwargs)
        logps, entropy = out if with_entropy else (out, None)
        logps = logps.masked_fill(padding, 0.0)
        return (logps, entropy) if with_entropy else logps

    def _forwards(
        self, micro_batches: list[list[int]], rows: _Rows
    ) -> tuple[list[tuple[Forward, torch.Tensor]], list[torch.Tensor]]:
        """How to execute ``micro_batches`` (positions in ``rows``; one accumulation window):
        the forwards of ``batch.max_tokens_per_forward``, each with its rows' index on the
        device, and each micro-batch's rows on the device (one host-to-device copy for all)."""
        c = self.config
        budget = forward_token_budget(
            c.batch.max_tokens_per_forward, rows.device.type == "cuda", c.batch.per_device_train_batch_size,
            c.grpo.max_prompt_length or rows.batch.prompt_ids.shape[1], c.grpo.max_completion_length,
        )
        whole = needs_whole_micro_batch(c.grpo)
        forwards = plan_forwards(micro_batches, rows.prompt_lengths, rows.completion_lengths, budget,
                                 whole_micro_batches=whole)
        if budget is not None and self.backend.communicates_per_forward and self.world_size > 1:
            # the ranks' rows pack into different numbers of forwards: all run the most of any
            forwards = split_forwards(forwards, self._most_over_ranks(len(forwards)), rows.prompt_lengths,
                                      rows.completion_lengths, whole_micro_batches=whole)
        runs = [f.rows for f in forwards] + micro_batches
        index = torch.tensor([r for run in runs for r in run]).to(rows.device).split([len(run) for run in runs])
        return list(zip(forwards, index[: len(forwards)])), list(index[len(forwards) :])

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, *, reference: bool = False) -> torch.Tensor:
        """``[N, T]`` logprobs of the batch's completions under the policy (or the reference), on
        the CPU; 0 at padding."""
        return self._scores(_Rows.of(batch, self._device()), reference=reference).cpu()

    @torch.no_grad()
    def _scores(self, rows: _Rows, *, reference: bool = False) -> torch.Tensor:
        """:meth:`logprobs` of ``rows``, left on the device: ``per_device_train_batch_size`` rows
        at a time, or packed into the forwards of the token budget."""
        batch, b = rows.batch, self.config.batch.per_device_train_batch_size
        dtype = self._logp_dtype()
        out = torch.zeros(batch.completion_ids.shape, dtype=dtype, device=rows.device)
        blocks = [list(range(start, min(start + b, len(batch)))) for start in range(0, len(batch), b)]
        for forward, index in self._forwards(blocks, rows)[0]:
            part = _take(batch, forward, index)
            if not reference:
                logps = self._logps(self.score, part, forward)
            elif self.reference is not None:
                logps = self._logps(CompletionLogprobs(self.reference), part, forward)
            else:
                with self.policy.disable_adapter():
                    logps = self._logps(self.score, part, forward)
            out[:, : forward.completion_width].index_copy_(0, index, logps.to(dtype))
        return out

    def _logp_dtype(self) -> torch.dtype:
        """Logprobs are kept in float32 (float64 for a float64 model: the gradient tests)."""
        return torch.promote_types(next(self.policy.parameters()).dtype, torch.float32)

    def _old_logprobs(self, rows: _Rows) -> torch.Tensor | None:
        """``[N, T]`` logprobs of the policy the PPO ratio is measured against (pi_old), or None
        when they equal the detached current ones (:func:`grpo_ray.off_policy.needs_old_logprobs`:
        ``rollout.off_policy_correction``). ``rows.batch.sampling_logps`` are the behaviour policy's."""
        c = self.config
        if not needs_old_logprobs(
            c.rollout.off_policy_correction, c.batch.gradient_accumulation_steps, c.batch.steps_per_generation_value,
            c.grpo.num_iterations,
        ):
            return None
        return self._scores(rows)

    # -- training --------------------------------------------------------------------------------

    def train_generation(self, batch: RolloutBatch, cycle: int, max_steps: int | None = None) -> list[dict[str, float]]:
        """Run the micro-steps of generation cycle ``cycle`` on ``batch``; metrics per optimizer step.

        ``max_steps`` ends the cycle after that many optimizer steps (the run's last cycle).
        The user's micro-steps (:func:`plan_generation_cycle`) define the gradient, every loss
        normaliser and every logged metric; how each accumulation window is executed is
        :meth:`_accumulate`'s business.
        """
        c = self.config
        plan = plan_generation_cycle(
            c.batch.per_device_train_batch_size, c.batch.gradient_accumulation_steps, c.batch.steps_per_generation_value,
            c.grpo.num_generations, c.batch.num_processes, cycle=cycle, num_iterations=c.grpo.num_iterations,
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
        rows = _Rows.of(batch, self._device())  # the batch moves to the device once
        targets = _Targets(
            mask.to(rows.device), self._old_logprobs(rows),
            self._scores(rows, reference=True) if c.grpo.beta > 0 else None,
            num_items.to(rows.device),
        )
        self.policy.train()
        results: list[dict[str, float]] = []
        for window in accumulation_windows(plan):
            micro_batches = [[position[r] for r in step.rows[self.rank]] for step in window]
            sums = _on_host(self._accumulate(micro_batches, rows, targets, ends_step=window[-1].optimizer_step))
            means = {k: v / len(window) for k, v in sums.items()}  # each metric: its mean over the micro-steps
            if not window[-1].optimizer_step:  # the window continues into the next generation
                results.append(means | {"partial_window": 1.0})
                break
            results.append(self._optimizer_step(means | {"loss": sums["loss"]}))  # micro-losses sum to the step's
            if max_steps is not None and len(results) >= max_steps:
                break
        results[-1]["time/train_s"] = time.perf_counter() - started
        return results

    def _accumulate(
        self, micro_batches: list[list[int]], rows: _Rows, targets: _Targets, ends_step: bool
    ) -> dict[str, torch.Tensor]:
        """Forward and backward over one accumulation window's micro-batches (positions in
        ``rows``); returns each metric summed over them, on the device (no host sync here).

        The window runs in the forwards of ``batch.max_tokens_per_forward``: a forward's rows
        may come from several micro-batches, and each micro-batch's rows from several forwards.
        A forward's loss is the sum, over its slices of rows of one micro-batch, of
        :func:`grpo_loss` with that micro-batch's rows and loss tokens as normalisers, so the
        window's gradient is the one the micro-steps define; one backward per forward, the
        window's last one at the accumulation boundary when the window ends at an optimizer
        step. A micro-step's metrics come from one :func:`grpo_loss` over all its rows, as in
        the plain loop: the training call where one slice holds them all, else a call without
        gradient on the logprobs its forwards left (:meth:`_micro_step_metrics`).
        """
        c = self.config
        loss_kw = dict(
            num_items_in_batch=targets.num_items, gradient_accumulation_steps=c.batch.gradient_accumulation_steps,
            steps_per_generation=c.batch.steps_per_generation_value, num_processes=c.batch.num_processes,
            entropy_coef=self.entropy_control.applied_coef,
        )
        forwards, micro_index = self._forwards(micro_batches, rows)
        tokens = [targets.mask.index_select(0, index).sum() for index in micro_index]  # each micro-batch's loss tokens
        # model.fused_loss: each forward's gradient is formed inside it (the metrics then come after)
        fused = c.model.fused_loss and not needs_whole_micro_batch(c.grpo)
        whole = set() if fused else {  # micro-batches that one slice holds entirely
            s.micro_batch for f, _ in forwards for s in f.slices if s.stop - s.start == len(micro_batches[s.micro_batch])
        }
        seen = None if len(whole) == len(micro_batches) else _Seen.like(targets.mask, self._logp_dtype())
        totals: dict[str, torch.Tensor] = {}
        for i, (forward, index) in enumerate(forwards):
            part = _take(rows.batch, forward, index)
            t = forward.completion_width
            mask, old, ref = (None if x is None else x.index_select(0, index)[:, :t] for x in targets.per_token)

            def slices_loss(rows_: slice, logps: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
                """The loss of this forward's rows ``rows_``: over its slices of one micro-batch,
                :func:`grpo_loss` with that micro-batch's normalisers (metrics kept for whole ones)."""
                loss = 0.0
                for s in forward.slices:
                    lo, hi = max(s.start, rows_.start), min(s.stop, rows_.stop)
                    if lo >= hi:
                        continue
                    k, at = slice(lo, hi), slice(lo - rows_.start, hi - rows_.start)
                    piece, metrics = grpo_loss(
                        logps[at], None if old is None else old[k], None if ref is None else ref[k],
                        part.advantages[k], mask[k], c.grpo, sampling_logps=part.sampling_logps[k, :t],
                        entropies=None if entropy is None else entropy[at], **loss_kw,
                        micro_batch_rows=len(micro_batches[s.micro_batch]), micro_batch_tokens=tokens[s.micro_batch],
                    )
                    loss = loss + piece
                    if s.micro_batch in whole:
                        self.entropy_control.observe(metrics)  # takes out the adaptive controller's statistics
                        _add(totals, metrics)
                return loss

            if fused:
                loss, logps, entropy = self._logps(self.backend.model, part, forward, with_entropy=True,
                                                   loss_fn=slices_loss)
            else:
                logps, entropy = self._logps(self.backend.model, part, forward, with_entropy=True)
                loss = slices_loss(slice(0, len(index)), logps, entropy)
            _add(totals, {"loss": loss.detach()})
            if seen is not None:
                seen.keep(index, logps.detach(), entropy.detach())
            self.backend.backward(loss, boundary=ends_step and i == len(forwards) - 1)
        for m, index in enumerate(micro_index):
            if m not in whole:
                width = max(1, *(rows.completion_lengths[r] for r in micro_batches[m]))
                metrics = self._micro_step_metrics(index, width, rows, targets, seen, loss_kw)
                self.entropy_control.observe(metrics)
                _add(totals, metrics)
        return totals

    @torch.no_grad()
    def _micro_step_metrics(
        self, index: torch.Tensor, width: int, rows: _Rows, targets: _Targets, seen: _Seen, loss_kw: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The metrics of the micro-step of rows ``index`` (its completions ``width`` wide): the
        plain loop's call of :func:`grpo_loss` on the logprobs and entropies its forwards left."""
        def at(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.index_select(0, index)[:, :width]

        _, metrics = grpo_loss(
            at(seen.logps), at(targets.old), at(targets.ref), rows.batch.advantages.index_select(0, index),
            at(targets.mask), self.config.grpo, sampling_logps=at(rows.batch.sampling_logps),
            entropies=at(seen.entropy), **loss_kw,
        )
        return metrics

    def _optimizer_step(self, metrics: dict[str, float]) -> dict[str, float]:
        out = self._average_over_ranks(metrics) if self.world_size > 1 else dict(metrics)
        loss = out["loss"]
        lr = self.scheduler.get_last_lr()[0]
        grad_norm, skipped = self.backend.step(loss)
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.version += 1
        out.update(self.entropy_control.step(self._average_over_ranks if self.world_size > 1 else None))
        out.update({
            "loss": loss, "grad_norm": grad_norm, "learning_rate": lr, "weight_version": float(self.version),
            "skipped": float(skipped),
        })
        return out

    def _most_over_ranks(self, count: int) -> int:
        """The largest ``count`` of any rank of the learner group (one small all-reduce)."""
        import torch.distributed as dist

        value = torch.tensor([count], device=self._device() if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def _average_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        """Logged metrics averaged over the learner group (each rank's loss carries TRL's
        ``num_processes`` factor, so the average is the whole batch's loss; the backend averages
        the gradients the same way)."""
        import torch.distributed as dist

        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self._device())
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist()))
