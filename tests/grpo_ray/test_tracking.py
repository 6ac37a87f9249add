"""Console lines and metric sinks."""

from __future__ import annotations

import importlib.util

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
