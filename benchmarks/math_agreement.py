"""Agreement of grpo_ray's math verifier with math-verify on a corpus of answer pairs.

    python benchmarks/math_agreement.py            # prints agreement overall and per category
    python benchmarks/math_agreement.py --record   # (re)writes the corpus with math-verify's verdicts

The corpus (``tests/grpo_ray/rewards/math_verify_corpus.json``) holds (category, prediction,
gold, math-verify's verdict) rows: hand-written pairs plus systematic variants (wrappers
around answers, big integers off by one, arithmetic forms of a value, sets reordered, surds).
math-verify's verdict is ``verify(parse(gold), parse(prediction))`` with its defaults, each answer
wrapped in ``$...$`` unless it starts with its own math delimiter;
``tests/grpo_ray/rewards/test_math.py`` replays the corpus and re-checks the verdicts live.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "grpo_ray" / "rewards" / "math_verify_corpus.json"


def corpus() -> list[tuple[str, str, str]]:
    """(category, prediction, gold) rows."""
    rows: list[tuple[str, str, str]] = []

    def add(category: str, pairs) -> None:
        rows.extend((category, p, g) for p, g in pairs)

    big = [7, 42, 1000, 123456789, 2**53 + 1, 2**64, 10**20 + 1, 12345678901234567891, 98765432109876543210123]
    add("integers", [(str(v), str(v)) for v in big])
    add("integers", [(str(v + 1), str(v)) for v in big])
    add("integers", [(str(v - 1), str(v)) for v in big])
    add("integers", [(f"{v:,}", str(v)) for v in big if v >= 1000])
    add("integers", [(f"{v}.0", str(v)) for v in big[:4]])
    add("integers", [("-5", "-5"), ("5", "-5"), ("-0", "0"), ("007", "7"), ("1000000", "10^6"), ("10^{20}", str(10**20)),
                     ("10^{20}+1", str(10**20)), ("2^{64}", str(2**64)), ("2^{64}", str(2**64 + 1))])
    add("decimals", [("0.5", "\\frac{1}{2}"), ("0.25", "\\frac14"), ("1.000001", "1"), ("2.5", "5/2"),
                     ("0.333333", "\\frac{1}{3}"), ("0.3333", "\\frac{1}{3}"), ("0.1", "1/10"), ("0.30000000000000004", "0.3"),
                     ("1000000.5", "1000000"), ("3.75", "\\frac{15}{4}"), ("0.125", "1/8"), ("0.12", "1/8"),
                     ("2.0001", "2"), ("18.00", "18"), ("-0.5", "-\\frac{1}{2}"), ("1.5", "\\frac{3}{2}"),
                     ("0.666667", "\\frac{2}{3}"), ("0.67", "\\frac{2}{3}"), ("12.5", "25/2"), ("5.5", "11/2")])
    answers = ["5", "-3", "\\frac{1}{2}", "0.75", "2\\sqrt{3}", "(1,2)", "\\pi", "12"]
    wrappers = ["\\boxed{{{}}}", "${}$", "{{{}}}", "$\\boxed{{{}}}$", "\\({}\\)", "\\[{}\\]", "\\boxed{{\\boxed{{{}}}}}",
                "$${}$$", "\\boxed{{${}$}}", "{{{{{}}}}}"]
    add("wrappers", [(w.format(a), a) for a in answers for w in wrappers])
    add("wrappers", [(a, w.format(a)) for a in answers[:3] for w in wrappers[:4]])
    add("wrappers", [(w.format("6"), "5") for w in wrappers])
    add("arithmetic", [("2+3", "5"), ("2\\times 3", "6"), ("10-4", "6"), ("2^{10}", "1024"), ("(1+2)\\cdot 3", "9"),
                       ("\\frac{6}{4}", "1.5"), ("7/2", "3.5"), ("2+3", "6"), ("3*4", "12"), ("100/4", "25"),
                       ("2^3+1", "9"), ("-2^2", "-4"), ("(-2)^2", "4"), ("\\frac{1}{2}+\\frac{1}{3}", "\\frac{5}{6}"),
                       ("5", "2+3"), ("1+1", "3"), ("6 \\div 3", "2"), ("2\\cdot 3 + 4", "10"), ("2(3+4)", "14"),
                       ("\\frac{2}{4}", "\\frac{1}{2}"), ("\\frac{10}{4}", "2.5"), ("3\\frac{1}{2}", "3.5"),
                       ("\\frac{7}{2}", "3\\frac{1}{2}"), ("0.1+0.2", "0.3"), ("1-\\frac{1}{3}", "\\frac{2}{3}"),
                       ("2^{-1}", "0.5"), ("4^{1/2}", "2"), ("9^{\\frac{1}{2}}", "3"), ("\\frac{1}{0}", "1"), ("1/3", "0.33")])
    add("sets", [("\\{1,2,3\\}", "\\{3,2,1\\}"), ("\\{1,2,3\\}", "\\{2,1,3\\}"), ("\\{1,2\\}", "\\{1,3\\}"),
                 ("\\{1,2\\}", "\\{1,2,3\\}"), ("\\{-1, 1\\}", "\\{1, -1\\}"), ("\\{\\frac{1}{2}, 2\\}", "\\{2, 0.5\\}"),
                 ("1,2,3", "3,2,1"), ("1, 2", "2, 1"), ("1,2", "1,3"), ("(1,2)", "(2,1)"), ("(1,2)", "(1,2)"),
                 ("(1, 2, 3)", "(1,2,3)"), ("[1,2]", "[1,2]"), ("[1,2]", "(1,2)"), ("[1,2)", "[1,2)"), ("(0,\\infty)", "(0,\\infty)"),
                 ("\\{2,1\\}", "\\{1,2\\}"), ("\\{3, 4, 5\\}", "\\{5,4,3\\}"), ("(-1, 2)", "(-1,2)"), ("(2, -1)", "(-1,2)")])
    add("surds_pi", [("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
                     ("\\sqrt{8}", "2\\sqrt{2}"), ("\\sqrt{12}", "2\\sqrt{3}"), ("\\sqrt{18}", "3\\sqrt{2}"),
                     ("\\sqrt{2}", "1.414214"), ("\\sqrt{2}", "1.41"), ("3.141593", "\\pi"), ("3.14", "\\pi"),
                     ("2\\pi", "\\pi+\\pi"), ("\\frac{\\pi}{2}", "\\pi/2"), ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
                     ("\\sqrt[3]{8}", "2"), ("\\sqrt{2}\\cdot\\sqrt{8}", "4"), ("\\sqrt{3}^2", "3"), ("\\sqrt{2}", "\\sqrt{3}"),
                     ("2\\sqrt{2}", "\\sqrt{2}"), ("\\frac{22}{7}", "\\pi"), ("4\\pi", "\\pi^2"), ("\\sqrt{50}", "5\\sqrt{2}"),
                     ("\\sqrt{4}", "2"), ("\\sqrt{16}", "4"), ("\\frac{3\\sqrt{2}}{2}", "\\frac{3}{\\sqrt{2}}"), ("1+\\sqrt{2}", "\\sqrt{2}+1")])
    add("empty", [("", ""), ("", "0"), ("0", ""), (" ", " "), ("\\boxed{}", "")])
    add("percent_units", [("50\\%", "50"), ("50%", "0.5"), ("0.25", "25\\%"), ("10\\%", "0.2"), ("90^\\circ", "90"),
                          ("10\\text{ cm}", "10"), ("\\$18", "18"), ("\\$1,000.50", "1000.5"), ("18 dollars", "18"),
                          ("5\\text{ apples}", "5"), ("45^{\\circ}", "45"), ("3.5\\times10^{2}", "350"), ("1e3", "1000")])
    add("text_choices", [("\\text{(B)}", "B"), ("(C)", "C"), ("\\text{yes}", "yes"), ("Yes", "yes"),
                         ("\\text{Evelyn}", "\\text{Evelyn}"), ("A", "B"), ("\\infty", "\\infty"), ("-\\infty", "\\infty")])
    add("equations", [("x = 5", "5"), ("5", "x=5"), ("y=3", "x=3"), ("x=2+3", "5"), ("k = -1", "-1")])
    add("algebra", [("x+1", "1+x"), ("2x", "x*2"), ("x^{2}+1", "x^2+1"), ("(x+1)^2", "x^2+2x+1"), ("a+b", "b+a"),
                    ("2x+3", "2x+3"), ("x-1", "x+1")])
    return rows


def as_latex(answer: str) -> str:
    """The answer as math-verify's parser wants it: in ``$...$`` unless it brings its own delimiters."""
    return answer if answer.startswith(("$", "\\(", "\\[")) else f"${answer}$"


def verdicts_of_math_verify(rows: list[tuple[str, str, str]]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse(as_latex(g)), parse(as_latex(p)))) for _, p, g in rows]


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from grpo_ray.rewards.math import math_equal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="rewrite the corpus file with math-verify's verdicts")
    args = parser.parse_args(argv)
    if args.record:
        rows = corpus()
        data = [{"category": c, "prediction": p, "gold": g, "math_verify": v}
                for (c, p, g), v in zip(rows, verdicts_of_math_verify(rows))]
        CORPUS.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n")
    data = json.loads(CORPUS.read_text())
    total, agree = Counter(), Counter()
    for row in data:
        total[row["category"]] += 1
        agree[row["category"]] += math_equal(row["prediction"], row["gold"]) == row["math_verify"]
    print("| category | pairs | agree | rate |\n| --- | --- | --- | --- |")
    for category in total:
        print(f"| {category} | {total[category]} | {agree[category]} | {agree[category] / total[category]:.1%} |")
    n, a = sum(total.values()), sum(agree.values())
    print(f"| all | {n} | {a} | {a / n:.1%} |")


if __name__ == "__main__":
    main()
