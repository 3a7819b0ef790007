"""How much of a maj@k comparison hangs on the vote's tie-break (GSM8K self-consistency runs).

``python maj_ties.py runs/test300_maj8 runs/test300_maj8_b1`` (project env; unpack the gzipped samples files first,
``report_all.sh`` does). The task's vote (``llm2_eval.answers.majority_vote``) gives a tie to the answer seen first,
so where the gold answer ties with another, sample order decides the question. Per run: questions, votes with a
tie at the top, ties that include the gold answer, maj@k as scored, and the expected maj@k under a uniformly
random tie-break (a tied class that holds the gold counts 1 / number of tied classes). With two runs, the paired
difference both ways.
"""

from __future__ import annotations

import argparse
import glob
import json
from fractions import Fraction

from llm2_eval.answers import (
    extract_gsm8k_answer,
    gsm8k_gold,
    majority_vote,
    numbers_equal,
)


def _value(answer: str) -> Fraction | str:
    try:
        return Fraction(answer)
    except (ValueError, ZeroDivisionError):
        return answer


def question_scores(responses: list[str], gold: str) -> tuple[float, float, bool, bool]:
    """``(first-seen maj, random-tie-break expected maj, top tied, gold among the tied)`` of one question's samples
    (answers compared by value, as the task's vote compares them; a sample without an answer never votes)."""
    answers = [extract_gsm8k_answer(r) for r in responses]
    counts: dict[Fraction | str, int] = {}
    for a in answers:
        if a is not None:
            counts[_value(a)] = counts.get(_value(a), 0) + 1  # dicts keep first-seen order
    if not counts:
        return 0.0, 0.0, False, False
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    g = _value(gold)
    scored = numbers_equal(majority_vote(answers, numbers_equal), gold)  # the task's own vote and comparison
    return float(scored), (g in tied) / len(tied), len(tied) > 1, len(tied) > 1 and g in tied


def load(run: str) -> dict[int, tuple[float, float, bool, bool]]:
    """``{doc_id: question_scores(...)}`` of one run directory (its single gsm8k maj samples file)."""
    files = glob.glob(f"{run}/*/samples_gsm8k_llm2_maj*.jsonl")
    if len(files) != 1:
        raise SystemExit(f"{run}: expected one samples_gsm8k_llm2_maj*.jsonl (gunzip -k the .gz), found {len(files)}")
    with open(files[0], encoding="utf-8") as f:
        return {s["doc_id"]: question_scores(s["resps"][0], gsm8k_gold(s["doc"]["answer"])) for s in map(json.loads, f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="one or two run directories (baseline first)")
    args = ap.parse_args()
    runs = [load(r) for r in args.runs[:2]]
    print("| run | questions | top tied | gold among the tied | maj@k (first seen) "
          "| maj@k (random tie-break, expected) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in zip(args.runs, runs):
        n = len(r)
        print(f"| {name} | {n} | {sum(v[2] for v in r.values())} | {sum(v[3] for v in r.values())} | "
              f"{100 * sum(v[0] for v in r.values()) / n:.1f}% | {100 * sum(v[1] for v in r.values()) / n:.1f}% |")
    if len(runs) == 2:
        base, run = runs
        if set(base) != set(run):
            raise SystemExit(f"the runs hold other questions ({len(base)} vs {len(run)})")
        n = len(base)
        for i, how in ((0, "first seen"), (1, "random tie-break, expected")):
            diff = sum(run[d][i] - base[d][i] for d in base) / n
            print(f"\npaired difference ({how}): {100 * diff:+.1f} points over {n} questions")


if __name__ == "__main__":
    main()
