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

import itertools
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


# -- execution: how the learner runs one accumulation window -----------------------------------


def accumulation_windows(plan: list[MicroStep]) -> list[list[MicroStep]]:
    """The plan's micro-steps grouped by the optimizer step they end at; the last group ends
    without one when its window continues into the next generation cycle."""
    windows: list[list[MicroStep]] = [[]]
    for step in plan:
        windows[-1].append(step)
        if step.optimizer_step:
            windows.append([])
    return [w for w in windows if w]


@dataclass(frozen=True)
class Slice:
    """Rows ``start:stop`` of a forward, all from the window's micro-batch ``micro_batch``."""

    micro_batch: int
    start: int
    stop: int


@dataclass(frozen=True)
class Forward:
    """One forward/backward of the learner: ``rows`` (of its batch) in execution order, padded
    to ``prompt_width`` + ``completion_width`` tokens; ``slices`` cut them into runs of rows of
    one user micro-batch each (the loss is computed per slice, with that micro-batch's
    normalisers)."""

    rows: tuple[int, ...]
    slices: tuple[Slice, ...]
    prompt_width: int
    completion_width: int

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * (self.prompt_width + self.completion_width)


def plan_forwards(
    micro_batches: list[list[int]],
    prompt_lengths: list[int],
    completion_lengths: list[int],
    max_tokens: int | None,
    *,
    whole_micro_batches: bool = False,
) -> list[Forward]:
    """The forwards that execute ``micro_batches`` (rows of one accumulation window).

    ``max_tokens=None``: one forward per micro-batch, its rows in order (the plain micro-step
    loop). Otherwise the rows are sorted by length, longest first, and packed greedily into
    forwards of at most ``max_tokens`` padded tokens (rows x (longest prompt + longest
    completion)); a row that alone exceeds the budget runs alone. With
    ``whole_micro_batches`` the units packed are whole micro-batches (a loss that needs a
    statistic of the whole micro-batch). Sorting puts rows of similar length together, so
    little compute goes to padding; longest first puts the largest forward first, so an
    out-of-memory shows at once. A row that appears in several micro-batches (replays of
    ``num_iterations``) is executed once per appearance.

    Widths are at least 1, as :meth:`RolloutBatch.select` trims them.
    """
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or an integer >= 1, got {max_tokens!r}")
    units = [[(m, r) for r in rows] for m, rows in enumerate(micro_batches) if rows]
    if max_tokens is None:
        return [_forward(unit, prompt_lengths, completion_lengths) for unit in units]
    if not whole_micro_batches:
        units = [[item] for unit in units for item in unit]
    units.sort(key=lambda u: -max(prompt_lengths[r] + completion_lengths[r] for _, r in u))

    def widths(unit: list[tuple[int, int]]) -> tuple[int, int]:
        return max(1, *(prompt_lengths[r] for _, r in unit)), max(1, *(completion_lengths[r] for _, r in unit))

    forwards: list[Forward] = []
    items: list[tuple[int, int]] = []
    width = (1, 1)  # of the forward being filled
    for unit in units:
        unit_width = widths(unit)
        grown = (max(width[0], unit_width[0]), max(width[1], unit_width[1]))
        if items and (len(items) + len(unit)) * sum(grown) > max_tokens:
            forwards.append(_forward(items, prompt_lengths, completion_lengths))
            items, grown = [], unit_width
        items += unit
        width = grown
    if items:
        forwards.append(_forward(items, prompt_lengths, completion_lengths))
    return forwards


def _forward(items: list[tuple[int, int]], prompt_lengths: list[int], completion_lengths: list[int]) -> Forward:
    """A forward of ``(micro_batch, row)`` items, each micro-batch's rows made contiguous."""
    items = sorted(items, key=lambda item: item[0])  # stable: keeps the order within a micro-batch
    slices, start = [], 0
    for micro_batch, run in itertools.groupby(items, key=lambda item: item[0]):
        stop = start + len(list(run))
        slices.append(Slice(micro_batch, start, stop))
        start = stop
    rows = tuple(r for _, r in items)
    return Forward(
        rows=rows,
        slices=tuple(slices),
        prompt_width=max(1, *(prompt_lengths[r] for r in rows)),
        completion_width=max(1, *(completion_lengths[r] for r in rows)),
    )


def forward_token_budget(
    max_tokens_per_forward: int | None,
    on_cuda: bool,
    per_device_train_batch_size: int,
    prompt_tokens: int,
    max_completion_length: int,
) -> int | None:
    """``batch.max_tokens_per_forward`` resolved: padded tokens per forward, or None for the
    plain micro-step loop.

    ``prompt_tokens``: the longest prompt the run allows (``max_prompt_length``, or the
    batch's widest prompt when there is no limit). Auto (None) keeps the plain loop on CPU,
    where the figures stay those of the micro-steps and there is no launch overhead to
    amortise, and on CUDA takes one micro-batch at its longest possible rows, so no forward
    holds more tokens than the user's worst micro-step could.
    """
    if max_tokens_per_forward == 0:
        return None
    if max_tokens_per_forward is not None:
        return max_tokens_per_forward
    return per_device_train_batch_size * (prompt_tokens + max_completion_length) if on_cuda else None


def split_forwards(
    forwards: list[Forward],
    count: int,
    prompt_lengths: list[int],
    completion_lengths: list[int],
    *,
    whole_micro_batches: bool = False,
) -> list[Forward]:
    """``forwards`` cut until there are ``count`` of them, for ranks that must all run as many
    (a train backend that communicates in every forward and backward): the forward of most
    padded tokens that can be cut is split into two halves of its rows (of its micro-batches,
    with ``whole_micro_batches``). Ranks holding equally many rows can always reach the count
    of any other rank."""
    forwards = list(forwards)
    while len(forwards) < count:
        cuttable = [i for i, f in enumerate(forwards) if len(f.slices if whole_micro_batches else f.rows) > 1]
        if not cuttable:
            raise ValueError(f"cannot cut {len(forwards)} forwards into {count}")
        i = max(cuttable, key=lambda i: forwards[i].padded_tokens)
        f = forwards[i]
        items = [(s.micro_batch, f.rows[r]) for s in f.slices for r in range(s.start, s.stop)]
        cut = f.slices[len(f.slices) // 2].start if whole_micro_batches else len(items) // 2
        forwards[i : i + 1] = [
            _forward(items[:cut], prompt_lengths, completion_lengths),
            _forward(items[cut:], prompt_lengths, completion_lengths),
        ]
    return forwards
