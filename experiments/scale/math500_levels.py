"""MATH-500 by difficulty level: greedy vs LLM2, paired, from two lm-eval runs (their samples files and traces).

``python math500_levels.py runs/math500_greedy runs/math500_b1`` (project env; unpack the gzipped samples files
first, ``report_all.sh`` does). Per level (1 easiest .. 5): problems, accuracy of each run, won / lost (LLM2 right
where greedy is wrong / the reverse), and the responses that hit the token limit (the traces' ``finish_reason``).
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict


def load(run: str) -> tuple[dict[int, dict], dict[int, str]]:
    """``({doc_id: sample}, {doc_id: finish_reason})`` of one run directory."""
    files = glob.glob(f"{run}/*/samples_math500_llm2_*.jsonl")
    if len(files) != 1:
        raise SystemExit(f"{run}: expected one samples_math500_llm2_*.jsonl (gunzip -k the .gz), found {len(files)}")
    with open(files[0], encoding="utf-8") as f:
        samples = {s["doc_id"]: s for s in map(json.loads, f)}
    finish = {}
    with open(f"{run}/trace.jsonl", encoding="utf-8") as f:
        for line in map(json.loads, f):
            if "doc_id" in line:
                finish[line["doc_id"]] = line["finish_reason"]
    return samples, finish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("run")
    args = ap.parse_args()
    (base, base_fin), (run, run_fin) = load(args.base), load(args.run)
    if set(base) != set(run):
        raise SystemExit(f"the runs hold other problems ({len(base)} vs {len(run)})")
    rows = defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0])  # n, base right, run right, won, lost, base cap, run cap
    for doc_id, b in base.items():
        r = run[doc_id]
        for level in (b["doc"]["level"], "all"):
            row = rows[level]
            rb, rr = b["exact_match"] > 0, r["exact_match"] > 0
            row[0] += 1
            row[1] += rb
            row[2] += rr
            row[3] += rr and not rb
            row[4] += rb and not rr
            row[5] += base_fin.get(doc_id) == "length"
            row[6] += run_fin.get(doc_id) == "length"
    print("| level | problems | greedy | LLM2 | won / lost | at the token limit (greedy / LLM2) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for level in sorted((k for k in rows if k != "all"), key=int) + ["all"]:
        n, b, r, won, lost, cb, cr = rows[level]
        print(f"| {level} | {n} | {100 * b / n:.1f}% ({b}) | {100 * r / n:.1f}% ({r}) | {won} / {lost} | {cb} / {cr} |")


if __name__ == "__main__":
    main()
