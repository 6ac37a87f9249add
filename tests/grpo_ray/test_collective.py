"""The bucketed, versioned broadcast of grpo_ray.collective over real gloo groups (threads as members)."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
import torch

from grpo_ray import collective as C


def _run_group(world: int, timeout_s: float, member, root):
    """Rank 0 runs ``root(group)`` in this thread, ranks 1.. ``member(rank, group)`` in threads; returns their results."""
    store, host, port = C.host_store(world, timeout_s)
    results: dict[int, object] = {}

    def run(rank: int) -> None:
        try:
            results[rank] = member(rank, C.join_group("gloo", rank, world, timeout_s, host=host, port=port))
        except Exception as err:  # noqa: BLE001 - handed to the test
            results[rank] = err

    threads = [threading.Thread(target=run, args=(r,)) for r in range(1, world)]
    for t in threads:
        t.start()
    try:
        results[0] = root(C.join_group("gloo", 0, world, timeout_s, store=store))
    except Exception as err:  # noqa: BLE001
        results[0] = err
    for t in threads:
        t.join()
    return results


WEIGHTS = {
    "a.lora_A": torch.randn(4, 8), "a.lora_B": torch.randn(8, 4), "b.bias": torch.randn(3),
    "steps": torch.arange(5), "c.half": torch.randn(6).to(torch.bfloat16),
}


def test_buckets_hold_one_dtype_and_respect_the_size():
    specs = C.specs_of(WEIGHTS)
    buckets = C.plan_buckets(specs, bucket_bytes=200)
    assert sorted(i for b in buckets for i in b) == list(range(len(specs)))
    for bucket in buckets:
        assert len({specs[i].dtype for i in bucket}) == 1
        assert len(bucket) == 1 or sum(specs[i].nbytes for i in bucket) <= 200
    assert buckets == [[0], [1, 2], [3], [4]]  # 128 B; 128 + 12 B; int64; bfloat16
    assert C.plan_buckets(specs, bucket_bytes=1) == [[i] for i in range(5)]  # a tensor larger than a bucket goes alone


@pytest.mark.parametrize("bucket_bytes", [1, 64, 1 << 20])
def test_every_member_receives_the_exact_tensors(bucket_bytes):
    specs = C.specs_of(WEIGHTS)
    got = _run_group(
        3, 10, lambda rank, g: C.receive(g, specs, 5, bucket_bytes), lambda g: C.send(g, WEIGHTS, 5, bucket_bytes)
    )
    for rank in (1, 2):
        assert set(got[rank]) == set(WEIGHTS)
        assert all(torch.equal(got[rank][k], WEIGHTS[k]) and got[rank][k].dtype == WEIGHTS[k].dtype for k in WEIGHTS)


def test_a_receiver_expecting_another_version_refuses_it():
    specs = C.specs_of(WEIGHTS)
    got = _run_group(2, 5, lambda rank, g: C.receive(g, specs, 4, 64), lambda g: C.send(g, WEIGHTS, 5, 64))
    assert isinstance(got[1], RuntimeError) and "expected version 4" in str(got[1]) and "sent version 5" in str(got[1])


def test_a_stalled_member_makes_the_sender_fail_within_the_timeout():
    specs = C.specs_of(WEIGHTS)

    def stalled(rank, group):
        if rank == 2:
            time.sleep(4)  # joined, then never takes part in the broadcast
            return None
        return C.receive(group, specs, 1, 64)

    took = []

    def send(group):
        started = time.monotonic()
        try:
            C.send(group, WEIGHTS, 1, 64)
        finally:
            took.append(time.monotonic() - started)

    got = _run_group(3, 1.5, stalled, send)
    assert isinstance(got[0], RuntimeError) and "Timed out" in str(got[0])
    assert took[0] < 3.5  # about the 1.5 s timeout (not the stalled member's 4 s, nor 30 minutes)


def test_an_nccl_group_is_built_with_bounded_blocking_waits_and_the_variable_restored(monkeypatch):
    """NCCL's default wait() returns at once and leaves a dead peer to a watchdog that kills the
    process; the sync group is built with TORCH_NCCL_BLOCKING_WAIT set (only while it is built)."""
    import torch.distributed.distributed_c10d as c10d

    seen = []

    class FakeNCCL:
        class Options:
            _timeout = None

        def __init__(self, store, rank, size, options):
            seen.append((os.environ.get(C.BLOCKING_WAIT), rank, size, options._timeout))

    monkeypatch.setattr(c10d, "ProcessGroupNCCL", FakeNCCL, raising=False)
    monkeypatch.delenv(C.BLOCKING_WAIT, raising=False)
    C._nccl_group(None, 1, 3, timedelta(seconds=7))
    assert seen == [("1", 1, 3, timedelta(seconds=7))] and C.BLOCKING_WAIT not in os.environ
    monkeypatch.setenv(C.BLOCKING_WAIT, "0")
    C._nccl_group(None, 0, 3, timedelta(seconds=7))
    assert seen[-1][0] == "1" and os.environ[C.BLOCKING_WAIT] == "0"
