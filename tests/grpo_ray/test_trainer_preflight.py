"""Bad runs fail in the driver with a clear message, before Ray, any actor or any file."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import ray

from grpo_ray.checkpoint import LEARNER_STATE, TRAINER_STATE
from grpo_ray.cli import config_to_dict
from grpo_ray.config import ConfigError
from grpo_ray.rewards import RewardResolutionError
from grpo_ray.startup import preflight
from grpo_ray.trainer import GRPOTrainer
from tests.support.tiny import tiny_config

ROWS = [{"prompt": "1+2="}, {"prompt": "3+4="}]


def test_bad_reward_name_and_bad_model_path_fail_before_ray_starts(checkpoint, tmp_path):
    with pytest.raises(RewardResolutionError, match="reward.functions: reward function 'not_a_reward' is not registered"):
        GRPOTrainer(tiny_config(checkpoint, tmp_path, reward={"functions": ("not_a_reward",)}), ROWS)
    with pytest.raises(ValueError, match="model.name_or_path"):
        GRPOTrainer(tiny_config(tmp_path / "missing", tmp_path), ROWS)
    with pytest.raises(ValueError, match="'prompt'"):
        GRPOTrainer(tiny_config(checkpoint, tmp_path), [{"question": "1+2="}])
    assert not ray.is_initialized()
    assert list(tmp_path.iterdir()) == []


def test_model_path_errors_are_one_line_naming_the_flag_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as missing:
        preflight(tiny_config(tmp_path / "nonexistent", tmp_path / "out"))
    assert str(missing.value) == (
        f"model.name_or_path='{tmp_path}/nonexistent': no such directory; give a checkpoint directory "
        "(one with config.json) or a hub id"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"the directory has no config.json; give the directory save_pretrained wrote$"):
        preflight(tiny_config(tmp_path / "empty", tmp_path / "out"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError) as broken:
        preflight(tiny_config(tmp_path / "broken", tmp_path / "out"))
    assert "\n" not in str(broken.value) and "does not load (a local directory" in str(broken.value)


def test_a_reward_needing_a_column_the_rows_lack_is_named(checkpoint, tmp_path):
    config = tiny_config(checkpoint, tmp_path, reward={"functions": ("tests.support.reward_fns:short_completion", "math")})
    with pytest.raises(ConfigError, match=r"reward function 'math' needs dataset column\(s\) \['answer'\], which the training rows lack"):
        preflight(config, ROWS)
    preflight(config, [{"prompt": "1+2=", "answer": "3"}])


def test_a_second_run_into_the_same_output_dir_is_refused_unless_it_resumes(checkpoint, tmp_path):
    config = tiny_config(checkpoint, tmp_path)
    assert preflight(config, ROWS).resume_from is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.jsonl\): continue it with --run.resume latest"):
        preflight(config, ROWS)
    resuming = tiny_config(checkpoint, tmp_path, run={"resume": "latest"})
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        preflight(resuming, ROWS)
    saved = tmp_path / "checkpoint-2"
    saved.mkdir()
    (saved / LEARNER_STATE).write_bytes(b"")
    (saved / TRAINER_STATE).write_text(json.dumps({"state": {"step": 2}, "config": config_to_dict(config)}))
    assert preflight(resuming, ROWS).resume_from == saved
    other_rank = dataclasses.replace(resuming, lora=dataclasses.replace(resuming.lora, r=8))
    with pytest.raises(ConfigError, match=r"cannot resume from .*checkpoint-2: the config changes lora.r \(checkpoint 4, now 8\)"):
        preflight(other_rank, ROWS)


def test_a_deepspeed_learner_without_deepspeed_is_refused_before_ray_starts(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed raises ImportError
    config = tiny_config(checkpoint, tmp_path / "out", batch={"train_backend": "deepspeed_zero2", "num_processes": 2})
    with pytest.raises(ConfigError, match=r"batch.train_backend='deepspeed_zero2' needs DeepSpeed.*pip install -e '\.\[gpu\]'"):
        GRPOTrainer(config, ROWS)
    assert not ray.is_initialized()


def test_a_4bit_base_without_bitsandbytes_is_refused_before_ray_starts(checkpoint, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"model.load_in_4bit=true needs bitsandbytes.*pip install -e '.\[gpu\]'"):
        GRPOTrainer(tiny_config(checkpoint, tmp_path / "out", model={"load_in_4bit": True}), ROWS)
    assert not ray.is_initialized()
