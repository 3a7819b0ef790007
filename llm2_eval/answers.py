"""Answer extraction, equivalence and majority voting (LLM2.md section 7).

One module used by the lm-eval tasks, by exploration (rollout quality, paper Eq. 5) and by ``llm2 report``.

GSM8K: the gold answer is the number after ``####`` (commas removed); a prediction's answer is the number after
"The answer is" / "answer is" / inside ``\\boxed{}`` when present, else the last number; numbers compare
numerically. Self-consistency: majority vote over extracted answers, ties to the answer seen first.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, Hashable, Iterable, Sequence, TypeVar

T = TypeVar("T")

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_ANSWER_IS_RE = re.compile(r"answer is[:\s]*\**\s*(?:\\\(|\$)?\s*(" + _NUMBER + ")", re.IGNORECASE)


def _clean_number(text: str) -> str | None:
    """Canonical string of a number (``"1,234.50"`` -> ``"1234.5"``, ``"$18"`` -> ``"18"``), or None."""
    t = text.replace(",", "").replace("$", "").replace(" ", "").strip().rstrip(".")
    if not t or t in {"-", "."}:
        return None
    try:
        value = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), ".10g")


def gsm8k_gold(answer: str) -> str:
    """The gold number of a GSM8K ``answer`` field (text after ``####``, commas removed).

    Raises:
        ValueError: when there is no ``####`` followed by a number.
    """
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' line: {answer[-80:]!r}")
    tail = answer.split("####")[-1].strip()
    num = _clean_number(tail)
    if num is None:
        raise ValueError(f"GSM8K answer after '####' is not a number: {tail!r}")
    return num


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_gsm8k_answer(prediction: str) -> str | None:
    """The numeric answer of a model's GSM8K solution (LLM2.md section 7), canonicalised; None if no number.

    Order: the last "The answer is N" / "answer is N", else the last ``\\boxed{}`` holding a number, else the
    last number in the text.
    """
    matches = _ANSWER_IS_RE.findall(prediction)
    if matches:
        num = _clean_number(matches[-1])
        if num is not None:
            return num
    boxed = last_boxed(prediction)
    if boxed is not None:
        nums = _NUMBER_RE.findall(boxed)
        if nums:
            num = _clean_number(nums[-1])
            if num is not None:
                return num
    for raw in reversed(_NUMBER_RE.findall(prediction)):
        num = _clean_number(raw)
        if num is not None:
            return num
    return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two canonical number strings (exact rational comparison); None never matches."""
    if a is None or b is None:
        return False
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return a == b


def gsm8k_is_correct(prediction: str, gold: str) -> bool:
    """True when the answer extracted from ``prediction`` equals ``gold`` numerically."""
    return numbers_equal(extract_gsm8k_answer(prediction), _clean_number(gold) or gold)


def majority_vote(
    answers: Sequence[T | None],
    equal: Callable[[T, T], bool] | None = None,
) -> T | None:
    """Self-consistency vote (maj@N): the most frequent non-None answer; ties go to the one seen first.

    Args:
        answers: extracted answers of N samples, in sample order (None = no answer, never wins).
        equal: equivalence of two answers; default ``==``. Answers are grouped with the first member of each
            class as its representative (so a non-transitive ``equal`` groups by that representative).

    Returns:
        The representative of the largest class, or None when no sample has an answer.
    """
    reps: list[T] = []
    counts: list[int] = []
    eq = equal or (lambda x, y: x == y)
    for a in answers:
        if a is None:
            continue
        for i, r in enumerate(reps):
            if eq(r, a):
                counts[i] += 1
                break
        else:
            reps.append(a)
            counts.append(1)
    if not reps:
        return None
    best = max(range(len(reps)), key=lambda i: (counts[i], -i))
    return reps[best]
