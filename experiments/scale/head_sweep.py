"""The divergence head's optimisation settings, scored on the decision benchmark (../decisions/dev100.jsonl).

Found while scaling: ../decisions/curve.py trains pairwise heads with --head-batch 4096 pairs and 10 epochs, so the
divergence-head rows got 1-2 optimizer steps (490 training pairs at 512 questions: 2 steps). This sweep trains the
same head (first-divergence pairs of the first N questions of train_outcome_all.jsonl, linear, pairwise loss) with
smaller batches and more epochs and scores each on the benchmark; one row per setting in head_sweep.jsonl
(resumable: settings already there are skipped).

    python head_sweep.py --n 1024 --settings 4096:10:1e-3,64:10:1e-3,64:50:1e-3,256:100:1e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent / "decisions"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True, help="questions (the first N records of the outcome file)")
    ap.add_argument("--settings", required=True, help="head_batch:epochs:head_lr[:weight_decay], comma separated")
    ap.add_argument("--betas", default="0.1,0.25,0.5,1,2,4")
    ap.add_argument("--data", default=str(HERE / "train_outcome_all.jsonl"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curve import MODEL
    from llm2_eval.head_verifier import load_head
    from verifier_train.decisions.score import candidate_hidden_states, evaluate, load_benchmark
    from verifier_train.explore.divergence import write_divergence_pairs
    from verifier_train.train import TrainConfig, train_verifier

    tok = AutoTokenizer.from_pretrained(MODEL)
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    pairs = work / f"pairs_{args.n}.jsonl"
    counts = write_divergence_pairs(args.data, pairs, tok, limit=args.n, overwrite=True)
    if counts["questions"] < args.n:
        sys.exit(f"{args.data} has {counts['questions']} questions, fewer than --n {args.n}")
    bench = load_benchmark(str(HERE.parent / "decisions" / "dev100.jsonl"))
    betas = [float(b) for b in args.betas.split(",")]
    rows_path = HERE / "head_sweep.jsonl"
    done = {(r["n"], r["setting"]) for r in map(json.loads, rows_path.read_text().splitlines())} if rows_path.exists() else set()
    hidden = None
    for setting in args.settings.split(","):
        if (args.n, setting) in done:
            continue
        batch, epochs, lr, *wd = setting.split(":")
        out = work / f"head_{args.n}_{setting.replace(':', '_')}"
        t0 = time.time()
        res = train_verifier(TrainConfig(
            model=MODEL, data=[str(pairs)], output=str(out), objective="pairwise", trainable="head", head="linear",
            epochs=float(epochs), head_lr=float(lr), head_batch=int(batch), weight_decay=float(wd[0]) if wd else 0.0,
            eval_fraction=0.1, eval_steps=10**9, progress=False, overwrite=True))
        train_s = time.time() - t0
        if hidden is None:
            llm = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16).eval()
            hidden = candidate_hidden_states(bench, llm)
        head, _ = load_head(out)
        with torch.no_grad():
            scores = {pid: head(h).squeeze(-1).tolist() for pid, h in hidden.items()}
        rep = evaluate(bench, scores, betas)
        row = {"n": args.n, "setting": setting, "pairs": counts["pairs"], "steps": res.card.get("steps"),
               "train_seconds": round(train_s, 1), "train_metrics": res.metrics,
               "held_out_beta": rep["all"]["held_out_beta"], "betas": {b: v["gain"] for b, v in rep["all"]["betas"].items()},
               "pair_accuracy": rep["matter"]["pairs"]}
        with rows_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        g = rep["all"]["held_out_beta"]["gain"]
        print(f"n {args.n} {setting}: steps {row['steps']}, held-out pair acc {res.metrics.get('eval_pair_accuracy')}, "
              f"benchmark gain at held-out beta {100 * g['mean']:+.2f} [{100 * g['ci95'][0]:+.2f}, {100 * g['ci95'][1]:+.2f}] "
              f"(chosen {rep['all']['held_out_beta']['chosen']}), pair acc {rep['matter']['pairs']['accuracy']}", flush=True)


if __name__ == "__main__":
    main()
