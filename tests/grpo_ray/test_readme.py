"""README.md's knob table is generated from the config dataclasses and must be current."""

from pathlib import Path

from grpo_ray.cli import knob_table_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- knobs:start -->", "<!-- knobs:end -->"


def test_readme_knob_table_is_current():
    text = README.read_text()
    assert "## Configuration knobs" in text
    assert text.count(START) == 1 and text.count(END) == 1
    section = text.split("## Configuration knobs", 1)[1]
    assert START in section, "the knob table belongs in the 'Configuration knobs' section"
    table = text.split(START, 1)[1].split(END, 1)[0].strip("\n")
    assert table == knob_table_markdown(), (
        "README.md's knob table is stale: replace the text between the knobs markers with the "
        "output of `python -m grpo_ray.cli --knob-table`"
    )


# -- every snippet runs as written ------------------------------------------------------------

import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S)


def snippets() -> list[tuple[str | None, str, str]]:
    """(reason it is not run or None, language, code) of every bash/python block, in order."""
    return [(m["why"], m["lang"], m["code"]) for m in BLOCK.finditer(README.read_text())]


def test_snippets_left_out_say_why_and_are_few():
    skipped = [why for why, _, _ in snippets() if why is not None]
    assert all(why.strip() for why in skipped)
    assert len(skipped) <= 6, skipped  # install + suite, GPU, the arith recipe and its resume, the two cluster commands
    from tests.support.tiny import GSM8K_TINY

    assert [code.strip() for why, _, code in snippets() if why is None][0] == GSM8K_TINY  # gsm8k_tiny_run is the first
    assert len(snippets()) - len(skipped) >= 4  # tiny GSM8K, plot, own data, library use


@pytest.mark.slow
def test_every_readme_snippet_runs_as_written(gsm8k_tiny_run):
    """In order, in one fresh directory, as a new user would (later snippets use earlier outputs).
    The quick start's command is the session's ``gsm8k_tiny_run`` (tests/conftest.py): the same
    command in a fresh directory, run once for this test and the recipe's."""
    from tests.support.tiny import GSM8K_TINY

    tmp_path, _ = gsm8k_tiny_run  # it ran (and succeeded) there, the directory's first command
    root = str(README.parent)
    env = os.environ | {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for why, lang, code in snippets():
        if why is not None or code.strip() == GSM8K_TINY:
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README snippet failed:\n{code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert (tmp_path / "outputs" / "gsm8k-tiny" / "metrics.png").is_file()
    assert (tmp_path / "outputs" / "my-run" / "summary.json").is_file()
    assert (tmp_path / "outputs" / "library-demo" / "run" / "metrics.jsonl").is_file()
