"""grpo_ray.startup owns start-up: every check once, in one order, before Ray; the trainer takes
what was checked; data errors and the eval's rows as a new user meets them."""

from __future__ import annotations

import json

import pytest
import ray

from grpo_ray import startup
from grpo_ray.cli import parse_config
from grpo_ray.config import ConfigError
from grpo_ray.startup import StartupError, load_data, preflight, prepare

ORDER = [
    "check_writable", "check_judge", "check_reward_names", "check_packages", "check_output_dir", "check_model",
    "load_data", "install_chat_template", "check_reward_columns",
]


def data_file(path, rows=10):
    path.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(rows)))
    return path


def config_for(checkpoint, data, out, *extra):
    return parse_config([
        "--model.name_or_path", str(checkpoint), "--data.dataset", str(data), "--data.prompt_column", "question",
        "--data.chat_template", "none", "--reward.functions", "math", "--run.output_dir", str(out), *extra,
    ])


def test_every_check_runs_once_in_one_order_before_ray(checkpoint, tmp_path, monkeypatch):
    calls = []
    for name in ORDER:
        real = getattr(startup, name)
        monkeypatch.setattr(startup, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    ready = prepare(config_for(checkpoint, data_file(tmp_path / "d.jsonl"), tmp_path / "out"))
    assert calls == ORDER  # the model path once (it was checked twice), everything before Ray
    assert not ray.is_initialized() and not (tmp_path / "out").exists()
    assert ready.checked.config == ready.config and ready.checked.resume_from is None


def test_the_trainer_takes_what_was_checked_and_checks_nothing_again(checkpoint, tmp_path, monkeypatch):
    from grpo_ray import trainer

    class Started(Exception):
        pass

    def no_ray(config):
        raise Started

    config = config_for(checkpoint, data_file(tmp_path / "d.jsonl"), tmp_path / "out")
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    checked = preflight(config, rows)
    monkeypatch.setattr(trainer, "connect", no_ray)
    monkeypatch.setattr(trainer, "preflight", lambda *a, **k: pytest.fail("checked twice"))
    with pytest.raises(Started):  # went straight on to Ray
        trainer.GRPOTrainer(config, rows, checked=checked)
    with pytest.raises(ValueError, match="`checked` was made for another config"):
        trainer.GRPOTrainer(config_for(checkpoint, tmp_path / "d.jsonl", tmp_path / "other"), rows, checked=checked)


def test_a_malformed_jsonl_line_is_named_by_its_number_once(checkpoint, tmp_path, capsys):
    from grpo_ray.train import main

    bad = data_file(tmp_path / "bad.jsonl", rows=6)
    lines = bad.read_text().splitlines()
    lines[3] = lines[3][:-5]  # line 4 cut short
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        main(["--model.name_or_path", str(checkpoint), "--data.dataset", str(bad), "--data.prompt_column", "question",
              "--reward.functions", "math", "--run.output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # the datasets library's own message no longer comes first
    assert err[0].startswith("python -m grpo_ray train: error: data.dataset=") and "line 4: " in err[0], err


def test_a_missing_resume_path_says_it_is_missing(checkpoint, tmp_path):
    config = config_for(checkpoint, data_file(tmp_path / "d.jsonl"), tmp_path / "out", "--run.resume", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"run.resume='.*gone' is invalid: no such directory"):
        preflight(config)


def test_a_single_file_dataset_holds_out_its_eval_rows_or_refuses(checkpoint, tmp_path):
    path = data_file(tmp_path / "d.jsonl", rows=20)
    data = load_data(config_for(checkpoint, path, tmp_path / "out"))  # data.eval_split='test' by default
    train, held = [r["question"] for r in data.train], [r["question"] for r in data.eval]
    assert len(held) == 2 and len(train) == 18 and not set(train) & set(held)  # 10% out, disjoint
    assert "2 of the file's 20 rows held out of training for the eval" in data.note
    again = load_data(config_for(checkpoint, path, tmp_path / "out"))
    assert [r["question"] for r in again.eval] == held  # seeded by run.seed
    with pytest.raises(StartupError, match=r"is one file, which has no 'test' split: the eval would score the training rows"):
        load_data(config_for(checkpoint, path, tmp_path / "out", "--data.eval_holdout", "0"))
    assert load_data(config_for(checkpoint, path, tmp_path / "out", "--data.eval_split", "none")).eval is None
