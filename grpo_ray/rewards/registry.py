"""Name -> reward function registry, and resolution of config strings.

A reward function follows TRL's contract (``GRPOTrainer(reward_funcs=[...])``)::

    f(prompts, completions, **dataset_columns) -> list[float | None]

one score per completion, ``None`` meaning "does not apply" (skipped in the weighted sum).
``completions`` are strings, or chat message lists (``[{"role": "assistant", "content": ...}]``).
``async def`` functions are accepted too.

``RewardConfig.functions`` names functions in four ways (see :func:`resolve`):

* a registered name: ``"math"``, ``"code"``, ``"gsm8k_correctness"``, ...;
* an import path ``"package.module:attribute"`` (any callable attribute, e.g. a bound method);
* ``"http://host:port/path"`` (or https): an HTTP endpoint, :class:`grpo_ray.rewards.remote.HttpReward`;
* ``"actor://namespace/name"`` or ``"actor://name"``: a named Ray actor,
  :class:`grpo_ray.rewards.remote.ActorReward`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from grpo_ray.config import ConfigError

RewardFn = Callable[..., Any]

_REGISTRY: dict[str, RewardFn] = {}

#: Modules whose import registers the built-in functions.
_BUILTIN_MODULES = (
    "grpo_ray.rewards.gsm8k",
    "grpo_ray.rewards.qwen3",
    "grpo_ray.rewards.math",
    "grpo_ray.rewards.code",
)


class RewardResolutionError(ConfigError):
    """A ``RewardConfig.functions`` entry that names no usable reward function."""


class RewardContractError(ValueError):
    """A reward function returned something other than one number (or None) per completion."""


def register(name: str, fn: RewardFn) -> RewardFn:
    """Register ``fn`` under ``name``; a name may be bound once (re-binding the same object is a no-op)."""
    if not callable(fn):
        raise TypeError(f"reward {name!r}: {fn!r} is not callable")
    if _REGISTRY.get(name, fn) is not fn:
        raise ValueError(f"reward name {name!r} is already registered to {_REGISTRY[name]!r}")
    _REGISTRY[name] = fn
    return fn


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def registered_names() -> list[str]:
    """Every registered reward name, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def resolve(spec: str) -> RewardFn:
    """The reward function a config string names; raises :class:`RewardResolutionError` naming it."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardResolutionError(f"reward function {spec!r}: give a registered name or 'module:function'")
    spec = spec.strip()
    if spec.startswith(("http://", "https://", "actor://")):
        from grpo_ray.rewards.remote import ActorReward, HttpReward

        try:
            return ActorReward.from_uri(spec) if spec.startswith("actor://") else HttpReward(spec)
        except ValueError as exc:
            raise RewardResolutionError(str(exc)) from exc
    if ":" in spec:
        return _import(spec)
    _load_builtins()
    if spec not in _REGISTRY:
        close = difflib.get_close_matches(spec, list(_REGISTRY), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RewardResolutionError(
            f"reward function {spec!r} is not registered; {hint}registered names: {', '.join(sorted(_REGISTRY))}; "
            "or give an import path 'package.module:function', 'http://host:port/path' or 'actor://namespace/name'"
        )
    return _REGISTRY[spec]


def _import(spec: str) -> RewardFn:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise RewardResolutionError(f"reward function {spec!r}: write an import path as 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardResolutionError(f"reward function {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RewardResolutionError(f"reward function {spec!r}: {obj!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardResolutionError(f"reward function {spec!r}: {obj!r} is not callable")
    return obj


def required_columns(fn: RewardFn) -> list[str]:
    """Dataset columns ``fn`` cannot run without: its named parameters other than ``prompts`` and
    ``completions`` that have no default (``math_reward(prompts, completions, answer, **kw)`` -> answer)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: nothing to check
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name for p in params
        if p.kind in named and p.default is inspect.Parameter.empty and p.name not in ("prompts", "completions")
    ]


def completion_text(completion: Any) -> str:
    """The text of one completion: the string itself, or the last message's ``content``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        return content if isinstance(content, str) else ""
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def prompt_text(prompt: Any) -> str:
    """The text of one prompt: the string itself, or the last message's ``content`` (the question)."""
    return completion_text(prompt)
