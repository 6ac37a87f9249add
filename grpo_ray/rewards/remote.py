"""Reward functions that live elsewhere: an HTTP endpoint, or a method of a named Ray actor.

Both are ordinary reward functions to the loop (``f(prompts, completions, **columns)``) and
can be named in ``RewardConfig.functions`` as ``"http://host:port/path"`` or
``"actor://namespace/name"``. They declare ``run_inline = True``: the reward pool calls them
on a thread of its own process (they only wait on I/O, and an actor call needs the caller's
Ray connection), bounded by the pool's timeout like any other function.

HTTP protocol: ``POST`` a JSON body ``{"prompts": [...], "completions": [...], "columns":
{name: [...]}}``; the reply is ``{"scores": [float | null, ...]}``, one per completion.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class RemoteRewardError(RuntimeError):
    """A remote reward endpoint failed (after its retries) or answered malformed data."""


@dataclass(frozen=True)
class HttpReward:
    """POST each batch to ``url``; ``retries`` more attempts on connection errors, timeouts and 5xx."""

    url: str
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    run_inline = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"HttpReward url={self.url!r}: give an http:// or https:// URL")
        if not self.timeout_s > 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError("HttpReward: timeout_s must be > 0, retries and backoff_s >= 0")

    @property
    def __name__(self) -> str:
        return self.url

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        body = json.dumps({"prompts": list(prompts), "completions": list(completions), "columns": columns}).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    return _scores(json.loads(reply.read()), len(completions), self.url)
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise RemoteRewardError(f"{self.url} answered HTTP {exc.code}: {exc.read()[:200]!r}") from exc
                error = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                error = exc
        raise RemoteRewardError(f"{self.url} failed {self.retries + 1} times; last error: {error}")


def _scores(reply: Any, n: int, where: str) -> list[float | None]:
    if not isinstance(reply, dict) or not isinstance(reply.get("scores"), list) or len(reply["scores"]) != n:
        raise RemoteRewardError(f"{where} must answer {{'scores': [...]}} with {n} entries, got {str(reply)[:200]}")
    return reply["scores"]


@dataclass
class ActorReward:
    """Call ``method`` of the named Ray actor ``name`` (in ``namespace``; None = the caller's),
    which may live on any node: ``actor.method.remote(prompts, completions, **columns)``."""

    name: str
    namespace: str | None = None
    method: str = "score"
    timeout_s: float = 60.0
    _handle: Any = field(default=None, init=False, repr=False, compare=False)
    run_inline = True

    @classmethod
    def from_uri(cls, uri: str) -> "ActorReward":
        """``actor://namespace/name`` or ``actor://name``."""
        path = uri.removeprefix("actor://").strip("/")
        namespace, _, name = path.rpartition("/")
        if not name or "/" in namespace:
            raise ValueError(f"reward actor {uri!r}: give 'actor://namespace/name' or 'actor://name'")
        return cls(name=name, namespace=namespace or None)

    @property
    def __name__(self) -> str:
        return f"actor://{self.namespace + '/' if self.namespace else ''}{self.name}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}  # handles are looked up again where unpickled

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        import ray  # only this client needs Ray; the rest of grpo_ray.rewards stays Ray-free

        if self._handle is None:
            try:
                self._handle = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError as exc:
                raise RemoteRewardError(f"no Ray actor {self.__name__}: {exc}") from exc
        call = getattr(self._handle, self.method).remote(list(prompts), list(completions), **columns)
        try:
            scores = ray.get(call, timeout=self.timeout_s)
        except Exception:
            self._handle = None  # the actor may have restarted elsewhere: look it up again next time
            raise
        reply = {"scores": list(scores) if isinstance(scores, (list, tuple)) else scores}
        return _scores(reply, len(completions), self.__name__)
