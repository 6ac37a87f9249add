"""Prompt datasets: loading, checking, and the seeded order in which prompts are drawn.

A dataset row is a dict with a ``prompt`` (a string, or chat messages) and any other columns,
which reach the reward functions as keyword arguments (TRL's convention).
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Sequence


def load_prompt_dataset(path_or_name: str, split: str = "train", **kwargs: Any) -> Any:
    """A ``datasets.Dataset`` from a local JSON/JSONL/CSV/Parquet file or a dataset name.

    Local files go through ``load_dataset("json", data_files=...)`` and friends, so the same
    code reads a hub dataset where a hub is reachable.
    """
    from datasets import load_dataset

    suffix = path_or_name.rsplit(".", 1)[-1].lower()
    builder = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
    if builder is not None:
        return load_dataset(builder, data_files={split: path_or_name}, split=split, **kwargs)
    return load_dataset(path_or_name, split=split, **kwargs)


def check_rows(rows: Sequence[dict[str, Any]]) -> None:
    """Fail early, naming the row, when a dataset cannot feed the loop."""
    if len(rows) == 0:
        raise ValueError("the training dataset is empty")
    for i in range(min(len(rows), 1000)):  # index, not slice: a datasets.Dataset slices to columns
        row = rows[i]
        if "prompt" not in row:
            raise ValueError(f"dataset row {i} has no 'prompt' column (columns: {sorted(row)}); map your data to one")
        prompt = row["prompt"]
        if not isinstance(prompt, (str, list)) or not prompt:
            raise ValueError(f"dataset row {i}: 'prompt' must be a non-empty string or a list of chat messages")


class PromptSampler:
    """Draws prompts without replacement in a seeded order, reshuffling at each epoch."""

    def __init__(self, rows: Sequence[dict[str, Any]], seed: int):
        check_rows(rows)
        self.rows = rows
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.epoch = -1

    def next(self, count: int) -> list[dict[str, Any]]:
        picked: list[dict[str, Any]] = []
        while len(picked) < count:
            if not self.order:
                self.epoch += 1
                self.order = list(range(len(self.rows)))
                self.rng.shuffle(self.order)
            picked.append(dict(self.rows[self.order.pop()]))
        return picked

    def state(self) -> dict[str, Any]:
        """Position and RNG, JSON-ready: ``load_state`` of it continues the same sequence."""
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "order": list(self.order), "rng": [version, list(internal), gauss]}

    def load_state(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])
        self.epoch = state["epoch"]


def columns_of(rows: Iterable[dict[str, Any]], repeat: int) -> dict[str, list[Any]]:
    """Every column but ``prompt``, each value repeated ``repeat`` times (once per completion)."""
    rows = list(rows)
    names = [k for k in rows[0] if k != "prompt"] if rows else []
    return {name: [row.get(name) for row in rows for _ in range(repeat)] for name in names}
