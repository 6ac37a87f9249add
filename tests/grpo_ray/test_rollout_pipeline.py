"""The rollout queue (grpo_ray.rollout_pipeline) without Ray: which cycle starts with which weights,
and a checkpoint's pending rollouts saved and restored exactly (the driver's start/finish faked)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from grpo_ray.data import PromptSampler
from grpo_ray.rollout_batch import RolloutBatch
from grpo_ray.rollout_pipeline import RolloutPipeline, decode_batch, encode_batch
from grpo_ray.sampling import Sample
from grpo_ray.trainer_state import TrainerState

ROWS = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(10)]
PER_CYCLE = 2  # prompts per cycle, 2 completions each


def fake_batch(rows, cycle, version) -> RolloutBatch:
    samples = [Sample([cycle, k, 7], [-0.5 - k, float("nan"), -1e-3], truncated=k % 2 == 1) for k in range(2 * len(rows))]
    return RolloutBatch.from_samples(
        [[len(r["prompt"]), cycle] for r in rows], samples, completions=[f"c{cycle}.{k}" for k in range(4)],
        pad_token_id=0, weight_version=version, meta={"time/generate_s": 0.5, "time/generate_end": 100.0 + cycle},
    )


class Driver:
    """start/finish as the trainer passes them, recording what was started with which weights."""

    def __init__(self):
        self.started: list[tuple[int, int, str]] = []

    def start(self, rows, cycle, version):
        self.started.append((cycle, version, rows[0]["prompt"]))
        return ("handle", cycle)

    def finish(self, rows, cycle, handles, version):
        assert handles == ("handle", cycle)
        return fake_batch(rows, cycle, version)


def pipeline(max_staleness: int, last: int = 100, seed: int = 3, rows=ROWS) -> tuple[RolloutPipeline, Driver]:
    driver = Driver()
    return RolloutPipeline(PromptSampler(rows, seed), PER_CYCLE, max_staleness, last, driver.start, driver.finish), driver


def run_cycles(p: RolloutPipeline, first: int, count: int) -> list:
    taken = []
    for cycle in range(first, first + count):
        p.fill(policy=cycle, weight_version=10 * cycle)
        taken.append(p.take(cycle))
    return taken


@pytest.mark.parametrize("s", [0, 1, 2])
def test_each_cycle_starts_with_the_weights_of_update_c_minus_s_and_never_past_the_last_cycle(s):
    p, driver = pipeline(s, last=5)
    taken = run_cycles(p, 0, 6)
    assert [(c, v) for c, v, _ in driver.started] == [(c, 10 * max(c - s, 0)) for c in range(6)]
    assert [r.cycle - r.policy for r in taken] == [min(c, s) for c in range(6)]
    assert [r.batch.weight_version for r in taken] == [10 * max(c - s, 0) for c in range(6)]
    assert not p.pending and p.next_cycle == 6  # nothing started beyond the last cycle
    # started in cycle order: the synchronous loop's prompt order, whatever S
    same, _ = pipeline(0, last=5)
    assert [r.rows for r in taken] == [r.rows for r in run_cycles(same, 0, 6)]


def test_a_batch_is_saved_and_decoded_bit_for_bit():
    batch = fake_batch(ROWS[:2], 3, 7)
    batch.advantages = torch.tensor([0.5, -0.25, 1e-8, 3.0])
    back = decode_batch(json.loads(json.dumps(encode_batch(batch))))
    for field in dataclasses.fields(batch):
        mine, theirs = getattr(back, field.name), getattr(batch, field.name)
        if isinstance(theirs, torch.Tensor):
            assert mine.dtype == theirs.dtype and torch.equal(mine.nan_to_num(), theirs.nan_to_num())
            assert torch.equal(mine.isnan(), theirs.isnan()) if theirs.is_floating_point() else True
        else:
            assert mine == theirs, field.name


def test_a_checkpoint_keeps_the_pending_rollouts_and_a_reset_continues_the_same_schedule():
    reference, ref_driver = pipeline(2)
    run_cycles(reference, 0, 6)

    first, _ = pipeline(2)
    run_cycles(first, 0, 2)  # then a checkpoint between cycles 1 and 2: cycles 2 and 3 are in flight
    first.complete()
    sampler, pending = first.state()
    assert [r["cycle"] for r in pending] == [2, 3] and [r["policy"] for r in pending] == [0, 1]
    state = TrainerState(step=4, cycle=2, sampler=json.loads(json.dumps(sampler)), pending_rollouts=json.loads(json.dumps(pending)))

    resumed, driver = pipeline(2)
    resumed.reset(state)
    taken = run_cycles(resumed, 2, 4)
    # cycles 2 and 3 from the checkpoint (not generated again), 4 and 5 started as in the uninterrupted run
    assert [(c, v) for c, v, _ in driver.started] == [(4, 20), (5, 30), (6, 40), (7, 50)]
    assert [s for s in driver.started] == ref_driver.started[4:]
    expected = [fake_batch(r.rows, r.cycle, 10 * r.policy) for r in taken]
    for got, want in zip(taken, expected):
        assert torch.equal(got.batch.completion_ids, want.completion_ids) and got.batch.completions == want.completions
    assert [r.cycle - r.policy for r in taken] == [2, 2, 2, 2]


def test_a_lower_bound_on_resume_drops_the_rollouts_beyond_it_and_generates_them_again():
    first, _ = pipeline(2)
    run_cycles(first, 0, 2)
    first.complete()
    sampler, pending = first.state()
    resumed, driver = pipeline(1)
    resumed.reset(TrainerState(cycle=2, sampler=sampler, pending_rollouts=pending))
    # saved with updates 0 and 1 for cycles 2 and 3: trained at updates 2 and 3, both beyond S = 1
    assert resumed.dropped_samples == 8
    taken = run_cycles(resumed, 2, 2)
    assert [(c, v) for c, v, _ in driver.started] == [(2, 20), (3, 20), (4, 30)]  # again, with update 2's weights
    assert [r.cycle - r.policy for r in taken] == [0, 1]


def test_a_reset_refuses_prompts_that_differ_from_the_saved_ones():
    first, _ = pipeline(1)
    run_cycles(first, 0, 1)
    first.complete()
    sampler, pending = first.state()
    other, _ = pipeline(1, rows=[dict(r, prompt=r["prompt"] + " ") for r in ROWS])
    with pytest.raises(RuntimeError, match="does not match the prompts"):
        other.reset(TrainerState(cycle=1, sampler=sampler, pending_rollouts=pending))


def test_a_step_reports_who_waited_and_the_overlap():
    p, _ = pipeline(1)
    p.fill(policy=0, weight_version=0)
    rollout = p.take(0)  # the fake batch: the engines busy 99.5-100
    assert rollout.generated == (99.5, 100.0)
    metrics = p.step_metrics(rollout, learner_version=0, window=(99.0, 101.0), learner_busy=(99.75, 101.0),
                             learner_free_since=99.0)
    assert metrics["time/learner_wait_s"] == 1.0 and metrics["async/learner_waited_samples"] == 4.0
    assert metrics["time/overlap_s"] == 0.25 and metrics["async/overlap"] == 0.125
    metrics = p.step_metrics(rollout, learner_version=0, window=(99.0, 101.0), learner_busy=(100.5, 101.0),
                             learner_free_since=100.5)
    assert metrics["time/learner_wait_s"] == 0.0 and metrics["async/learner_waited_samples"] == 0.0
