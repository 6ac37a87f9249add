"""The Qwen3 tutorial set (seed 002) against the tutorial's own code and examples."""

import re

import pytest

from grpo_ray.rewards.qwen3 import QWEN3, Qwen3Format

# ---- the tutorial's code (seed 002), with tokenizer.eos_token = "<|endoftext|>" and printing dropped ----
reasoning_start, reasoning_end = "<start_working_out>", "<end_working_out>"
solution_start, solution_end = "<SOLUTION>", "</SOLUTION>"
EOS = "<|endoftext|>"
solution_end_regex = r"</SOLUTION>[\s]{0,}" + "(?:" + re.escape(EOS) + ")?"
match_format = re.compile(
    rf"{reasoning_end}.*?" rf"{solution_start}(.+?){solution_end_regex}" rf"[\s]{{0,}}$",
    flags=re.MULTILINE | re.DOTALL,
)
match_numbers = re.compile(solution_start + r".*?[\s]{0,}([-]?[\d\.\,]{1,})", flags=re.MULTILINE | re.DOTALL)


def match_format_exactly(completions, **kwargs):
    return [3.0 if match_format.search(c[0]["content"]) is not None else 0 for c in completions]


def match_format_approximately(completions, **kwargs):
    scores = []
    for completion in completions:
        score, response = 0, completion[0]["content"]
        score += 0.5 if response.count(reasoning_end) == 1 else -1.0
        score += 0.5 if response.count(solution_start) == 1 else -1.0
        score += 0.5 if response.count(solution_end) == 1 else -1.0
        scores.append(score)
    return scores


def check_answer(prompts, completions, answer, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    extracted = [g.group(1) if (g := match_format.search(r)) is not None else None for r in responses]
    scores = []
    for guess, true_answer in zip(extracted, answer):
        score = 0
        if guess is None:
            scores.append(-2.0)
            continue
        if guess == true_answer:
            score += 5.0
        elif guess.strip() == true_answer.strip():
            score += 3.5
        else:
            try:
                ratio = float(guess) / float(true_answer)
                if ratio >= 0.9 and ratio <= 1.1:
                    score += 2.0
                elif ratio >= 0.8 and ratio <= 1.2:
                    score += 1.5
                else:
                    score -= 2.5
            except:  # noqa: E722 - the tutorial's own bare except
                score -= 4.5
        scores.append(score)
    return scores


def check_numbers(prompts, completions, answer, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    extracted = [g.group(1) if (g := match_numbers.search(r)) is not None else None for r in responses]
    scores = []
    for guess, true_answer in zip(extracted, answer):
        if guess is None:
            scores.append(-2.5)
            continue
        try:
            true_answer = float(true_answer.strip())
            guess = float(guess.strip().replace(",", ""))
            scores.append(3.5 if guess == true_answer else -1.5)
        except:  # noqa: E722
            scores.append(0)
            continue
    return scores
# ---- end of the tutorial's code ----


def wrap(solution: str, tail: str = "") -> str:
    return f"Let me think!{reasoning_end}{solution_start}{solution}{solution_end}{tail}"


TEXTS = [wrap("2"), wrap("  2  "), wrap("2.1"), wrap("2.3"), wrap("5"), wrap("two"), wrap("0"), wrap("123,456"),
         wrap("-0.234"), wrap("2", "\n\n"), wrap("2", EOS), wrap("2", " and more text"), "2", f"{solution_start}17",
         f"{reasoning_end}{reasoning_end}{solution_start}2{solution_end}", ""]
ANSWERS = ["2", "2", "2", "2", "2", "2", "0", "123456", "-0.234", "2", "2", "2", "2", "17", "2", "2"]
CHAT = [[{"role": "assistant", "content": t}] for t in TEXTS]
PROMPTS = [[{"role": "user", "content": "What is 1+1?"}]] * len(TEXTS)
TUTORIAL = Qwen3Format(eos_token=EOS)


@pytest.mark.parametrize("ours, reference", [
    (TUTORIAL.match_format_exactly, match_format_exactly),
    (TUTORIAL.match_format_approximately, match_format_approximately),
    (TUTORIAL.check_answer, check_answer),
    (TUTORIAL.check_numbers, check_numbers),
])
def test_scores_equal_the_tutorials_code(ours, reference):
    expected = reference(prompts=PROMPTS, completions=CHAT, answer=ANSWERS)
    assert ours(prompts=PROMPTS, completions=CHAT, answer=ANSWERS) == expected


def test_the_tutorials_regex_examples():
    # Seed 002's comment says ["2"]; the regex really captures the spaces, which check_answer strips.
    text = "<start_working_out>Let me think!<end_working_out><SOLUTION>  2  </SOLUTION>\n\n"
    assert QWEN3.match_format.findall(text) == ["  2  "]
    for text, number in [("<SOLUTION>  0.34  </SOLUTION>", "0.34"), ("<SOLUTION>  123,456  </SOLUTION>", "123,456"),
                         ("<SOLUTION>  -0.234  </SOLUTION>", "-0.234"), ("<SOLUTION>17</SOLUTION>", "17")]:
        assert QWEN3.match_numbers.findall(text) == [number]


def test_the_documented_bands():
    score = lambda guess, answer: QWEN3.check_answer(None, [wrap(guess)], [answer])[0]  # noqa: E731
    assert score("2", "2") == 5.0 and score(" 2 ", "2") == 3.5
    assert score("105", "100") == 2.0 and score("85", "100") == 1.5 and score("130", "100") == -2.5
    assert score("two", "2") == -4.5 and score("3", "0") == -4.5
    assert QWEN3.check_answer(None, ["no tags"], ["2"]) == [-2.0]
    assert QWEN3.check_numbers(None, [wrap("123,456")], ["123456"]) == [3.5]
    assert QWEN3.check_numbers(None, [wrap("7")], ["8"]) == [-1.5]
    assert QWEN3.check_numbers(None, [wrap("7")], ["seven"]) == [0.0]
    assert QWEN3.match_format_approximately(["nothing"]) == [-3.0]
    assert QWEN3.match_format_approximately([wrap("1")]) == [1.5]


def test_tags_are_configurable():
    fmt = Qwen3Format(reasoning_start="<think>", reasoning_end="</think>",
                      solution_start="<answer>", solution_end="</answer>")
    text = "reasoning</think><answer>42</answer>"
    assert fmt.match_format_exactly([text]) == [3.0] and QWEN3.match_format_exactly([text]) == [0.0]
    assert fmt.check_answer(None, [text], ["42"]) == [5.0]
    assert "<think>" in fmt.system_prompt and "<start_working_out>" in QWEN3.system_prompt
    with pytest.raises(ValueError, match="solution_end"):
        Qwen3Format(solution_end="")
