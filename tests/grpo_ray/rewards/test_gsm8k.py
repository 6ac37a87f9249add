"""The GSM8K set against its public definition (willccbb's grpo_demo.py gist, named by seeds 000/001)."""

import re

import pytest

from grpo_ray.rewards.gsm8k import GSM8K, SYSTEM_PROMPT, XMLFormat, extract_hash_answer


# ---- the public definition, verbatim apart from dropped printing: the reference for scores ----
def extract_xml_answer(text: str) -> str:
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def correctness_reward_func(prompts, completions, answer, **kwargs) -> list[float]:
    responses = [completion[0]["content"] for completion in completions]
    extracted_responses = [extract_xml_answer(r) for r in responses]
    return [2.0 if r == a else 0.0 for r, a in zip(extracted_responses, answer)]


def int_reward_func(completions, **kwargs) -> list[float]:
    responses = [completion[0]["content"] for completion in completions]
    extracted_responses = [extract_xml_answer(r) for r in responses]
    return [0.5 if r.isdigit() else 0.0 for r in extracted_responses]


def strict_format_reward_func(completions, **kwargs) -> list[float]:
    pattern = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    responses = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, r) for r in responses]
    return [0.5 if match else 0.0 for match in matches]


def soft_format_reward_func(completions, **kwargs) -> list[float]:
    pattern = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
    responses = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, r) for r in responses]
    return [0.5 if match else 0.0 for match in matches]


def count_xml(text) -> float:
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def xmlcount_reward_func(completions, **kwargs) -> list[float]:
    contents = [completion[0]["content"] for completion in completions]
    return [count_xml(c) for c in contents]
# ---- end of the reference ----


TEXTS = [
    "<reasoning>\n9 eggs at $2 each\n</reasoning>\n<answer>\n18\n</answer>\n",  # perfect
    "<reasoning>\nline one\nline two\n</reasoning>\n<answer>\n18\n</answer>\n",  # multi-line reasoning
    "<reasoning>\nx\n</reasoning>\n<answer>\n18\n</answer>\ntrailing words",     # text after </answer>
    "<reasoning>x</reasoning> <answer>18</answer>",                                # no newlines
    "<reasoning>\nx\n</reasoning>\n<answer>\n18.5\n</answer>\n",                   # not an integer
    "<answer>\n17\n</answer>\n<answer>\n18\n</answer>\n",                          # tags twice
    "The answer is 18.",                                                           # no tags
    "",
]
ANSWERS = ["18"] * len(TEXTS)
CHAT = [[{"role": "assistant", "content": t}] for t in TEXTS]


@pytest.mark.parametrize("ours, reference", [
    (GSM8K.correctness, correctness_reward_func),
    (GSM8K.integer, int_reward_func),
    (GSM8K.strict_format, strict_format_reward_func),
    (GSM8K.soft_format, soft_format_reward_func),
    (GSM8K.xmlcount, xmlcount_reward_func),
])
def test_scores_equal_the_public_definition(ours, reference):
    expected = reference(prompts=[[{"role": "user", "content": "q"}]] * len(CHAT), completions=CHAT, answer=ANSWERS)
    assert ours(prompts=None, completions=CHAT, answer=ANSWERS) == expected
    assert ours(prompts=None, completions=TEXTS, answer=ANSWERS) == expected  # plain-string completions


def test_the_documented_scores():
    perfect, multiline, trailing = TEXTS[0], TEXTS[1], TEXTS[2]
    assert GSM8K.correctness(None, [perfect], ["18"]) == [2.0]
    assert GSM8K.integer([perfect]) == [0.5]
    assert GSM8K.strict_format([perfect]) == [0.5]
    assert GSM8K.soft_format([TEXTS[3]]) == [0.5]
    assert GSM8K.xmlcount([perfect]) == [0.5]  # 4 x 0.125
    # '.' does not cross newlines in the original: multi-line blocks fail both format checks
    assert GSM8K.strict_format([multiline]) == [0.0]
    assert GSM8K.soft_format([perfect]) == [0.0]
    assert GSM8K.xmlcount([trailing]) == [pytest.approx(0.5 - 2 * 0.014)]  # 0.001 per trailing character, twice


def test_gold_answers_in_raw_gsm8k_form_are_reduced():
    assert extract_hash_answer("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert extract_hash_answer("no marker") is None
    assert GSM8K.correctness(None, [TEXTS[0]], ["9 * 2 = 18\n#### 18"]) == [2.0]


def test_tags_are_configurable():
    think = XMLFormat(reasoning_tag="think", answer_tag="final")
    text = "<think>\nx\n</think>\n<final>\n42\n</final>\n"
    assert think.strict_format([text]) == [0.5] and think.xmlcount([text]) == [0.5]
    assert think.correctness(None, [text], ["42"]) == [2.0]
    assert GSM8K.strict_format([text]) == [0.0]
    assert "<think>" in think.system_prompt and "<reasoning>" in SYSTEM_PROMPT
    with pytest.raises(ValueError, match="reasoning_tag"):
        XMLFormat(reasoning_tag="<think>")
