"""The reward set of the Unsloth Qwen3 GRPO tutorial (seed 002, "奖励函数部分").

The model reasons between ``<start_working_out>`` and ``<end_working_out>`` and answers
between ``<SOLUTION>`` and ``</SOLUTION>`` (the chat template adds the first tag). Scores are
the tutorial's:

* ``qwen3_match_format_exactly``: 3.0 when the ``match_format`` regex finds
  ``<end_working_out> ... <SOLUTION>X</SOLUTION>`` at the end of the text.
* ``qwen3_match_format_approximately``: +0.5 for each of ``<end_working_out>``, ``<SOLUTION>``,
  ``</SOLUTION>`` present exactly once, -1.0 for each that is not (range -3.0 .. 1.5).
* ``qwen3_check_answer``: -2.0 no extractable solution; 5.0 exact; 3.5 equal after stripping;
  else by ratio guess/answer: 2.0 within 10 %, 1.5 within 20 %, -2.5 further; -4.5 when either
  is not a number (or the answer is 0, where the tutorial's division raises).
* ``qwen3_check_numbers``: -2.5 no number after ``<SOLUTION>``; 3.5 same float value (commas
  ignored in the guess), -1.5 different; 0.0 when the answer is not a number.

:class:`Qwen3Format` makes the four tags and the optional EOS token configurable. Departures
from the tutorial: the tags are regex-escaped (the tutorial interpolates them raw, which is the
same for its tags), ``</SOLUTION>`` in the end pattern follows ``solution_end`` rather than
being hard-coded, its debug printing is dropped, and its bare ``except:`` is narrowed to the
conversion errors it was there to catch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from grpo_ray.rewards.registry import completion_text, register


@dataclass(frozen=True)
class Qwen3Format:
    """Tags of the tutorial's output format, and its four reward functions for that format."""

    reasoning_start: str = "<start_working_out>"
    reasoning_end: str = "<end_working_out>"
    solution_start: str = "<SOLUTION>"
    solution_end: str = "</SOLUTION>"
    eos_token: str | None = None
    match_format: re.Pattern = field(init=False, repr=False, compare=False)
    match_numbers: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("reasoning_start", "reasoning_end", "solution_start", "solution_end"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Qwen3Format.{name}={getattr(self, name)!r}: give a non-empty tag")
        end = re.escape(self.solution_end) + r"[\s]{0,}"
        if self.eos_token:
            end += "(?:" + re.escape(self.eos_token) + ")?"
        flags = re.MULTILINE | re.DOTALL
        fmt = rf"{re.escape(self.reasoning_end)}.*?{re.escape(self.solution_start)}(.+?){end}[\s]{{0,}}$"
        object.__setattr__(self, "match_format", re.compile(fmt, flags))
        numbers = re.escape(self.solution_start) + r".*?[\s]{0,}([-]?[\d\.\,]{1,})"
        object.__setattr__(self, "match_numbers", re.compile(numbers, flags))

    @property
    def system_prompt(self) -> str:
        """The tutorial's system prompt, with this format's tags."""
        return (
            "You are given a problem.\nThink about the problem and provide your working out.\n"
            f"Place it between {self.reasoning_start} and {self.reasoning_end}.\n"
            f"Then, provide your solution between {self.solution_start}{self.solution_end}"
        )

    def extract_solution(self, text: str) -> str | None:
        """The raw text between the solution tags, if the whole format matches (else ``None``)."""
        found = self.match_format.search(text)
        return found.group(1) if found else None

    def match_format_exactly(self, completions, **kwargs) -> list[float]:
        return [3.0 if self.match_format.search(completion_text(c)) else 0.0 for c in completions]

    def match_format_approximately(self, completions, **kwargs) -> list[float]:
        scores = []
        for c in completions:
            text = completion_text(c)
            tags = (self.reasoning_end, self.solution_start, self.solution_end)
            scores.append(sum(0.5 if text.count(tag) == 1 else -1.0 for tag in tags))
        return scores

    def check_answer(self, prompts, completions, answer, **kwargs) -> list[float]:
        return [_answer_score(self.extract_solution(completion_text(c)), str(a)) for c, a in zip(completions, answer)]

    def check_numbers(self, prompts, completions, answer, **kwargs) -> list[float]:
        scores = []
        for c, true_answer in zip(completions, answer):
            found = self.match_numbers.search(completion_text(c))
            if found is None:
                scores.append(-2.5)
                continue
            try:
                same = float(found.group(1).strip().replace(",", "")) == float(str(true_answer).strip())
            except ValueError:
                scores.append(0.0)
                continue
            scores.append(3.5 if same else -1.5)
        return scores


def _answer_score(guess: str | None, true_answer: str) -> float:
    if guess is None:
        return -2.0
    if guess == true_answer:
        return 5.0
    if guess.strip() == true_answer.strip():
        return 3.5
    try:
        ratio = float(guess) / float(true_answer)
    except (ValueError, ZeroDivisionError):
        return -4.5
    if 0.9 <= ratio <= 1.1:
        return 2.0
    if 0.8 <= ratio <= 1.2:
        return 1.5
    return -2.5


#: The tutorial's own tags.
QWEN3 = Qwen3Format()

register("qwen3_match_format_exactly", QWEN3.match_format_exactly)
register("qwen3_match_format_approximately", QWEN3.match_format_approximately)
register("qwen3_check_answer", QWEN3.check_answer)
register("qwen3_check_numbers", QWEN3.check_numbers)
