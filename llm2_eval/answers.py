"""Answer extraction, equivalence and majority voting (docs/method.md section 7).

One module used by the lm-eval tasks, by exploration (rollout quality, paper Eq. 5) and by ``llm2 report``.

GSM8K: the gold answer is the number after ``####`` (commas removed); a prediction's answer is the number after
"The answer is" / "answer is" / inside ``\\boxed{}`` when present, else the last number; numbers compare
numerically. MATH: the gold is the ``answer`` field (MATH-500) or the last ``\\boxed{}`` of the solution; a
prediction's answer is its last ``\\boxed{}`` else what follows "The answer is"; equivalence by math-verify
(imported lazily, inside the functions, so importing this module stays cheap). Self-consistency: majority vote
over extracted answers, ties to the answer seen first; MATH votes group answers math-verify judges equal.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Sequence, TypeVar

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
    """The numeric answer of a model's GSM8K solution (docs/method.md section 7), canonicalised; None if no number.

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


# --------------------------------------------------------------------------------------------- MATH

_MATH_ANSWER_IS_RE = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)


def _answer_after_phrase(rest: str) -> str:
    """The answer at the start of ``rest`` (text after "answer is"): a ``$..$`` / ``\\(..\\)`` span if it opens
    with one, else the text up to the first sentence-ending period; bold markers and a final period dropped."""
    t = rest.strip().strip("*").strip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if t.startswith(open_):
            end = t.find(close, len(open_))
            if end > 0:
                return t[len(open_) : end].strip()
    t = re.split(r"\.\s", t, maxsplit=1)[0]
    return t.strip().rstrip(".").strip("*").strip()


def extract_math_answer(prediction: str) -> str | None:
    """The final answer of a model's MATH solution as a LaTeX string (docs/method.md section 7), or None.

    Order: content of the last ``\\boxed{}`` / ``\\fbox{}``; else the rest of the line after the last
    "The answer is" / "answer is", with ``$`` delimiters and a final period removed. No normalisation
    beyond that: equivalence is :func:`math_equal`'s job.
    """
    boxed = last_boxed(prediction)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    matches = _MATH_ANSWER_IS_RE.findall(prediction)
    if matches:
        answer = _answer_after_phrase(matches[-1])
        if "\\boxed" in answer or "\\fbox" in answer:  # "The answer is \\boxed{}" with nothing inside
            answer = (last_boxed(answer) or "").strip()
        if answer:
            return answer
    return None


def math_gold(doc: dict) -> str:
    """The gold answer of a MATH / MATH-500 document (docs/method.md section 7).

    The ``answer`` field when present and non-empty (MATH-500), else the content of the last ``\\boxed{}`` of
    ``solution`` (original MATH).

    Raises:
        ValueError: when the document has neither a non-empty ``answer`` nor a boxed answer in ``solution``.
    """
    answer = doc.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    boxed = last_boxed(doc.get("solution") or "")
    if boxed is None or not boxed.strip():
        uid = doc.get("unique_id")
        raise ValueError(f"MATH document has no 'answer' and no \\boxed{{}} in its solution: {uid!r}")
    return boxed.strip()


def _timeout() -> int | None:
    """math-verify's time limit (s): it uses SIGALRM, which only the main thread may set; None elsewhere."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _math_parse(answer: str) -> tuple:
    """math-verify parse of ``\\boxed{answer}`` (so bare LaTeX such as ``\\frac{1}{2}`` or ``x=3`` parses)."""
    from math_verify import parse  # lazy: sympy + antlr cost ~1 s at import

    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=_timeout()))


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Whether two MATH answers (LaTeX strings without ``\\boxed``) are equivalent, by math-verify.

    Both are parsed as ``\\boxed{...}`` and compared with ``math_verify.verify(gold, pred)`` (numeric tolerance:
    math-verify's default 6-digit float rounding). When math-verify parses neither side, falls back to equality
    of the whitespace-stripped strings. None never matches. Never raises on malformed LaTeX; safe in threads
    (math-verify's 5 s time limit applies in the main thread only).
    """
    if pred is None or gold is None:
        return False
    parsed_gold, parsed_pred = _math_parse(gold), _math_parse(pred)
    if not parsed_gold or not parsed_pred:
        return not parsed_gold and not parsed_pred and "".join(pred.split()) == "".join(gold.split())
    from math_verify import verify

    return bool(verify(list(parsed_gold), list(parsed_pred), timeout_seconds=_timeout()))


def math_is_correct(prediction: str, gold: str) -> bool:
    """True when the answer extracted from ``prediction`` (:func:`extract_math_answer`) equals ``gold``."""
    return math_equal(extract_math_answer(prediction), gold)
