#!/usr/bin/env python
"""Re-apply the label rules to the rollout counts already in an exploration output (no model, no rollouts).

    python relabel.py [train500_relative.jsonl] [--margin 0.25] [--levels 0.05 0.1]

Reads each record's ``qualities`` (candidate: ``correct`` of ``rollouts``) and ``gold_qualities`` (the gold token's,
same position) and prints, as JSON: the records, the judged candidates, the negatives the file holds, the negatives
of ``--label relative`` at ``--margin`` (recomputed: must equal the file's for a relative-rule output), how many of
those differ from the gold token by exactly one rollout, and per ``--levels`` the negatives of ``--label
significant`` (one-sided Fisher exact test, :func:`verifier_train.explore.labels.worse_than_gold_p`), how many of
them the relative rule also has, and how many judged positions that rule would still roll out (the others cannot
give a negative whatever their candidates do). Candidates at positions the relative run left unjudged (q(gold) <
``--min-gold-quality``) have no counts and are not counted; at m = 4 such a gold token (0 of 4) cannot be beaten
significantly, so the significant rule would not judge them either.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.labels import is_negative
from verifier_train.explore.significance import can_be_significant


def relabel(path: str | Path, margin: float = 0.25, levels: tuple[float, ...] = (0.05, 0.1)) -> dict:
    """The label counts of ``path`` under the relative rule (``margin``, a quality in [0, 1]) and the significant
    rule (each of ``levels``, a p-value threshold), from the counts as written (see the module docstring)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rel_cfg = ExploreConfig(model="-", data=str(path), output="-", label="relative", margin=margin)
    sig_cfgs = {lv: ExploreConfig(model="-", data=str(path), output="-", label="significant", significance=lv)
                for lv in levels}
    judged = stored = 0
    rel, rel_one = 0, 0
    sig = Counter()
    sig_and_rel = Counter()
    rel_by_counts: Counter = Counter()
    positions: set = set()
    rolled = Counter()
    for rec in records:
        gold = {g["pos"]: g for g in rec.get("gold_qualities", [])}
        stored += sum(1 for q in rec["qualities"] if q["negative"])
        for q in rec["qualities"]:
            g = gold[q["pos"]]
            counts, gold_counts = (q["correct"], q["rollouts"]), (g["correct"], g["rollouts"])
            judged += 1
            if (rec["id"], q["pos"]) not in positions:
                positions.add((rec["id"], q["pos"]))
                for lv in levels:
                    rolled[lv] += g["rollouts"] > 0 and can_be_significant(*gold_counts, q["rollouts"], lv)
            r = is_negative(q["q"], g["q"], rel_cfg, counts=counts, gold_counts=gold_counts)
            if r:
                rel += 1
                rel_by_counts[f"{g['correct']}/{g['rollouts']} vs {q['correct']}/{q['rollouts']}"] += 1
                rel_one += q["rollouts"] == g["rollouts"] and g["correct"] - q["correct"] == 1
            for lv, cfg in sig_cfgs.items():
                s = is_negative(q["q"], g["q"], cfg, counts=counts, gold_counts=gold_counts)
                sig[lv] += s
                sig_and_rel[lv] += s and r
    return {
        "path": str(path),
        "records": len(records),
        "judged_positions": len(positions),
        "judged_candidates": judged,
        "negatives_in_file": stored,
        f"relative_margin_{margin}": rel,
        "relative_one_rollout_gap": rel_one,
        "relative_by_counts_gold_vs_candidate": dict(sorted(rel_by_counts.items())),
        "significant": {
            str(lv): {"negatives": sig[lv], "also_relative": sig_and_rel[lv],
                      "positions_still_rolled_out": rolled[lv]}
            for lv in levels
        },
    }


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", default=str(here / "train500_relative.jsonl"))
    ap.add_argument("--margin", type=float, default=0.25)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.05, 0.1])
    args = ap.parse_args()
    print(json.dumps(relabel(args.path, args.margin, tuple(args.levels)), indent=1))


if __name__ == "__main__":
    main()
