"""The arith recipe, shortened for CI: with a fixed seed, GRPO must raise accuracy and reward."""

from __future__ import annotations

import json

import ray

from recipes.arith import exact_sum_reward, main


def test_exact_sum_reward():
    assert exact_sum_reward(["1+2="] * 3, ["3", " 3\n", "4"], answer=["3", "3", "3"]) == [1.0, 1.0, 0.0]


def test_short_grpo_phase_raises_accuracy_and_reward(tmp_path):
    out = tmp_path / "arith"
    try:
        summary = main(["--run.max_steps", "400", "--run.output_dir", str(out), "--run.logging_steps", "1"])
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["eval/accuracy"] == summary["accuracy_before"]  # pre-GRPO eval
    steps = records[1:]
    assert [r["step"] for r in steps] == list(range(1, 401))
    assert steps[-1]["eval/accuracy"] == summary["accuracy_after"]
    first, last = steps[:50], steps[-50:]
    mean = lambda rows: sum(r["reward"] for r in rows) / len(rows)  # noqa: E731
    assert mean(last) > mean(first) + 0.1, (mean(first), mean(last))
    assert summary["accuracy_after"] > summary["accuracy_before"] + 0.1, summary
    assert (out / "final" / "model.safetensors").is_file()
