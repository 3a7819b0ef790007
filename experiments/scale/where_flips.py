"""Where LLM2's greedy-decoded responses part from greedy's, and what that did to the answer.

For each question answered by both runs (lm-eval samples files, matched by doc_id), the first character where the
two responses differ is located, and the text at that point classified: a digit (the verifier changed a number), an
operator or equals sign, LaTeX markup, or words / spacing / punctuation (style). Questions are then counted by class
and by outcome (both right, LLM2 won, LLM2 lost, both wrong) with where in greedy's response the split came (its
fraction of the response length). This reads only the samples; the trace has the number of flips, not where.

    python where_flips.py runs/test_greedy runs/test_b1 [--json out.json] [--by-flips]

``--by-flips`` adds the same outcomes by the number of verifier flips per question, read from the LLM2 run's
``trace.jsonl`` (a question with 0 flips differs from greedy by rounding alone; docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from llm2_eval.report.runs import find_results_files, read_samples  # noqa: E402


def _samples(run_dir: str) -> dict[str, tuple[str, float]]:
    """``{doc_id: (first response, exact_match)}`` of the newest results file's samples (one task per run)."""
    res = find_results_files(run_dir)[-1]
    stamp = res.stem.removeprefix("results_")
    files = sorted(res.parent.glob(f"samples_*_{stamp}.jsonl"))
    if len(files) != 1:
        raise SystemExit(f"{run_dir}: expected one samples file next to {res.name}, found {len(files)}")
    return {str(s.doc_id): (s.responses[0][0], float(s.metrics.get("exact_match", 0.0)))
            for s in read_samples(files[0])}


def classify(a: str, b: str, at: int) -> str:
    """The class of the split at character ``at`` of responses ``a`` and ``b`` (see the module docstring)."""
    ca, cb = a[at: at + 1], b[at: at + 1]
    pair = ca + cb
    if any(c.isdigit() for c in pair):
        return "number"
    if any(c in "+-*/=×÷<>" for c in pair):
        return "operator"
    if any(c in "\\{}$^_" for c in pair) or "\\(" in a[max(0, at - 3): at + 2]:
        return "latex"
    return "words/format"


def outcome(g: float, l2: float) -> str:
    return {(1, 1): "both right", (0, 1): "LLM2 won", (1, 0): "LLM2 lost", (0, 0): "both wrong"}[(int(g), int(l2))]


def by_flips(base: dict, run: dict, docs: list[str], trace: Path, outcomes: tuple[str, ...]) -> None:
    """Print the outcomes of the questions bucketed by the verifier's flips in the trace (first sample, the last
    record of each question: a resumed run may have traced a question twice)."""
    flips = {}
    for line in trace.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "doc_id" in rec and rec.get("repeat", 0) == 0:
            flips[str(rec["doc_id"])] = int(rec["flips"])
    buckets = (("0", 0, 0), ("1-2", 1, 2), ("3-5", 3, 5), ("6-10", 6, 10), ("11+", 11, 10**9))
    table: dict[str, collections.Counter] = {name: collections.Counter() for name, _, _ in buckets}
    for d in docs:
        if d in flips:
            name = next(name for name, lo, hi in buckets if lo <= flips[d] <= hi)
            table[name][outcome(base[d][1], run[d][1])] += 1
    print("| flips in the question | questions | " + " | ".join(outcomes) + " | won - lost |")
    print("|---|---:|" + "---:|" * len(outcomes) + "---:|")
    for name, _, _ in buckets:
        t = table[name]
        if not t:
            continue
        print(f"| {name} | {sum(t.values())} | " + " | ".join(str(t[o]) for o in outcomes)
              + f" | {t['LLM2 won'] - t['LLM2 lost']:+d} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline")
    ap.add_argument("llm2")
    ap.add_argument("--json", help="write the table and per-question rows here")
    ap.add_argument("--by-flips", action="store_true", help="also the outcomes by flips per question (trace.jsonl)")
    args = ap.parse_args()
    base, run = _samples(args.baseline), _samples(args.llm2)
    docs = sorted(set(base) & set(run), key=lambda d: int(d) if d.isdigit() else d)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    where: dict[str, list[float]] = collections.defaultdict(list)
    rows = []
    same = 0
    for d in docs:
        (a, g), (b, l2) = base[d], run[d]
        if a == b:
            same += 1
            continue
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        cls = classify(a, b, at)
        table[cls][outcome(g, l2)] += 1
        where[cls].append(at / max(1, len(a)))
        rows.append({"doc_id": d, "class": cls, "outcome": outcome(g, l2), "at": at, "of": len(a),
                     "greedy": a[max(0, at - 40): at + 40], "llm2": b[max(0, at - 40): at + 40]})
    outcomes = ("LLM2 won", "LLM2 lost", "both right", "both wrong")
    print(f"{len(docs)} questions in both runs; {same} identical responses, {len(rows)} differ")
    print("| first split at | questions | " + " | ".join(outcomes) + " | median position in greedy's response |")
    print("|---|---:|" + "---:|" * len(outcomes) + "---:|")
    for cls in sorted(table, key=lambda c: -sum(table[c].values())):
        pos = sorted(where[cls])
        print(f"| {cls} | {sum(table[cls].values())} | " + " | ".join(str(table[cls][o]) for o in outcomes)
              + f" | {pos[len(pos) // 2]:.2f} |")
    if args.by_flips:
        by_flips(base, run, docs, Path(args.llm2) / "trace.jsonl", outcomes)
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": len(docs), "identical": same,
                                               "table": {c: dict(t) for c, t in table.items()}, "rows": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
