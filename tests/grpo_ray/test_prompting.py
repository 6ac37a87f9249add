"""Prompt building: answer formats, the tutorial's chat template, GSM8K solutions, and over-long
prompts dropped and counted (never cut)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from grpo_ray.config import DataConfig
from grpo_ray.prompt_set import build_prompt_set
from grpo_ray.prompting import answer_format, messages_of, render_prompt, split_solution, tutorial_chat_template
from grpo_ray.rewards import resolve
from grpo_ray.rewards.gsm8k import GSM8K
from grpo_ray.rewards.qwen3 import QWEN3
from recipes.tiny_model import CHATML_TEMPLATE, build_bpe_tokenizer, build_char_tokenizer

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"


def test_gsm8k_solution_splits_into_steps_and_answer():
    assert split_solution(SOLUTION) == ("Natalia sold 48/2 = 24 clips in May.\nIn all 48+24 = 72.", "72")
    assert split_solution(" 61 ") == ("", "61")


@pytest.mark.parametrize("name", ["qwen3", "gsm8k", "grpo_ray.rewards.qwen3:QWEN3"])
def test_a_formats_solution_earns_full_marks_from_its_own_reward_set(name):
    fmt = answer_format(name)
    reasoning, answer = split_solution(SOLUTION)
    completion = fmt.solution(reasoning, answer)
    scores = {spec: resolve(spec)(prompts=[""], completions=[completion], answer=[answer])[0] for spec in fmt.reward_functions}
    # gsm8k: correctness, int, strict format, xmlcount; the published soft-format pattern does not
    # cross the newlines the strict layout requires, so no completion earns both.
    best = {"qwen3": 3.0 + 1.5 + 5.0 + 3.5, "gsm8k": 2.0 + 0.5 + 0.5 + 0.5}[name.replace("grpo_ray.rewards.qwen3:QWEN3", "qwen3")]
    assert sum(scores.values()) == pytest.approx(best), scores


def test_format_specs():
    assert answer_format("qwen3").system_prompt == QWEN3.system_prompt
    assert answer_format("qwen3").generation_prefix == "<start_working_out>"
    assert answer_format("gsm8k").system_prompt == GSM8K.system_prompt
    assert answer_format("none").solution("", "7") == "7"
    with pytest.raises(ValueError, match="data.format='nope'"):
        answer_format("nope")
    with pytest.raises(ValueError, match="give a Qwen3Format or XMLFormat"):
        answer_format("grpo_ray.rewards.qwen3:Qwen3Format.system_prompt")


def test_tutorial_template_renders_like_the_tutorial():
    tok = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz?<>_ \n")
    tok.chat_template = tutorial_chat_template('Say "hi"\nthen stop', "<start_working_out>")
    messages = messages_of("what?", None)
    assert render_prompt(tok, messages, "tutorial", "<start_working_out>") == 'Say "hi"\nthen stop</s>what?<start_working_out>'
    own = messages_of("what?", "be brief")
    assert render_prompt(tok, own, "tutorial", "<start_working_out>") == "be brief</s>what?<start_working_out>"
    assert render_prompt(tok, own, "none", "<x>") == "be brief\n\nwhat?<x>"


def test_model_template_gets_the_format_prefix():
    tok = build_bpe_tokenizer(["hello there"] * 5, vocab_size=300)
    assert tok.chat_template == CHATML_TEMPLATE
    text = render_prompt(tok, messages_of("Q?", "S"), "model", "<start_working_out>")
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<start_working_out>"


def test_long_prompts_are_dropped_and_counted_never_cut():
    tok: PreTrainedTokenizerFast = build_char_tokenizer("0123456789+=#\n ")
    rows = [{"q": "1+1=", "answer": "2"}, {"q": "12345+67890=", "answer": "80235"}, {"q": "3+4=", "answer": "#### 7"}]
    data = DataConfig(prompt_column="q", chat_template="none")
    built = build_prompt_set(rows, data, tok, answer_format("none"), max_prompt_length=6)
    assert built.dropped == 1 and built.longest == 4
    assert [r["prompt"] for r in built.rows] == ["1+1=", "3+4="]  # whole prompts, as written
    assert [r["answer"] for r in built.rows] == ["2", "7"] and built.solutions == ["2", "7"]
    assert built.questions == ["1+1=", "3+4="] and "q" not in built.rows[0]
    assert len(build_prompt_set(rows, data, tok, answer_format("none"), None, limit=2).rows) == 2


def test_prompt_building_and_start_up_checks_import_no_model_stack():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, grpo_ray.prompting, grpo_ray.prompt_set, grpo_ray.startup, grpo_ray.plot, grpo_ray.tracking\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ray', 'vllm', 'transformers', 'torch', 'datasets', 'matplotlib'))))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
