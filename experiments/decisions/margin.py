"""Would LLM2 gain if the verifier flipped the LLM's token only when it is sure? Read on the decision benchmark.

The hypothesis (from the split-half oracle and the traces of the full-scale runs): most of LLM2's flips happen where
the candidates are worth the same, so they re-draw the answer without improving it; a verifier that overrides the
LLM only by a large score margin might keep the few useful flips and drop the noise ones.

The rule, at beta ``--beta`` over the plausible candidates (``p >= alpha * p_max``, the benchmark's alpha): LLM2's
choice ``c = argmax z + beta * s`` (paper Eq. 3), taken only when ``s(c) - s(argmax z) >= tau`` (the **score
margin**), else the LLM's own token. ``tau = -inf`` is plain LLM2. A second gate, the **objective margin**
``(z + beta * s)(c) - (z + beta * s)(argmax z) >= tau``, is read beside it. Neither rule looks at the rollouts, so
its decision gain ``q(choice) - q(argmax z)`` (q = right rollouts / rollouts) is unbiased on every point; tau is
also chosen per question on the other questions (leave one question out, as ``llm2 decisions score`` chooses beta),
which is the number to read.

Run from this directory in the project env (a few minutes on 2 CPU cores; the head's scores are cached in
``--cache``): ``python margin.py --verifier ../../verifiers/qwen2.5-coder-0.5b-gsm8k-divergence-head``
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from verifier_train.decisions.score import (_q, _summary, held_out_beta_gain, load_benchmark, plausible,
                                            verifier_scores_on)

TAUS = [-math.inf, 0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5]


def head_scores(bench, verifier: str, model: str, cache: Path) -> dict[str, list[float]]:
    """The verifier's score of every stored candidate (``{point id: [s per candidate]}``), read from ``cache`` when
    it was computed for the same benchmark and verifier."""
    key = {"benchmark": os.path.abspath(bench.path), "verifier": os.path.abspath(verifier)}
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return data["scores"]
    from transformers import AutoModelForCausalLM

    from llm2_eval.verifier import load_verifier

    llm = AutoModelForCausalLM.from_pretrained(model, dtype="bfloat16").eval()
    scores = verifier_scores_on(bench, load_verifier(verifier, dtype="bfloat16", llm=llm))
    cache.write_text(json.dumps({"key": key, "scores": scores}))
    return scores


def gains(bench, scores, beta: float, tau: float, gate: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per question, the decision gain of each point and whether the choice differs from the LLM's token."""
    alpha = float(bench.settings.get("alpha", 0.1))
    gain: dict[str, list[float]] = {q: [] for q in bench.questions}
    changed: dict[str, list[float]] = {q: [] for q in bench.questions}
    for p in bench.points:
        c, s = p["candidates"], scores[p["id"]]
        narrow = plausible(c, alpha)
        base = max(narrow, key=lambda i: c[i]["logprob"])
        obj = {i: c[i]["logprob"] + beta * s[i] for i in narrow}
        pick = max(narrow, key=lambda i: (obj[i], i == base))
        margin = s[pick] - s[base] if gate == "score" else obj[pick] - obj[base]
        if pick != base and margin < tau:
            pick = base
        gain[p["question"]].append(_q(c[pick]) - _q(c[base]))
        changed[p["question"]].append(float(pick != base))
    return gain, changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", default="dev100.jsonl")
    ap.add_argument("--verifier", required=True)
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/llm2-eval/models/qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--cache", default="work/margin_scores.json", help="the head's scores (git-ignored work dir)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    bench = load_benchmark(args.benchmark)
    cache = Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    scores = head_scores(bench, args.verifier, args.model, cache)
    out = {"benchmark": args.benchmark, "verifier": args.verifier, "beta": args.beta, "points": len(bench.points),
           "questions": len(bench.questions), "gates": {}}
    print(f"{args.benchmark}: {len(bench.points)} points of {len(bench.questions)} questions; beta {args.beta}; "
          "decision gain in points of q per decision (95% bootstrap interval over questions)")
    for gate in ("score", "objective"):
        per_tau, rows = {}, {}
        for tau in TAUS:
            g, ch = gains(bench, scores, args.beta, tau, gate)
            per_tau[str(tau)] = g
            summ = _summary(g, 0)
            rows[str(tau)] = {"gain": summ, "changed": _summary(ch, 0)["mean"]}
        held = held_out_beta_gain(per_tau)
        out["gates"][gate] = {"taus": rows, "held_out_tau": held}
        print(f"\n{gate} margin gate")
        for tau, r in rows.items():
            lo, hi = r["gain"]["ci95"]
            print(f"  tau {tau:>5}: gain {100 * r['gain']['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}], "
                  f"changed {100 * r['changed']:.1f}%")
        lo, hi = held["gain"]["ci95"]
        print(f"  tau chosen on the other questions: {100 * held['gain']['mean']:+.2f} [{100 * lo:+.2f}, "
              f"{100 * hi:+.2f}]; chosen {held['chosen']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
