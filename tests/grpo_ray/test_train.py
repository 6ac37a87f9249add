"""`python -m grpo_ray train` stops at start, with one line naming the cause, on what cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from grpo_ray import startup
from grpo_ray.train import main


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(8)))
    return path


def args(checkpoint, data, out, *extra):
    return ["--model.name_or_path", str(checkpoint), "--data.dataset", str(data), "--data.prompt_column", "question",
            "--data.chat_template", "none", "--data.eval_split", "none", "--reward.functions", "math",
            "--run.output_dir", str(out), *extra]


def startup_error(capsys, argv) -> str:
    out = Path(argv[argv.index("--run.output_dir") + 1])
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert not out.exists()  # stopped before writing anything
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("python -m grpo_ray train: error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err  # one line, the last (after progress bars)
    assert "Traceback" not in err
    assert not ray.is_initialized()  # nothing started
    return errors[0]


def test_malformed_data_file(capsys, checkpoint, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answ\n')
    line = startup_error(capsys, args(checkpoint, bad, tmp_path / "out"))
    assert "data.dataset" in line and str(bad) in line and "cannot be read" in line


def test_missing_data_file(capsys, checkpoint, tmp_path):
    line = startup_error(capsys, args(checkpoint, tmp_path / "nope.jsonl", tmp_path / "out"))
    assert "data.dataset" in line and "no such file" in line


def test_missing_column(capsys, checkpoint, data_file, tmp_path):
    line = startup_error(capsys, args(checkpoint, data_file, tmp_path / "out", "--data.prompt_column", "problem"))
    assert "data.prompt_column='problem'" in line and "columns: question, answer" in line


def test_unknown_model_path(capsys, data_file, tmp_path):
    line = startup_error(capsys, args(tmp_path / "no-model", data_file, tmp_path / "out"))
    assert "model.name_or_path" in line and "no-model" in line and "no such directory" in line


def test_unwritable_output_dir(capsys, checkpoint, data_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = startup_error(capsys, args(checkpoint, data_file, blocker / "out"))
    assert "run.output_dir" in line and "not writable" in line


def test_unknown_reward_function(capsys, checkpoint, data_file, tmp_path):
    line = startup_error(capsys, args(checkpoint, data_file, tmp_path / "out", "--reward.functions", "no_such_reward"))
    assert "reward.functions" in line and "no_such_reward" in line


def test_all_prompts_too_long(capsys, checkpoint, data_file, tmp_path):
    line = startup_error(capsys, args(checkpoint, data_file, tmp_path / "out", "--grpo.max_prompt_length", "2"))
    assert "all 8 training prompts" in line and "grpo.max_prompt_length=2" in line


def test_hub_names_without_hub_access_say_what_to_pass(capsys, monkeypatch, checkpoint, data_file, tmp_path):
    monkeypatch.setattr(startup, "hub_reachable", lambda: False)
    line = startup_error(capsys, args("Qwen/Qwen2.5-1.5B-Instruct-not-cached", data_file, tmp_path / "out"))
    assert "Hub cannot be reached" in line and "--model.name_or_path PATH" in line
    line = startup_error(capsys, args(checkpoint, "openai/gsm8k", tmp_path / "out"))
    assert "Hub cannot be reached" in line and "--data.dataset PATH" in line


def test_default_gsm8k_command_offline_says_tiny_or_local_model(capsys, monkeypatch, tmp_path):
    from recipes import gsm8k

    monkeypatch.setattr(startup, "hub_reachable", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        gsm8k.main(["--run.output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Qwen/Qwen2.5-1.5B-Instruct" in err and "--model.name_or_path" in err and "--tiny" in err
    assert "Traceback" not in err and not ray.is_initialized() and not (tmp_path / "out").exists()
