"""The learner ranks of a data-parallel run, seen by the driver as one learner.

``batch.num_processes = N`` places N :class:`~actors.learner.Learner` actors (ranks 0..N-1).
The driver's loop calls ``learner.<method>.remote(...)`` the same way for one learner or
many: training and resuming fan out to every rank (the returned ref resolves, once every rank
finished, to rank 0's answer; a rank's failure fails it); everything else (weights, the
stale-weight probe, saving, the sync group) goes to rank 0, which holds the same weights as
every rank, except what the train backend needs every rank for (``every_rank``: DeepSpeed's
checkpoint, and under ZeRO-3 every read of the sharded weights).
"""

from __future__ import annotations

from functools import cache
from typing import Any

#: Methods every rank runs; the rest go to rank 0.
FAN_OUT = frozenset({"train_generation", "load_state"})


def _first(*answers: Any) -> Any:
    return answers[0]


@cache
def _first_task() -> Any:
    """``_first`` as a Ray task (made once): it runs when every rank answered, and fails if one failed."""
    import ray

    return ray.remote(num_cpus=0)(_first)


class _FanOut:
    def __init__(self, methods: list[Any]):
        self.methods = methods

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        import ray

        args = tuple(ray.put(a) for a in args)  # one copy in the object store, read by every rank
        refs = [m.remote(*args, **kwargs) for m in self.methods]
        return _first_task().remote(*refs)


class LearnerGroup:
    def __init__(self, ranks: list[Any], every_rank: frozenset[str] = frozenset()):
        self.ranks = ranks
        self.fan_out = FAN_OUT | every_rank

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.fan_out:
            return _FanOut([getattr(r, name) for r in self.ranks])
        return getattr(self.ranks[0], name)

    def form(self) -> None:
        """Make the ranks one torch.distributed group (rank 0 hosts the rendezvous)."""
        import ray

        from actors.learner import LEARNER_GROUP_TIMEOUT_S

        host, port = ray.get(self.ranks[0].host_group.remote(len(self.ranks), LEARNER_GROUP_TIMEOUT_S))
        ray.get([r.join_group.remote(host, port) for r in self.ranks])
