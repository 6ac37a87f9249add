"""grpo_ray.cli: YAML file <- command-line overrides, --help, and the errors a user sees."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpo_ray.cli import config_from_dict, config_to_dict, knob_table_markdown, main, parse_config, user_errors
from grpo_ray.config import SECTIONS, ConfigError, GRPOConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def fails(capsys, argv):
    """parse_config exits through argparse (status 2); returns what it printed on stderr."""
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_no_arguments_gives_the_defaults():
    assert parse_config([]) == TrainConfig()


def test_yaml_then_flags_override(tmp_path):
    path = write(
        tmp_path,
        "grpo:\n  beta: 0.04\n  loss_type: bnpo\n  epsilon_high: 0.28\n"
        "reward:\n  functions: [a, b]\n"
        "optim:\n  learning_rate: 1e-5\n",  # YAML 1.1 reads 1e-5 as a string; it must still be a float
    )
    config = parse_config(["--config", path, "--grpo.beta", "0.1", "--grpo.reward_weights", "1,0.5"])
    assert config.grpo.beta == 0.1  # flag beats file
    assert config.grpo.loss_type == "bnpo"  # file beats default
    assert config.grpo.epsilon_high == 0.28
    assert config.grpo.reward_weights == (1.0, 0.5)
    assert config.reward.functions == ("a", "b")
    assert config.optim.learning_rate == 1e-5
    assert config.grpo.epsilon == 0.2  # untouched default


@pytest.mark.parametrize(
    "argv, check",
    [
        (["--grpo.delta", "none"], lambda c: c.grpo.delta is None),
        (["--grpo.delta", "1.5"], lambda c: c.grpo.delta == 1.5),
        (["--grpo.epsilon_high", "null"], lambda c: c.grpo.epsilon_high is None),
        (["--grpo.beta", "0"], lambda c: c.grpo.beta == 0.0 and isinstance(c.grpo.beta, float)),
        (["--optim.learning_rate", "3e-6"], lambda c: c.optim.learning_rate == 3e-6),
        (["--grpo.scale_rewards", "false"], lambda c: c.grpo.scale_rewards == "none"),
        (["--grpo.scale_rewards", "true"], lambda c: c.grpo.scale_rewards == "group"),
        (["--grpo.scale_rewards", "batch"], lambda c: c.grpo.scale_rewards == "batch"),
        (["--lora.enabled", "false"], lambda c: c.lora.enabled is False),
        (["--lora.target_modules", "[q_proj, v_proj]"], lambda c: c.lora.target_modules == ("q_proj", "v_proj")),
        (["--reward.functions", "a"], lambda c: c.reward.functions == ("a",)),
        (["--run.report_to", ""], lambda c: c.run.report_to == ()),
        (["--generation.top_k", "50"], lambda c: c.generation.top_k == 50),
        (["--model.name_or_path", "/models/tiny"], lambda c: c.model.name_or_path == "/models/tiny"),
    ],
)
def test_flag_values_are_yaml_scalars(argv, check):
    assert check(parse_config(argv))


def test_unknown_flag(capsys):
    err = fails(capsys, ["--grpo.epsilo", "0.1"])
    assert "unrecognized arguments: --grpo.epsilo 0.1; did you mean --grpo.epsilon?" in err


def test_unknown_yaml_key_suggests_the_field(tmp_path, capsys):
    err = fails(capsys, ["--config", write(tmp_path, "grpo:\n  epsilom: 0.1\n")])
    assert "unknown config key" in err and "'grpo'" in err and "did you mean 'epsilon'?" in err


def test_unknown_yaml_section_suggests_the_section(tmp_path, capsys):
    err = fails(capsys, ["--config", write(tmp_path, "gpro:\n  beta: 0.1\n")])
    assert "section 'gpro'" in err and "did you mean 'grpo'?" in err


def test_yaml_not_a_mapping(tmp_path, capsys):
    assert "must be a mapping" in fails(capsys, ["--config", write(tmp_path, "- beta\n")])
    assert "section 'grpo' must be a mapping" in fails(capsys, ["--config", write(tmp_path, "grpo: 3\n")])


def test_empty_yaml_is_the_defaults(tmp_path):
    assert parse_config(["--config", write(tmp_path, "")]) == TrainConfig()


def test_malformed_yaml_file_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    path = write(tmp_path, "grpo:\n  beta: [1,\nrun: {}\n")
    err = fails(capsys, ["--config", path])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # the error alone (no usage block)
    assert f"error: --config {path} is not valid YAML at line 4, column 1" in err
    assert "(while parsing a flow sequence at line 2, column 9); fix the file" in err


def test_malformed_list_flag_is_one_line_naming_the_flag(capsys):
    err = fails(capsys, ["--grpo.reward_weights", "[1,"])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "error: --grpo.reward_weights '[1,' is not valid YAML" in err
    assert "write a list as [1, 2] or 1,2" in err


def test_flag_values_that_yaml_reads_as_falsy_stay_what_they_are():
    config = parse_config(["--grpo.beta", "0", "--lora.enabled", "false", "--grpo.delta", "null"])
    assert (config.grpo.beta, config.lora.enabled, config.grpo.delta) == (0.0, False, None)


def test_user_errors_turn_a_config_error_into_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        with user_errors("prog"):
            raise ConfigError("model.name_or_path='/x': no such directory; give a checkpoint directory")
    assert info.value.code == 2
    assert capsys.readouterr().err == "prog: error: model.name_or_path='/x': no such directory; give a checkpoint directory\n"


def test_yaml_file_not_found(tmp_path, capsys):
    err = fails(capsys, ["--config", str(tmp_path / "missing.yaml")])
    assert "missing.yaml: no such file" in err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--grpo.num_generations", "abc"], ["grpo.num_generations='abc'", "expected an int"]),
        (["--grpo.num_generations", "2.5"], ["grpo.num_generations=2.5", "expected an int"]),
        (["--grpo.beta", "lots"], ["grpo.beta='lots'", "expected a float"]),
        (["--lora.enabled", "maybe"], ["lora.enabled='maybe'", "expected a bool"]),
        (["--grpo.num_iterations", "null"], ["grpo.num_iterations=None", "needs a value"]),
        (["--grpo.num_iterations", "none"], ["grpo.num_iterations='none'", "expected an int"]),
        (["--grpo.reward_weights", "1,x"], ["grpo.reward_weights='x'", "expected a float"]),
        (["--grpo.scale_rewards", "3"], ["grpo.scale_rewards=3", "choose one of"]),
        (["--grpo.epsilon", "-0.2"], ["grpo.epsilon=-0.2", "> 0"]),
        (["--grpo.loss_type", "ppo"], ["grpo.loss_type='ppo'", "'dapo'"]),
        (["--batch.per_device_train_batch_size", "12"], ["grpo.num_generations=8", "divisible"]),
    ],
)
def test_bad_values_name_the_field(capsys, argv, needles):
    err = fails(capsys, argv)
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_help_lists_every_field_with_help_and_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        parse_config(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    base = TrainConfig()
    count = 0
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = getattr(getattr(base, section), f.name)
            expected = " ".join(f"{f.metadata['help']} (default: {default!r})".split())
            assert f"--{section}.{f.name} VALUE" in out
            assert expected in out, f"--{section}.{f.name}: {expected!r} missing from --help"
            count += 1
    assert count > 40


def test_help_shows_the_base_defaults(capsys):
    base = TrainConfig(grpo=GRPOConfig(beta=0.04))
    with pytest.raises(SystemExit):
        parse_config(["--help"], base=base)
    assert "(default: 0.04)" in capsys.readouterr().out


def test_print_config_round_trips(tmp_path, capsys):
    argv = ["--grpo.beta", "0.04", "--grpo.reward_weights", "[2, 1]", "--reward.functions", "a,b", "--grpo.delta", "1.5"]
    with pytest.raises(SystemExit) as info:
        parse_config(argv + ["--print-config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    config = parse_config(argv)
    assert config_from_dict(yaml.safe_load(printed)) == config
    assert parse_config(["--config", write(tmp_path, printed)]) == config
    assert yaml.safe_load(printed) == config_to_dict(config)


def test_config_from_dict_errors_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        config_from_dict({"grpo": {"bta": 1}})


def test_main_prints_the_knob_table(capsys):
    main(["--knob-table"])
    assert capsys.readouterr().out == knob_table_markdown() + "\n"


def test_main_prints_the_resolved_config(capsys):
    main(["--grpo.beta", "0.5"])
    assert yaml.safe_load(capsys.readouterr().out)["grpo"]["beta"] == 0.5


def test_python_m_knob_table():
    out = subprocess.run(
        [sys.executable, "-m", "grpo_ray.cli", "--knob-table"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out == knob_table_markdown() + "\n"


def test_knob_table_has_every_field():
    table = knob_table_markdown()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"| `{section}.{f.name}` |" in table
    assert "| `grpo.loss_type` | `'dapo'` |" in table
    assert "| `grpo.delta` | `None` |" in table
