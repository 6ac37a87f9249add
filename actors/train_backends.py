"""Train backends: how a learner rank turns its micro-losses into optimizer steps (``batch.train_backend``).

The :class:`~actors.learner.Learner` keeps the GRPO micro-step loop (its batch plan, TRL's loss
normalisers: the micro-losses of a step already sum to the step's loss) and the LR schedule; a
backend owns what differs between ways of sharing the work over the learner ranks: the
forward module, the backward, the gradient reduction and optimizer step, and the reading and
saving of weights that may be sharded.

- :class:`PlainBackend`: every rank a full copy of weights, gradients and AdamW moments; the
  gradients are averaged over ranks by one all-reduce before the step.
- :class:`DeepSpeedBackend`: DeepSpeed ZeRO-2 (gradients and AdamW moments sharded over the
  ranks) or ZeRO-3 (the weights too), with our torch AdamW as DeepSpeed's client optimizer.

Both average gradients over ranks (a mean, not a sum: DeepSpeed divides by the data-parallel
size too), so the same global batch gives the same step whichever backend runs it.
DeepSpeed is imported only when chosen (``pip install -e '.[gpu]'``); it also runs on CPU
(its CPU accelerator over gloo), which is how the CPU tests exercise it.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from grpo_ray import collective
from grpo_ray.config import TrainConfig
from grpo_ray.modeling import CompletionLogprobs, WeightExport, causal_lm

#: Learner methods that every rank must run under a backend (the learner group fans them out):
#: DeepSpeed's checkpoint is written by every rank (each its shard), and under ZeRO-3 every
#: forward and every read of the full weights gathers shards from every rank.
EVERY_RANK = {
    "plain": frozenset(),
    "deepspeed_zero2": frozenset({"save_state"}),
    "deepspeed_zero3": frozenset({"save_state", "save", "weights", "weight_specs", "broadcast_weights", "policy_logprobs"}),
}

#: Where a DeepSpeed backend writes its checkpoint (every rank's shard) inside a checkpoint directory.
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


class PlainBackend:
    """Each rank holds everything; gradients are all-reduced (averaged) before each step.

    Numerical guard: a step whose loss or gradient norm is not finite is skipped (gradients
    dropped, weights and AdamW moments untouched)."""

    shards_weights = False
    communicates_per_forward = False  # the ranks meet only at the optimizer step

    def __init__(self, config: TrainConfig, score: CompletionLogprobs, optimizer: torch.optim.Optimizer, rank: int):
        self.config, self.score, self.optimizer, self.rank = config, score, optimizer, rank
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.world_size = config.batch.num_processes
        self.export = WeightExport(score.policy, config.lora)

    @property
    def model(self) -> torch.nn.Module:
        """The module the training forward runs through."""
        return self.score

    def start(self) -> None:
        """Called once the learner group formed (nothing to set up)."""

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()

    def step(self, loss: float) -> tuple[float, bool]:
        """Average, clip, step; returns (gradient norm before clipping, skipped)."""
        if self.world_size > 1:
            self._average_gradients()
        max_norm = self.config.optim.max_grad_norm
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf")))
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, skipped

    def _average_gradients(self) -> None:
        import torch.distributed as dist

        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = collective.pack([p.grad for p in self.params])
        dist.all_reduce(flat)
        flat /= self.world_size
        with torch.no_grad():
            for p, g in zip(self.params, flat.split([p.numel() for p in self.params])):
                p.grad.copy_(g.view_as(p))

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """The full weights are in place within this (they always are here)."""
        yield

    def full_weights(self, copy_to_cpu: bool) -> dict[str, torch.Tensor]:
        return self.export(copy_to_cpu)

    def state(self, path: Path) -> dict[str, Any]:
        """Trainable weights, pending gradients and the optimizer, for ``learner_state.pt``."""
        named = [(n, p) for n, p in self.score.policy.named_parameters() if p.requires_grad]
        return {
            "params": {n: p.detach().to("cpu", copy=True) for n, p in named},
            "grads": {n: p.grad.detach().to("cpu", copy=True) for n, p in named if p.grad is not None},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state(self, path: Path, state: dict[str, Any]) -> None:
        named = {n: p for n, p in self.score.policy.named_parameters() if p.requires_grad}
        if set(state["params"]) != set(named):
            missing, extra = sorted(set(named) - set(state["params"])), sorted(set(state["params"]) - set(named))
            raise ValueError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(state["params"][n])
                p.grad = state["grads"][n].to(p.device) if n in state["grads"] else None
        self.optimizer.load_state_dict(state["optimizer"])


def deepspeed_config(config: TrainConfig, hidden_size: int) -> dict[str, Any]:
    """DeepSpeed's config, built from ours (pure: no DeepSpeed import).

    DeepSpeed counts ``gradient_accumulation_steps`` micro-steps per step, but the learner
    marks each window's last micro-step itself and passes losses already scaled for the window
    (``backward(..., scale_wrt_gas=False)``), so DeepSpeed reduces and steps exactly where our
    batch plan says. ZeRO-3 keeps parameters under ``10 x hidden_size`` elements whole on every
    rank (norms, biases: gathering them costs more than it saves; the rule transformers'
    DeepSpeed integration uses for ``auto``).
    """
    b, o = config.batch, config.optim
    zero: dict[str, Any] = {"stage": {"deepspeed_zero2": 2, "deepspeed_zero3": 3}[b.train_backend]}
    if zero["stage"] == 3:
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    if b.zero_offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": b.per_device_train_batch_size,
        "gradient_accumulation_steps": b.gradient_accumulation_steps,
        "train_batch_size": b.per_device_train_batch_size * b.gradient_accumulation_steps * b.num_processes,
        "gradient_clipping": o.max_grad_norm,
        "bf16": {"enabled": config.model.dtype == "bfloat16"},
        "fp16": {"enabled": config.model.dtype == "float16"},
        "zero_optimization": zero,
        # our torch AdamW (with our betas, weight decay and LR schedule) is the client optimizer;
        # offloaded, it steps on the CPU copy instead of DeepSpeed's compiled CPU Adam
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend:
    """DeepSpeed ZeRO-2 / ZeRO-3 around the learner's forward module and AdamW.

    The engine is built in :meth:`start`, once the learner group (the default torch.distributed
    group) exists. Numerical guard: DeepSpeed's own check skips a step whose gradient norm is
    not finite (gradients dropped, weights and moments untouched; a non-finite loss brings
    non-finite gradients with it); such a step reports ``skipped``, and the LR schedule, which
    stays the learner's, advances as in the plain backend. Under ZeRO-3 the weights live in
    shards: :meth:`gathered` and :meth:`full_weights` gather them (a collective: every rank
    calls them, see :data:`EVERY_RANK`), and only rank 0 keeps a copy.
    """

    #: ZeRO reduces gradients in every backward (ZeRO-3 also gathers weights in every forward):
    #: every rank must run as many forwards and backwards as the others.
    communicates_per_forward = True

    def __init__(self, config: TrainConfig, score: CompletionLogprobs, optimizer: torch.optim.Optimizer, rank: int):
        self.config, self.score, self.optimizer, self.rank = config, score, optimizer, rank
        self.stage = 3 if config.batch.train_backend == "deepspeed_zero3" else 2
        self.shards_weights = self.stage == 3
        self.engine: Any = None
        self.export = WeightExport(score.policy, config.lora)  # under ZeRO-3 it reads (and records) gathered weights

    @property
    def model(self) -> Any:
        if self.engine is None:
            raise RuntimeError("the DeepSpeed engine is built when the learner joins its group (Learner.join_group)")
        return self.engine

    def start(self) -> None:
        import logging

        import deepspeed

        from deepspeed.accelerator import get_accelerator

        deepspeed.utils.logger.setLevel(logging.WARNING)
        os.environ.setdefault("LOCAL_RANK", "0")  # one Ray actor per rank, each seeing its own device as device 0
        if get_accelerator().device_name() == "cpu":
            # its CPU communicator would first compile a shared-memory all-reduce kernel (a minute of
            # g++), which only DeepSpeed's inference uses: training collectives go through gloo
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        lm = causal_lm(self.score.policy)
        self.engine, self.optimizer, *_ = deepspeed.initialize(
            model=self.score, optimizer=self.optimizer, config=deepspeed_config(self.config, lm.config.hidden_size),
            dist_init_required=False,
        )
        if self.stage == 3:  # read by the chunked logprobs outside the LM head's forward
            deepspeed.zero.register_external_parameter(self.score, lm.get_output_embeddings().weight)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, loss: float) -> tuple[float, bool]:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return (float("nan") if norm is None else float(norm)), not self.engine.was_step_applied()

    def _exported(self) -> list[torch.nn.Parameter]:
        policy = self.score.policy
        return [p for p in policy.parameters() if p.requires_grad or not self.config.lora.enabled]

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """The full weights the rollout engines receive (LoRA tensors, or all) are in place within this."""
        if not self.shards_weights:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(self._exported(), modifier_rank=None):
            yield

    def full_weights(self, copy_to_cpu: bool) -> dict[str, torch.Tensor]:
        """Rank 0: the full tensors (copies under ZeRO-3: the gathered ones are freed after); others: ``{}``."""
        with self.gathered():
            if self.rank != 0:
                return {}
            weights = self.export(copy_to_cpu)
            if self.shards_weights and not copy_to_cpu:
                weights = {k: v.clone() for k, v in weights.items()}
            return weights

    def state(self, path: Path) -> dict[str, Any]:
        """DeepSpeed's own checkpoint (every rank its shard of the trainable weights and AdamW
        moments) under ``path``; frozen weights (a LoRA run's base) are the checkpoint's model."""
        self.engine.save_checkpoint(
            str(path / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True
        )
        return {}

    def load_state(self, path: Path, state: dict[str, Any]) -> None:
        loaded, _ = self.engine.load_checkpoint(
            str(path / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False,
            load_module_strict=False,  # the frozen weights were left out
        )
        if loaded is None:
            raise ValueError(f"{path} holds no DeepSpeed checkpoint ({DEEPSPEED_DIR}/{DEEPSPEED_TAG}): it was saved "
                             "by another batch.train_backend")


#: Parameter dtypes torch's fused AdamW steps.
FUSED_ADAMW_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_adamw(params: list[torch.Tensor], train_backend: str) -> bool:
    """Whether the learner's AdamW runs fused (one kernel launch per step over all parameters,
    instead of a few per parameter group and dtype): where every trainable parameter is a
    floating CUDA tensor and the plain backend steps them. DeepSpeed swaps the optimizer's
    parameter groups for its own flat partitions (on the CPU when offloaded), so it keeps
    torch's default there."""
    return (
        train_backend == "plain" and bool(params)
        and all(p.device.type == "cuda" and p.dtype in FUSED_ADAMW_DTYPES for p in params)
    )


def make_backend(
    config: TrainConfig, score: CompletionLogprobs, optimizer: torch.optim.Optimizer, rank: int
) -> PlainBackend | DeepSpeedBackend:
    cls = PlainBackend if config.batch.train_backend == "plain" else DeepSpeedBackend
    return cls(config, score, optimizer, rank)
