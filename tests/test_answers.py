"""llm2_eval.answers: GSM8K numbers, MATH via math-verify, majority vote (docs/method.md section 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm2_eval.answers import (
    extract_gsm8k_answer,
    extract_math_answer,
    gsm8k_gold,
    gsm8k_is_correct,
    majority_vote,
    math_equal,
    math_gold,
    math_is_correct,
    numbers_equal,
)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She pays 3 * 6 = 18 dollars. The answer is 18.", "18"),
        ("First 5 apples, then 7.\nSo the answer is: 12", "12"),
        ("The answer is $1,234.", "1234"),
        ("Total cost: $ 2,500.50 in all. The answer is $2,500.50.", "2500.5"),
        ("Temperature drops by 7 and 3. The answer is -10.", "-10"),
        ("The answer is **42**", "42"),
        ("We get 3 + 4 = 7, so \\boxed{7} ... and then 9 more words", "7"),
        ("\\boxed{\\$1,000}", "1000"),
        ("He has 4 and then 9 more, so 13 in total", "13"),
        ("It costs 0.75 each", "0.75"),
        ("The ratio is 2.50", "2.5"),
        ("The answer is 12. Check: 12 - 3 = 9.", "12"),
        ("I do not know.", None),
        ("", None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_last_answer_is_wins_over_earlier_ones():
    assert extract_gsm8k_answer("The answer is 3. Wait, recheck: the answer is 5.") == "5"


def test_numbers_compare_numerically():
    assert numbers_equal("18", "18.0")
    assert numbers_equal("0.5", "0.50")
    assert not numbers_equal("18", "19")
    assert not numbers_equal(None, "18")
    assert gsm8k_is_correct("The answer is 1,000.00", "1000")
    assert not gsm8k_is_correct("The answer is 999", "1000")


def test_gsm8k_gold_errors():
    assert gsm8k_gold("3 + 4 = 7\n#### 1,007") == "1007"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker 7")
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_gold("#### seven")


def test_gsm8k_gold_parses_every_test_line(data_dir):  # data_dir: tests/conftest.py
    rows = _jsonl(data_dir / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    golds = [gsm8k_gold(r["answer"]) for r in rows]
    assert golds[0] == "18"  # Janet's ducks
    for row, gold in zip(rows, golds):
        # the gold, written as a model would, is extracted and judged correct
        assert gsm8k_is_correct(f"Some steps.\nThe answer is {gold}.", gold), row["answer"][-60:]


# ------------------------------------------------------------------------------------------------ vote


def test_majority_vote_ties_go_to_first_and_none_never_wins():
    assert majority_vote(["3", "5", "5", "3"]) == "3"
    assert majority_vote(["5", "3", "3", "5"]) == "5"
    assert majority_vote([None, None, None, "7"]) == "7"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["2", "2.0", "3"], equal=numbers_equal) == "2"


# ------------------------------------------------------------------------------------------------ MATH


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So $x = 2$ and the result is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("First \\boxed{3}, corrected: \\boxed{\\sqrt{2}}", "\\sqrt{2}"),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\fbox{12}", "12"),
        ("The answer is $\\frac{\\pi}{2}$. Done.", "\\frac{\\pi}{2}"),
        ("Hence the answer is: 3.5. Next we check.", "3.5"),
        ("The answer is \\(x^2\\)", "x^2"),
        ("The answer is \\boxed{}.", None),
        ("We get 12 at the end", None),
    ],
)
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


def test_math_gold_prefers_answer_field_then_boxed_solution():
    assert math_gold({"answer": " 7 ", "solution": "\\boxed{8}"}) == "7"
    assert math_gold({"solution": "so \\boxed{3} or \\boxed{\\frac{1}{4}}."}) == "\\frac{1}{4}"
    assert math_gold({"answer": "", "solution": "\\boxed{5}"}) == "5"
    with pytest.raises(ValueError, match="no 'answer'"):
        math_gold({"solution": "no box here", "unique_id": "x"})


@pytest.mark.parametrize(
    "pred, gold, equal",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "\\dfrac{1}{2}", True),
        ("\\frac12", "0.5", True),
        ("x=3", "3", True),
        ("\\frac{\\pi}{2}", "\\pi/2", True),
        ("3", "4", False),
        ("(1,2)", "(2,1)", False),
        ("\\sqrt{2}", "2", False),
        (None, "3", False),
        ("}{", "}{", True),  # unparseable on both sides: equal strings still match
        ("}{", "3", False),
    ],
)
def test_math_equal(pred, gold, equal):
    assert math_equal(pred, gold) is equal


def test_every_math500_gold_matches_itself_boxed_in_a_solution(data_dir):
    from math_verify import parse

    rows = _jsonl(data_dir / "math500" / "test.jsonl")
    assert len(rows) == 500
    unparsed, unmatched = [], []
    for row in rows:
        gold = math_gold(row)
        if not parse("\\boxed{" + gold + "}"):
            unparsed.append(gold)  # math-verify itself must understand every gold, not the string fallback
        solution = f"Working through it, we simplify.\nTherefore the final answer is $\\boxed{{{gold}}}$."
        if extract_math_answer(solution) != gold or not math_is_correct(solution, gold):
            unmatched.append(gold)
    assert unparsed == []
    assert unmatched == []


def test_math500_answer_field_agrees_with_solution_box(data_dir):
    rows = _jsonl(data_dir / "math500" / "test.jsonl")
    mismatched = [r["unique_id"] for r in rows if not math_equal(math_gold({"solution": r["solution"]}), r["answer"])]
    assert mismatched == []


def test_math_vote_groups_equivalent_answers():
    answers = ["\\frac{1}{2}", "3", "0.5", "3", "1/2", None]
    assert majority_vote(answers, equal=math_equal) == "\\frac{1}{2}"
    # without math-verify grouping the strings "3" would win
    assert majority_vote(answers) == "3"
    assert majority_vote(["3", "\\frac{6}{2}", "2", "2"], equal=math_equal) == "3"


def test_import_stays_light():
    code = "import sys, llm2_eval.answers; print(any(m in sys.modules for m in ('math_verify', 'sympy', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_math_equal_works_outside_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    # strings no other test uses, so the parse cache cannot hide a main-thread-only code path
    pairs = [("0.125", "\\frac{1}{8}"), ("31", "32"), ("y^2+7", "7+y^{2}")]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda p: math_equal(*p), pairs)) == [True, False, True]
