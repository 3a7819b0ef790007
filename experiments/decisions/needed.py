"""How good must a verifier be? The decision benchmark read with verifiers of known quality (no model forward).

Two questions about ``dev100.jsonl`` (a candidate's value q = right rollouts / 16):

1. **How much of the oracle's gain is real?** The oracle picks the candidate with the highest *measured* q and is
   scored with the same 16 rollouts, so part of its +4.0 points of q per decision is the maximum of noisy estimates.
   Split each candidate's 16 rollouts at random into two halves of 8 (given c right of 16, the right ones in a half
   follow the hypergeometric law), pick with half A, score with half B: an unbiased oracle that knows q from 8
   rollouts. The same pick scored with half A shows the bias at 8 rollouts.
2. **What pair accuracy does a gain need?** A synthetic verifier scores ``s(v) = q_A(v) + sigma * noise`` (standard
   normal noise, one draw per candidate): the larger sigma, the worse it ranks. For each sigma, its pair accuracy on
   the benchmark's significant pairs (Fisher at 0.05 on the full 16-rollout counts, as ``llm2 decisions score``
   reports it for real verifiers) and its decision gain at the held-out beta, scored with half B.

Numbers are means over ``--splits`` random splits (the interval is the spread of the split means: 2.5 and 97.5
percentiles), with the benchmark's own bootstrap interval of the first split for scale. Run from this directory in
the project env: ``python needed.py [--splits 20] [--json needed.json]`` (seconds per split).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np

from verifier_train.decisions.score import (evaluate, held_out_beta_gain, load_benchmark, plausible,
                                           significant_pairs)

BETAS = (0.25, 0.5, 1, 2, 4, 8, 16, 32)
SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 2.0)


def split_halves(bench, rng: np.random.Generator):
    """Two copies of ``bench`` whose candidates hold disjoint halves of each candidate's rollouts (8 + 8 of 16)."""
    a, b = copy.deepcopy(bench), copy.deepcopy(bench)
    for pa, pb in zip(a.points, b.points):
        for ca, cb in zip(pa["candidates"], pb["candidates"]):
            n, c = ca["rollouts"], ca["correct"]
            if n < 2:
                raise SystemExit(f"point {pa['id']}: a candidate with {n} rollouts cannot be split in two halves")
            k = int(rng.hypergeometric(c, n - c, n // 2)) if n else 0
            ca["correct"], ca["rollouts"] = k, n // 2
            cb["correct"], cb["rollouts"] = c - k, n - n // 2
    return a, b


def oracle_split(half_a, half_b, alpha: float) -> tuple[float, float]:
    """Mean gain per decision of picking the plausible candidate with the best q in half A, scored with half A
    (biased: selection on the same noise) and with half B (unbiased)."""
    on_a, on_b = [], []
    for pa, pb in zip(half_a.points, half_b.points):
        ca, cb = pa["candidates"], pb["candidates"]
        narrow = plausible(ca, alpha)
        base = max(narrow, key=lambda i: ca[i]["logprob"])
        qa = [c["correct"] / c["rollouts"] for c in ca]
        qb = [c["correct"] / c["rollouts"] for c in cb]
        best = max(narrow, key=lambda i: (qa[i], i == base))
        on_a.append(qa[best] - qa[base])
        on_b.append(qb[best] - qb[base])
    return float(np.mean(on_a)), float(np.mean(on_b))


def significant(bench) -> dict[str, list[tuple[int, int]]]:
    """The full benchmark's significant candidate pairs per point (all stored candidates, 16-rollout counts)."""
    return {p["id"]: significant_pairs(p["candidates"], list(range(len(p["candidates"])))) for p in bench.points}


def pair_accuracy(sig: dict[str, list[tuple[int, int]]], scores: dict[str, list[float]]) -> float:
    """Share of the significant pairs ``sig`` that ``scores`` order right (ties one half), as ``llm2 decisions
    score`` counts it."""
    right, n = 0.0, 0
    for pid, pairs in sig.items():
        s = scores[pid]
        for better, worse in pairs:
            right += 1.0 if s[better] > s[worse] else 0.5 if s[better] == s[worse] else 0.0
            n += 1
    return right / n if n else float("nan")


def held_out_gain(half_b, scores: dict[str, list[float]], alpha: float, seed: int) -> dict:
    """Decision gain at the held-out beta (:func:`held_out_beta_gain`), scored with ``half_b``'s values; LLM2's
    choice as in :func:`verifier_train.decisions.score.evaluate` (argmax of log-probability + beta * score over the
    plausible candidates, ties to the LLM's own token)."""
    per_beta = {str(beta): {q: [] for q in half_b.questions} for beta in BETAS}
    for p in half_b.points:
        c, s = p["candidates"], scores[p["id"]]
        narrow = plausible(c, alpha)
        base = max(narrow, key=lambda i: c[i]["logprob"])
        q = [x["correct"] / x["rollouts"] for x in c]
        for beta in BETAS:
            pick = max(narrow, key=lambda i: (c[i]["logprob"] + beta * s[i], i == base))
            per_beta[str(beta)][p["question"]].append(q[pick] - q[base])
    return held_out_beta_gain(per_beta, seed)["gain"]


def one_split(bench, sig, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    half_a, half_b = split_halves(bench, rng)
    alpha = float(bench.settings.get("alpha", 0.1))
    row = {"seed": seed}
    row["oracle_8_on_a"], row["oracle_8_on_b"] = oracle_split(half_a, half_b, alpha)
    row["sigmas"] = {}
    for sigma in SIGMAS:
        scores = {p["id"]: [c["correct"] / c["rollouts"] + sigma * float(rng.standard_normal())
                            for c in p["candidates"]] for p in half_a.points}
        gain = held_out_gain(half_b, scores, alpha, seed)
        row["sigmas"][str(sigma)] = {"pair_accuracy": pair_accuracy(sig, scores), "held_out_gain": gain["mean"],
                                     "held_out_gain_ci95": gain["ci95"]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", default="dev100.jsonl")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--json", help="write every split's numbers here")
    args = ap.parse_args()
    bench = load_benchmark(args.benchmark)
    sig = significant(bench)
    oracle_full = evaluate(bench, None, [])["all"]["oracle"]["mean"]
    rows = [one_split(bench, sig, seed) for seed in range(args.splits)]

    def spread(values) -> str:
        v = np.array(values, dtype=float) * 100
        lo, hi = np.percentile(v, [2.5, 97.5])
        return f"{v.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"

    print(f"{len(bench.points)} points, {args.splits} random 8 + 8 splits of the 16 rollouts; points of q per decision, "
          "mean over splits [2.5, 97.5 percentiles of the split means]")
    print(f"oracle, picked and scored with all 16 rollouts (as reported): {oracle_full * 100:+.2f}")
    print(f"oracle, picked with half A, scored with half A (biased):      {spread([r['oracle_8_on_a'] for r in rows])}")
    print(f"oracle, picked with half A, scored with half B (unbiased):    {spread([r['oracle_8_on_b'] for r in rows])}")
    print()
    print("| sigma (score noise) | pair accuracy on the significant pairs | decision gain at the held-out beta, "
          "scored with half B | its bootstrap 95% interval (first split) |")
    print("|---:|---:|---:|---:|")
    for sigma in SIGMAS:
        cells = [r["sigmas"][str(sigma)] for r in rows]
        acc = np.mean([c["pair_accuracy"] for c in cells])
        lo, hi = cells[0]["held_out_gain_ci95"]
        print(f"| {sigma} | {acc:.2f} | {spread([c['held_out_gain'] for c in cells])} | "
              f"[{lo * 100:+.2f}, {hi * 100:+.2f}] |")
    if args.json:
        Path(args.json).write_text(json.dumps({"oracle_full": oracle_full, "splits": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
