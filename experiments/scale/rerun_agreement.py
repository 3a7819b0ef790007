"""Two runs of one sampled GSM8K maj@k task, same seed: how far bf16 rounding alone moves the samples and the vote.

``python rerun_agreement.py ../heldout/runs/test100_maj8_b0 runs/test300_maj8`` (project env; unpack the gzipped
samples files first). On the questions both runs hold: samples identical token for token (same question, same
repeat, so the same seed), the median share of a sample's text both runs share from its start, and whether the
vote (scored as the task scores it, :func:`maj_ties.question_scores`) came out the same. Sampled requests draw with
per-sample seeds that do not depend on batching, so every difference is the rounding of other batch shapes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics

from llm2_eval.answers import gsm8k_gold

from maj_ties import question_scores


def load(run: str) -> dict[int, tuple[list[str], str]]:
    """``{doc_id: (k sample texts in repeat order, gold answer)}`` of one run directory."""
    files = glob.glob(f"{run}/*/samples_gsm8k_llm2_maj*.jsonl")
    if len(files) != 1:
        raise SystemExit(f"{run}: expected one samples_gsm8k_llm2_maj*.jsonl (gunzip -k the .gz), found {len(files)}")
    with open(files[0], encoding="utf-8") as f:
        return {s["doc_id"]: (s["resps"][0], gsm8k_gold(s["doc"]["answer"])) for s in map(json.loads, f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    args = ap.parse_args()
    a, b = load(args.first), load(args.second)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit("the runs share no question")
    pairs = [(x, y) for d in common for x, y in zip(a[d][0], b[d][0], strict=True)]
    shared = [len(os.path.commonprefix([x, y])) / max(1, len(x), len(y)) for x, y in pairs]
    votes = [(question_scores(a[d][0], a[d][1])[0], question_scores(b[d][0], b[d][1])[0]) for d in common]
    print(f"questions in both runs: {len(common)}; samples: {len(pairs)}")
    print(f"identical samples: {sum(x == y for x, y in pairs)} of {len(pairs)}; "
          f"median shared start: {100 * statistics.median(shared):.0f}% of the longer text")
    print(f"vote right in both / first only / second only / neither: {sum(v == (1, 1) for v in votes)} / "
          f"{sum(v == (1, 0) for v in votes)} / {sum(v == (0, 1) for v in votes)} / {sum(v == (0, 0) for v in votes)}")


if __name__ == "__main__":
    main()
