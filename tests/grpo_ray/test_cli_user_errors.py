"""What a new user types and reads: negative numbers, "did you mean", batch fixes that are
accepted, recipe --help, and one error line with one prefix style from every entry point."""

from __future__ import annotations

import re

import pytest

from grpo_ray.cli import parse_config, user_errors
from grpo_ray.config import ConfigError


def error_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, prog="prog")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage block
    return err.strip()


def test_negative_numbers_are_values_not_flags(capsys):
    config = parse_config(["--reward.penalty", "-1", "--grpo.reward_weights", "-0.5,2", "--optim.adam_beta1", "0.9"])
    assert config.reward.penalty == -1.0 and config.grpo.reward_weights == (-0.5, 2.0)
    assert parse_config(["--reward.penalty", "-1e-3"]).reward.penalty == -0.001
    err = error_of(capsys, ["--optim.learning_rate", "-1e-3"])  # argparse read -1e-3 as a flag: "expected one argument"
    assert err == "prog: error: optim.learning_rate=-0.001 is invalid: set a finite number > 0"


def test_a_misspelled_flag_gets_a_did_you_mean(capsys):
    err = error_of(capsys, ["--optim.learnig_rate", "1e-4"])
    assert err == "prog: error: unrecognized arguments: --optim.learnig_rate 1e-4; did you mean --optim.learning_rate?"


@pytest.mark.parametrize(
    "argv",
    [
        ["--grpo.num_generations", "3", "--batch.per_device_train_batch_size", "8", "--batch.steps_per_generation", "1"],
        ["--grpo.num_generations", "8", "--batch.per_device_train_batch_size", "8", "--batch.steps_per_generation", "1"],
        ["--grpo.num_generations", "6", "--batch.per_device_train_batch_size", "4", "--batch.steps_per_generation", "2"],
        ["--grpo.num_generations", "5", "--batch.per_device_train_batch_size", "16"],
    ],
)
def test_every_suggested_batch_fix_is_accepted(capsys, argv):
    err = error_of(capsys, argv)
    fixes = re.findall(r"(?:set |or )(\w+\.\w+)=(\d+)", err)
    assert len(fixes) >= 2, err
    for knob, value in fixes:
        fixed = parse_config([*argv, f"--{knob}", value])  # no error: the suggestion is itself valid
        section, name = knob.split(".")
        assert getattr(getattr(fixed, section), name) == int(value)


@pytest.mark.parametrize("recipe", ["recipes.gsm8k", "recipes.arith"])
def test_recipe_help_names_the_command_and_lists_its_flags(recipe, capsys, monkeypatch):
    import importlib

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        importlib.import_module(recipe).main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {recipe} ")
    if recipe == "recipes.gsm8k":
        for flag in ("--tiny", "--reward-set", "--eval-limit"):
            assert f"\n  {flag} " in out, flag


def test_tiny_help_shows_the_tiny_defaults(capsys, monkeypatch):
    from recipes import gsm8k

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        gsm8k.main(["--tiny", "--help"])
    assert "(default: 'outputs/gsm8k-tiny')" in capsys.readouterr().out


@pytest.mark.parametrize("module, prog", [("recipes.gsm8k", "python -m recipes.gsm8k"),
                                          ("recipes.arith", "python -m recipes.arith"),
                                          ("grpo_ray.train", "python -m grpo_ray train")])
def test_every_entry_point_errors_with_one_prefixed_line(module, prog, capsys):
    import importlib

    main = importlib.import_module(module).main
    for argv in (["--grpo.betaa", "0.1"], ["--grpo.beta", "-1"], ["--config", "/nonexistent.yaml"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"{prog}: error: "), err


def test_a_run_failure_is_one_line_with_the_traceback_in_a_log(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        with user_errors("prog", tmp_path):
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise RuntimeError("an actor failed after step 3: RewardContractError: bad scores\nmore") from inner
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"prog: error: an actor failed after step 3: RewardContractError: bad scores; full traceback in {tmp_path / 'error.log'}\n"
    log = (tmp_path / "error.log").read_text()
    assert "Traceback" in log and "KeyError: 'inner'" in log and "RuntimeError" in log


def test_a_config_error_and_ctrl_c_are_one_line_each(capsys):
    with pytest.raises(SystemExit) as info:
        with user_errors("prog"):
            raise ConfigError("x.y=1 is invalid")
    assert info.value.code == 2 and capsys.readouterr().err == "prog: error: x.y=1 is invalid\n"
    with pytest.raises(SystemExit) as info:
        with user_errors("prog"):
            raise KeyboardInterrupt
    assert info.value.code == 130
    assert capsys.readouterr().err.startswith("prog: interrupted during ")
