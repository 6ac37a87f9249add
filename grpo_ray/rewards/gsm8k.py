"""The GSM8K reward set of willccbb's ``grpo_demo.py`` gist, which Unsloth's RL guide uses.

Seeds 000 and 001 (Unsloth reinforcement-learning guide, section "GSM8K 奖励函数") name the
five functions; their scores here are those of the common public definition:

===========================  ======================================================  =====
registry name                checks                                                  score
===========================  ======================================================  =====
``gsm8k_correctness``        text inside ``<answer>`` equals the gold answer          2.0
``gsm8k_int``                text inside ``<answer>`` is all digits                   0.5
``gsm8k_strict_format``      ``^<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>\\n$``  0.5
``gsm8k_soft_format``        ``<reasoning>...</reasoning>\\s*<answer>...</answer>``    0.5
``gsm8k_xmlcount``           0.125 per tag present exactly once, minus 0.001 per      <=0.5
                             character after ``</answer>``
===========================  ======================================================  =====

Both format patterns are applied with ``re.match`` and no ``re.DOTALL``, exactly as in the
original: ``.`` does not cross a newline, so multi-line reasoning fails them. That quirk is
kept on purpose (the scores are the published ones); :class:`XMLFormat` makes the tag names
configurable for prompts that use e.g. ``<think>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from grpo_ray.rewards.registry import completion_text, register


def extract_hash_answer(text: str) -> str | None:
    """The gold answer of a GSM8K solution: what follows ``####`` (``None`` if absent)."""
    if "####" not in text:
        return None
    return text.split("####")[1].strip()


@dataclass(frozen=True)
class XMLFormat:
    """The GSM8K reward set for a ``<reasoning>...</reasoning><answer>...</answer>`` output format."""

    reasoning_tag: str = "reasoning"
    answer_tag: str = "answer"
    _strict: re.Pattern = field(init=False, repr=False, compare=False)
    _soft: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("reasoning_tag", "answer_tag"):
            value = getattr(self, name)
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", value):
                raise ValueError(f"XMLFormat.{name}={value!r}: give a tag name such as 'reasoning'")
        r, a = re.escape(self.reasoning_tag), re.escape(self.answer_tag)
        object.__setattr__(self, "_strict", re.compile(rf"^<{r}>\n.*?\n</{r}>\n<{a}>\n.*?\n</{a}>\n$"))
        object.__setattr__(self, "_soft", re.compile(rf"<{r}>.*?</{r}>\s*<{a}>.*?</{a}>"))

    @property
    def system_prompt(self) -> str:
        """The system prompt of the gist, with this format's tags."""
        r, a = self.reasoning_tag, self.answer_tag
        return f"\nRespond in the following format:\n<{r}>\n...\n</{r}>\n<{a}>\n...\n</{a}>\n"

    def extract_answer(self, text: str) -> str:
        """Text between the last ``<answer>`` and the next ``</answer>``, stripped (the gist's
        ``extract_xml_answer``)."""
        answer = text.split(f"<{self.answer_tag}>")[-1]
        return answer.split(f"</{self.answer_tag}>")[0].strip()

    def correctness(self, prompts, completions, answer, **kwargs) -> list[float]:
        """2.0 when the extracted answer equals the gold one (a raw ``#### N`` solution is reduced to N first)."""
        golds = [extract_hash_answer(a) if "####" in a else a for a in map(str, answer)]
        return [2.0 if self.extract_answer(completion_text(c)) == g else 0.0 for c, g in zip(completions, golds)]

    def integer(self, completions, **kwargs) -> list[float]:
        """0.5 when the extracted answer is all digits (``str.isdigit``)."""
        return [0.5 if self.extract_answer(completion_text(c)).isdigit() else 0.0 for c in completions]

    def strict_format(self, completions, **kwargs) -> list[float]:
        """0.5 when the whole completion is exactly the tagged layout, newlines included."""
        return [0.5 if self._strict.match(completion_text(c)) else 0.0 for c in completions]

    def soft_format(self, completions, **kwargs) -> list[float]:
        """0.5 when the completion starts with the two tagged blocks (looser whitespace)."""
        return [0.5 if self._soft.match(completion_text(c)) else 0.0 for c in completions]

    def count_xml(self, text: str) -> float:
        """0.125 for each of the four tag lines present exactly once, minus 0.001 per trailing character."""
        r, a = self.reasoning_tag, self.answer_tag
        count = 0.0
        if text.count(f"<{r}>\n") == 1:
            count += 0.125
        if text.count(f"\n</{r}>\n") == 1:
            count += 0.125
        if text.count(f"\n<{a}>\n") == 1:
            count += 0.125
            count -= len(text.split(f"\n</{a}>\n")[-1]) * 0.001
        if text.count(f"\n</{a}>") == 1:
            count += 0.125
            count -= (len(text.split(f"\n</{a}>")[-1]) - 1) * 0.001
        return count

    def xmlcount(self, completions, **kwargs) -> list[float]:
        """:meth:`count_xml` of each completion."""
        return [self.count_xml(completion_text(c)) for c in completions]


#: The gist's own format: ``<reasoning>`` and ``<answer>``.
GSM8K = XMLFormat()
SYSTEM_PROMPT = GSM8K.system_prompt

register("gsm8k_correctness", GSM8K.correctness)
register("gsm8k_int", GSM8K.integer)
register("gsm8k_strict_format", GSM8K.strict_format)
register("gsm8k_soft_format", GSM8K.soft_format)
register("gsm8k_xmlcount", GSM8K.xmlcount)
