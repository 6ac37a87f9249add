"""grpo_ray.batching: the four worked examples of seed 004 (Unsloth's batching table), both
generation cycles each, plus several processes, num_iterations replay and accumulation that
spans generation cycles."""

import pytest

from grpo_ray.batching import describe_cycle, plan_generation_cycle, rank_rows
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
