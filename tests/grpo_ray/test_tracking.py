"""grpo_ray.tracking: console lines, metric sinks, and the metrics log of a resumed run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from grpo_ray import tracking
from grpo_ray.tracking import MetricsLog, console_line, missing_sinks


def test_console_line_shows_each_reward_function_and_accuracy():
    line = console_line(7, {"reward": 1.5, "reward_std": 0.5, "rewards/fmt": 1.0, "rewards/fmt_std": 0.25,
                            "rewards/ans": 0.5, "eval/accuracy": 0.25, "kl": 0.01, "tokens_per_s": 1234.0,
                            "time/generate_s": 2.0, "time/train_s": 1.0})
    assert line == ("step    7 | reward 1.500 | ±0.500 | fmt 1.00±0.25 | ans 0.50 | acc 25.0% | kl 0.0100 | "
                    "1234 tok/s | gen 2.0s | train 1.0s")


def test_a_sink_whose_package_is_missing_is_named_with_its_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "swanlab" else real(name))
    assert missing_sinks(("swanlab",)) == [
        "run.report_to names 'swanlab' but the swanlab package is not installed: pip install swanlab"
    ]
    with pytest.raises(RuntimeError, match="pip install swanlab"):
        MetricsLog(str(tmp_path), ("swanlab",))


def test_a_resumed_log_drops_the_steps_it_will_redo_and_a_torn_last_line(tmp_path):
    log = MetricsLog(str(tmp_path))
    for step in range(1, 6):
        log.write(step, {"loss": float(step)})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a write cut short by kill -9
    log = MetricsLog(str(tmp_path), resume_step=3)
    log.write(4, {"loss": 40.0})
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
