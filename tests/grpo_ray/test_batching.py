"""grpo_ray.batching: the four worked examples of seed 004 (Unsloth's batching table), both
generation cycles each, plus several processes, num_iterations replay and accumulation that
spans generation cycles."""

import pytest

from grpo_ray.batching import (
    accumulation_windows, describe_cycle, forward_token_budget, plan_forwards, plan_generation_cycle, rank_rows,
    split_forwards,
)
from grpo_ray.config import BatchConfig, GRPOConfig, TrainConfig


def batches(steps, process=0):
    return [s.batches[process] for s in steps]


def flags(steps):
    return [s.optimizer_step for s in steps]


# Each example: the knobs, then per cycle (A = cycle 0, B = cycle 1) the prompt index of every
# completion of every micro-step, and after which micro-steps the optimizer steps.
SEED_EXAMPLES = {
    # Example 1: batch 3, accumulation 2, steps_per_generation 4, G = 3.
    # effective batch 4 * 1 * 3 = 12 completions = 4 unique prompts; the optimizer steps
    # after micro-steps 1 and 3 (accumulation of 2 reached), 4 / 2 = 2 times per generation.
    "example 1": (
        dict(per_device_train_batch_size=3, gradient_accumulation_steps=2, steps_per_generation=4, num_generations=3),
        [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]],
        [[4, 4, 4], [5, 5, 5], [6, 6, 6], [7, 7, 7]],
        [False, True, False, True],
    ),
    # Example 2: as example 1 with accumulation 4 = steps_per_generation: one optimizer step at
    # the end of each cycle.
    "example 2": (
        dict(per_device_train_batch_size=3, gradient_accumulation_steps=4, steps_per_generation=4, num_generations=3),
        [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]],
        [[4, 4, 4], [5, 5, 5], [6, 6, 6], [7, 7, 7]],
        [False, False, False, True],
    ),
    # Example 3: G = 4, so the 12 completions are 12 / 4 = 3 unique prompts laid out prompt by
    # prompt: slots 0-3 -> prompt 0, 4-7 -> prompt 1, 8-11 -> prompt 2. Cut into micro-batches
    # of 3: slots 0-2 = [0,0,0], 3-5 = [0,1,1], 6-8 = [1,1,2], 9-11 = [2,2,2]; each prompt appears
    # exactly 4 times. Cycle B holds the next 3 prompts (3, 4, 5): [3,3,3] [3,4,4] [4,4,5] [5,5,5].
    # The seed prints [1,1,3] for step 2 and numbers cycle B from 4 ([4,4,4] [4,5,5] [5,5,6]
    # [6,6,6]); both are misprints: a '3' in cycle A would make prompt 2 appear only 3 times and
    # prompt 3 once, and cycle A's 3 prompts are 0-2, so cycle B starts at 3. The '[1,2,2]'
    # would not add up either (prompt 1 would appear 3 times, prompt 2 five times).
    "example 3": (
        dict(per_device_train_batch_size=3, gradient_accumulation_steps=4, steps_per_generation=4, num_generations=4),
        [[0, 0, 0], [0, 1, 1], [1, 1, 2], [2, 2, 2]],
        [[3, 3, 3], [3, 4, 4], [4, 4, 5], [5, 5, 5]],
        [False, False, False, True],
    ),
    # Example 4: batch 6, accumulation = steps_per_generation = 2, G = 3: 2 * 6 = 12 completions,
    # 4 unique prompts, two per micro-batch.
    "example 4": (
        dict(per_device_train_batch_size=6, gradient_accumulation_steps=2, steps_per_generation=2, num_generations=3),
        [[0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3]],
        [[4, 4, 4, 5, 5, 5], [6, 6, 6, 7, 7, 7]],
        [False, True],
    ),
}


@pytest.mark.parametrize("name", list(SEED_EXAMPLES))
def test_seed_examples(name):
    knobs, cycle_a, cycle_b, optimizer = SEED_EXAMPLES[name]
    a = plan_generation_cycle(**knobs, cycle=0)
    b = plan_generation_cycle(**knobs, cycle=1)
    assert batches(a) == cycle_a
    assert batches(b) == cycle_b
    assert flags(a) == optimizer and flags(b) == optimizer
    assert all(s.iteration == 0 for s in a + b)
    # every prompt of a cycle appears exactly num_generations times
    g = knobs["num_generations"]
    for steps in (a, b):
        flat = [p for s in steps for p in s.batches[0]]
        assert all(flat.count(p) == g for p in set(flat))


@pytest.mark.parametrize(
    "name, effective, unique, optimizer_steps",
    [("example 1", 12, 4, 2), ("example 2", 12, 4, 1), ("example 3", 12, 3, 1), ("example 4", 12, 4, 1)],
)
def test_seed_example_formulas(name, effective, unique, optimizer_steps):
    # effective_batch_size = steps_per_generation * num_processes * per_device_train_batch_size
    # unique_prompts = effective_batch_size / num_generations
    # optimizer_steps_per_generation = steps_per_generation / gradient_accumulation_steps
    knobs = dict(SEED_EXAMPLES[name][0])
    plan = describe_cycle(**knobs)
    assert (plan.effective_batch_size, plan.unique_prompts) == (effective, unique)
    assert plan.optimizer_steps_per_generation == optimizer_steps
    assert plan.micro_steps_per_generation == knobs["steps_per_generation"]
    assert f"{unique} unique prompts" in plan.describe()
    # The config accepts each example and computes the same effective batch.
    g = knobs.pop("num_generations")
    config = TrainConfig(batch=BatchConfig(**knobs), grpo=GRPOConfig(num_generations=g))
    assert config.batch.effective_batch_size == effective


def test_rows_index_the_generation_batch():
    steps = plan_generation_cycle(3, 4, 4, 4, cycle=1)
    assert [s.rows[0] for s in steps] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_two_processes_slice_process_major():
    # batch 2, steps_per_generation 2, 2 processes, G = 2: effective 2 * 2 * 2 = 8 completions,
    # 4 prompts. Process p owns rows [p * 4, (p + 1) * 4): process 0 rows 0-3 (prompts 0, 1),
    # process 1 rows 4-7 (prompts 2, 3), each fed 2 rows per micro-step.
    steps = plan_generation_cycle(2, 2, 2, 2, num_processes=2)
    assert [s.rows for s in steps] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    assert [s.batches for s in steps] == [[[0, 0], [2, 2]], [[1, 1], [3, 3]]]
    assert flags(steps) == [False, True]
    # cycle 1 continues with prompts 4-7
    steps = plan_generation_cycle(2, 2, 2, 2, num_processes=2, cycle=1)
    assert [s.batches for s in steps] == [[[4, 4], [6, 6]], [[5, 5], [7, 7]]]


def test_rank_rows_split_the_batch_between_processes():
    steps = plan_generation_cycle(2, 2, 2, 2, num_processes=2, num_iterations=2)  # replayed: rows once each
    assert rank_rows(steps, 0) == [0, 1, 2, 3] and rank_rows(steps, 1) == [4, 5, 6, 7]
    assert rank_rows(plan_generation_cycle(3, 1, 2, 3), 0) == list(range(6))


@pytest.mark.parametrize("procs, spg, b, g", [(2, 3, 4, 4), (4, 2, 3, 6), (3, 1, 2, 3)])
def test_every_row_once_per_iteration(procs, spg, b, g):
    steps = plan_generation_cycle(b, 1, spg, g, num_processes=procs, num_iterations=2)
    for it in (0, 1):
        rows = sorted(r for s in steps if s.iteration == it for proc in s.rows for r in proc)
        assert rows == list(range(spg * procs * b))
        for s in steps:
            for p, proc in enumerate(s.rows):
                assert all(p * spg * b <= r < (p + 1) * spg * b for r in proc)


def test_num_iterations_replays_the_batch():
    # Example 1 with num_iterations = 2: the 4 micro-batches are replayed once more, the
    # optimizer still stepping every 2 micro-steps; cycle B continues the count (global
    # micro-steps 8-15) and the prompts (4-7).
    knobs = dict(per_device_train_batch_size=3, gradient_accumulation_steps=2, steps_per_generation=4, num_generations=3)
    a = plan_generation_cycle(**knobs, num_iterations=2)
    assert batches(a) == [[0] * 3, [1] * 3, [2] * 3, [3] * 3] * 2
    assert [s.iteration for s in a] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert flags(a) == [False, True] * 4
    assert [s.rows for s in a[:4]] == [s.rows for s in a[4:]]
    b = plan_generation_cycle(**knobs, num_iterations=2, cycle=1)
    assert batches(b) == [[4] * 3, [5] * 3, [6] * 3, [7] * 3] * 2
    assert describe_cycle(**knobs, num_iterations=2).optimizer_steps_per_generation == 4


def test_accumulation_longer_than_a_generation():
    # gradient_accumulation_steps 4 > steps_per_generation 2: the optimizer steps once every
    # two cycles, after the 4th micro-step counted across cycles (global micro-steps 3, 7).
    knobs = dict(per_device_train_batch_size=3, gradient_accumulation_steps=4, steps_per_generation=2, num_generations=3)
    assert [flags(plan_generation_cycle(**knobs, cycle=c)) for c in range(4)] == [
        [False, False], [False, True], [False, False], [False, True],
    ]
    assert describe_cycle(**knobs).optimizer_steps_per_generation == 0.5


def test_accumulation_not_dividing_the_cycle():
    # accumulation 3, steps_per_generation 2: optimizer after global micro-steps 2, 5, 8, ...
    all_flags = [f for c in range(3) for f in flags(plan_generation_cycle(2, 3, 2, 2, cycle=c))]
    assert [i for i, f in enumerate(all_flags) if f] == [2, 5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(per_device_train_batch_size=3, gradient_accumulation_steps=1, steps_per_generation=1, num_generations=2), "divisible"),
        (dict(per_device_train_batch_size=0, gradient_accumulation_steps=1, steps_per_generation=1, num_generations=2), "per_device_train_batch_size"),
        (dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, steps_per_generation=1, num_generations=2, num_iterations=0), "num_iterations"),
        (dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, steps_per_generation=1, num_generations=2, cycle=-1), "cycle"),
    ],
)
def test_bad_plans_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_generation_cycle(**kwargs)


# -- execution: accumulation windows and the learner's forwards --------------------------------


def test_accumulation_windows_end_at_optimizer_steps():
    plan = plan_generation_cycle(2, 3, 4, 2)  # 4 micro-steps, a step after the third
    windows = accumulation_windows(plan)
    assert [[s.optimizer_step for s in w] for w in windows] == [[False, False, True], [False]]
    assert [s for w in windows for s in w] == plan


# Rows 0-7 in two micro-batches of 4; a row's length is its prompt + completion tokens.
MICRO_BATCHES = [[0, 1, 2, 3], [4, 5, 6, 7]]
PROMPTS = [3, 3, 2, 2, 5, 5, 1, 1]
COMPLETIONS = [6, 1, 4, 2, 6, 6, 0, 3]


def _executed(forwards):
    """Each (micro-batch, row) the forwards execute, from their slices."""
    return sorted((s.micro_batch, f.rows[i]) for f in forwards for s in f.slices for i in range(s.start, s.stop))


def test_no_budget_is_the_plain_micro_step_loop():
    forwards = plan_forwards(MICRO_BATCHES, PROMPTS, COMPLETIONS, None)
    assert [f.rows for f in forwards] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [(f.prompt_width, f.completion_width) for f in forwards] == [(3, 6), (5, 6)]
    assert [[(s.micro_batch, s.start, s.stop) for s in f.slices] for f in forwards] == [[(0, 0, 4)], [(1, 0, 4)]]


@pytest.mark.parametrize("budget", [1, 11, 20, 30, 1000])
def test_forwards_pack_sorted_rows_under_the_budget(budget):
    forwards = plan_forwards(MICRO_BATCHES, PROMPTS, COMPLETIONS, budget)
    assert _executed(forwards) == sorted((m, r) for m, rows in enumerate(MICRO_BATCHES) for r in rows)
    for f in forwards:
        assert f.padded_tokens <= budget or len(f.rows) == 1  # a row alone may exceed it
        assert f.prompt_width == max(1, *(PROMPTS[r] for r in f.rows))
        assert f.completion_width == max(1, *(COMPLETIONS[r] for r in f.rows))
        # slices: contiguous runs that tile the forward, one per micro-batch
        assert [s.start for s in f.slices] == [0] + [s.stop for s in f.slices[:-1]] and f.slices[-1].stop == len(f.rows)
        assert len({s.micro_batch for s in f.slices}) == len(f.slices)
    longest = [max(PROMPTS[r] + COMPLETIONS[r] for r in f.rows) for f in forwards]
    assert longest == sorted(longest, reverse=True)  # longest rows first
    if budget >= 1000:
        assert len(forwards) == 1 and forwards[0].padded_tokens == 8 * (5 + 6)


def test_sorting_by_length_cuts_padding():
    """Two micro-batches that each hold a long and a short row: the plain loop pads both short
    rows to the long ones; sorted forwards put the long rows together, the short ones together."""
    prompts, completions = [4, 4, 4, 4], [100, 2, 100, 2]
    plain = plan_forwards([[0, 1], [2, 3]], prompts, completions, None)
    packed = plan_forwards([[0, 1], [2, 3]], prompts, completions, 2 * 104)
    assert sum(f.padded_tokens for f in plain) == 4 * 104
    assert [f.rows for f in packed] == [(0, 2), (1, 3)] and sum(f.padded_tokens for f in packed) == 2 * 104 + 2 * 6
    assert [[s.micro_batch for s in f.slices] for f in packed] == [[0, 1], [0, 1]]


def test_replayed_rows_run_once_per_appearance():
    forwards = plan_forwards([[0, 1], [0, 1]], [2, 2], [3, 1], 1000)  # num_iterations replays a row in one window
    assert len(forwards) == 1 and sorted(forwards[0].rows) == [0, 0, 1, 1]
    assert _executed(forwards) == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("budget", [1, 25, 50, 1000])
def test_whole_micro_batches_are_never_split(budget):
    forwards = plan_forwards(MICRO_BATCHES, PROMPTS, COMPLETIONS, budget, whole_micro_batches=True)
    assert _executed(forwards) == sorted((m, r) for m, rows in enumerate(MICRO_BATCHES) for r in rows)
    for f in forwards:
        for s in f.slices:
            assert list(f.rows[s.start:s.stop]) == MICRO_BATCHES[s.micro_batch]


@pytest.mark.parametrize("whole", [False, True])
def test_forwards_split_to_another_ranks_count(whole):
    """DeepSpeed ranks must all run as many forwards: a rank that packed fewer cuts its largest."""
    forwards = plan_forwards(MICRO_BATCHES, PROMPTS, COMPLETIONS, 1000, whole_micro_batches=whole)
    assert len(forwards) == 1
    for count in (2, 3, 5) if not whole else (2,):
        split = split_forwards(forwards, count, PROMPTS, COMPLETIONS, whole_micro_batches=whole)
        assert len(split) == count and _executed(split) == _executed(forwards)
        for f in split:
            assert f.prompt_width == max(1, *(PROMPTS[r] for r in f.rows))
            if whole:
                assert all(list(f.rows[s.start:s.stop]) == MICRO_BATCHES[s.micro_batch] for s in f.slices)
    with pytest.raises(ValueError, match="cannot cut"):
        split_forwards(forwards, 3 if whole else 9, PROMPTS, COMPLETIONS, whole_micro_batches=whole)


def test_bad_budget_raises():
    with pytest.raises(ValueError, match="max_tokens"):
        plan_forwards(MICRO_BATCHES, PROMPTS, COMPLETIONS, 0)


def test_forward_token_budget():
    assert forward_token_budget(0, True, 16, 64, 256) is None  # 0: the plain loop everywhere
    assert forward_token_budget(4096, False, 16, 64, 256) == 4096
    assert forward_token_budget(None, False, 16, 64, 256) is None  # auto on CPU: the plain loop
    assert forward_token_budget(None, True, 16, 64, 256) == 16 * (64 + 256)  # auto on CUDA: one worst micro-batch
    with pytest.raises(Exception, match="max_tokens_per_forward"):
        BatchConfig(max_tokens_per_forward=-1)
