"""How one generation batch is cut into micro-steps and optimizer steps.

A generation cycle samples ``unique_prompts`` prompts, ``num_generations`` completions each,
``effective_batch_size = steps_per_generation x num_processes x per_device_train_batch_size``
completions in all, laid out prompt by prompt (``[0]*G + [1]*G + ...``, as TRL's
``RepeatSampler`` yields them). Process ``p`` owns the ``p``-th contiguous slice of
``steps_per_generation x per_device_train_batch_size`` completions (as accelerate shards
TRL's batches) and feeds it to the model ``per_device_train_batch_size`` at a time. With
``num_iterations > 1`` the same slices are replayed. The optimizer steps after every
``gradient_accumulation_steps`` micro-steps, counted across cycles.

The trainer slices its batches with this same function, so the plan printed at start-up is
the plan that runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MicroStep:
    """One forward/backward on every process."""

    batches: list[list[int]]  # per process: the prompt index of each completion (counts across cycles)
    rows: list[list[int]]  # per process: row of each completion in this cycle's generation batch
    optimizer_step: bool  # step the optimizer after this micro-step's backward
    iteration: int  # which pass over the generation batch (0 .. num_iterations-1)


@dataclass(frozen=True)
class CyclePlan:
    """The numbers a user wants to see before a run starts."""

    effective_batch_size: int
    unique_prompts: int
    micro_steps_per_generation: int
    optimizer_steps_per_generation: float

    def describe(self) -> str:
        return (
            f"generation cycle: {self.unique_prompts} unique prompts -> {self.effective_batch_size} completions "
            f"(effective batch), {self.micro_steps_per_generation} micro-steps, "
            f"{self.optimizer_steps_per_generation:g} optimizer step(s) per generation"
        )


def _check(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def describe_cycle(
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int,
    steps_per_generation: int,
    num_generations: int,
    num_processes: int = 1,
    num_iterations: int = 1,
) -> CyclePlan:
    """Effective batch, unique prompts and steps of one generation cycle (validated)."""
    for name, value in (
        ("per_device_train_batch_size", per_device_train_batch_size),
        ("gradient_accumulation_steps", gradient_accumulation_steps),
        ("steps_per_generation", steps_per_generation),
        ("num_generations", num_generations),
        ("num_processes", num_processes),
        ("num_iterations", num_iterations),
    ):
        _check(name, value)
    effective = steps_per_generation * num_processes * per_device_train_batch_size
    if effective % num_generations:
        raise ValueError(f"effective batch size {effective} is not divisible by num_generations={num_generations}")
    micro = steps_per_generation * num_iterations
    return CyclePlan(
        effective_batch_size=effective,
        unique_prompts=effective // num_generations,
        micro_steps_per_generation=micro,
        optimizer_steps_per_generation=micro / gradient_accumulation_steps,
    )


def plan_generation_cycle(
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int,
    steps_per_generation: int,
    num_generations: int,
    num_processes: int = 1,
    cycle: int = 0,
    num_iterations: int = 1,
) -> list[MicroStep]:
    """The micro-steps of generation cycle ``cycle`` (0-based), in order.

    Reproduces the worked examples of Unsloth's batching documentation (seed 004); e.g.
    batch 3, accumulation 2, steps_per_generation 4, G=3 gives ``[0,0,0] [1,1,1]* [2,2,2]
    [3,3,3]*`` (* = optimizer step), then ``[4,4,4] ...`` in cycle 1.
    """
    if not isinstance(cycle, int) or cycle < 0:
        raise ValueError(f"cycle must be an integer >= 0, got {cycle!r}")
    plan = describe_cycle(
        per_device_train_batch_size,
        gradient_accumulation_steps,
        steps_per_generation,
        num_generations,
        num_processes,
        num_iterations,
    )
    b = per_device_train_batch_size
    per_process = steps_per_generation * b
    first_prompt = cycle * plan.unique_prompts
    steps = []
    for k in range(plan.micro_steps_per_generation):
        s = k % steps_per_generation
        rows = [list(range(p * per_process + s * b, p * per_process + (s + 1) * b)) for p in range(num_processes)]
        batches = [[first_prompt + r // num_generations for r in proc] for proc in rows]
        global_step = cycle * plan.micro_steps_per_generation + k
        steps.append(
            MicroStep(
                batches=batches,
                rows=rows,
                optimizer_step=(global_step + 1) % gradient_accumulation_steps == 0,
                iteration=k // steps_per_generation,
            )
        )
    return steps


def rank_rows(plan: list[MicroStep], rank: int) -> list[int]:
    """Rows of the generation batch that process ``rank`` trains on in ``plan`` (sorted, each once)."""
    return sorted({row for step in plan for row in step.rows[rank]})
