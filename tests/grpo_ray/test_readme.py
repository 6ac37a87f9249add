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
