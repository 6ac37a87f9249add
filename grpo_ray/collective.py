"""Tensors over a process group of their own: a bucketed, versioned broadcast with a deadline.

Pure torch (no Ray, no model). The weight-sync group (learner rank 0 + every rollout engine)
is not the learner's default ``torch.distributed`` group, so it is built directly on a
``TCPStore``, the way vLLM's stateless groups are: rank 0 hosts the store
(:func:`host_store`), every member joins with :func:`join_group`. Every operation is bounded
by the group's timeout: a member that died or stalls makes the others raise within
``timeout_s`` instead of waiting for NCCL's 30-minute default.

One broadcast = a header ``[version, number of tensors]`` then the tensors, packed into flat
buffers of at most ``bucket_bytes`` (one dtype per bucket). A receiver checks the header
against the version it was told to expect and hands back the whole dict only once every
bucket has arrived, so an engine never loads a mix of two versions.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.distributed as dist


#: Makes an NCCL group's ``wait()`` block and time out (:func:`_nccl_group`).
BLOCKING_WAIT = "TORCH_NCCL_BLOCKING_WAIT"


class TensorSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return int(torch.Size(self.shape).numel()) * self.dtype.itemsize


def specs_of(tensors: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def plan_buckets(specs: list[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Consecutive tensors of one dtype, each bucket at most ``bucket_bytes`` (a larger tensor goes alone)."""
    return [list(bucket) for bucket in _plan(tuple(specs), bucket_bytes)]


@lru_cache(maxsize=8)
def _plan(specs: tuple[TensorSpec, ...], bucket_bytes: int) -> tuple[tuple[int, ...], ...]:
    """:func:`plan_buckets`, planned once per run's tensors (every push sends the same ones)."""
    buckets: list[list[int]] = []
    size = 0
    for i, spec in enumerate(specs):
        current = buckets[-1] if buckets else None
        if current is None or specs[current[0]].dtype != spec.dtype or size + spec.nbytes > bucket_bytes:
            buckets.append([i])
            size = spec.nbytes
        else:
            current.append(i)
            size += spec.nbytes
    return tuple(tuple(bucket) for bucket in buckets)


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unpack(flat: torch.Tensor, specs: list[TensorSpec]) -> list[torch.Tensor]:
    """The tensors packed in ``flat``, as views of it (no copy: a received bucket is theirs alone)."""
    sizes = [int(torch.Size(s.shape).numel()) for s in specs]
    return [part.view(s.shape) for part, s in zip(flat.split(sizes), specs)]


def node_address() -> str:
    """An address of this machine the other members can reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outward interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def host_store(world_size: int, timeout_s: float) -> tuple[dist.TCPStore, str, int]:
    """Rank 0's store on a free port; returns it with the (host, port) the others join."""
    store = dist.TCPStore(
        "0.0.0.0", 0, world_size, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )
    return store, node_address(), store.port


def join_group(
    backend: str, rank: int, world_size: int, timeout_s: float, *, store: dist.Store | None = None,
    host: str = "", port: int = 0, device: torch.device | None = None,
) -> dist.ProcessGroup:
    """Join (rank 0: with the store it hosts) the group; returns after every member joined, or raises.

    NCCL connects lazily, at a group's first collective, so every member takes part in one
    one-element broadcast here (on ``device``): joining then means connected, for both backends.
    """
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    store = dist.PrefixStore("grpo_ray_sync", store)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
    elif backend == "nccl":
        torch.cuda.set_device(device)
        group = _nccl_group(store, rank, world_size, timeout)
    else:
        raise ValueError(f"unknown backend {backend!r}: gloo or nccl")
    _broadcast(group, torch.zeros(1, device=device if backend == "nccl" else "cpu"))
    return group


def _nccl_group(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> dist.ProcessGroup:
    """An NCCL group whose ``wait()`` blocks the calling thread and raises once ``timeout`` passed.

    By default NCCL's ``wait()`` only orders the CUDA streams and returns at once: a sender
    would report success while its broadcast still waits for a dead peer, and the watchdog
    thread would later kill the whole process (the learner, with the run's state). With
    ``TORCH_NCCL_BLOCKING_WAIT`` (read when the group is built, so set only for this one) every
    wait is bounded by ``timeout`` and raises ``DistBackendError``, after aborting the communicator.
    """
    from torch.distributed.distributed_c10d import ProcessGroupNCCL

    options = ProcessGroupNCCL.Options()
    options._timeout = timeout
    before = os.environ.get(BLOCKING_WAIT)
    os.environ[BLOCKING_WAIT] = "1"
    try:
        return ProcessGroupNCCL(store, rank, world_size, options)
    finally:
        if before is None:
            del os.environ[BLOCKING_WAIT]
        else:
            os.environ[BLOCKING_WAIT] = before


def _broadcast(group: dist.ProcessGroup, tensor: torch.Tensor) -> None:
    group.broadcast(tensor, 0).wait()


def send(group: dist.ProcessGroup, tensors: dict[str, torch.Tensor], version: int, bucket_bytes: int) -> None:
    """Rank 0: broadcast ``tensors`` (in the order of their specs) as ``version``."""
    values = list(tensors.values())
    device = values[0].device if values else torch.device("cpu")
    _broadcast(group, torch.tensor([version, len(values)], dtype=torch.int64, device=device))
    for bucket in plan_buckets(specs_of(tensors), bucket_bytes):
        _broadcast(group, pack([values[i] for i in bucket]))


def receive(
    group: dist.ProcessGroup, specs: list[TensorSpec], version: int, bucket_bytes: int,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Any other rank: the tensors of broadcast ``version``; raises if the sender sent another."""
    device = device or torch.device("cpu")
    header = torch.zeros(2, dtype=torch.int64, device=device)
    _broadcast(group, header)
    sent, count = (int(x) for x in header.tolist())
    if sent != version or count != len(specs):
        raise RuntimeError(
            f"weight broadcast mismatch: expected version {version} with {len(specs)} tensors, "
            f"the learner sent version {sent} with {count}"
        )
    out: dict[str, torch.Tensor] = {}
    for bucket in plan_buckets(specs, bucket_bytes):
        part = [specs[i] for i in bucket]
        flat = torch.empty(sum(int(torch.Size(s.shape).numel()) for s in part), dtype=part[0].dtype, device=device)
        _broadcast(group, flat)
        out.update({s.name: t for s, t in zip(part, unpack(flat, part))})
    return out
