"""Learning curves on the decision benchmark: for each recipe and data size, train a verifier, score it on
dev100.jsonl, append one row to curve.jsonl (resumable: rows already there are skipped), then plot curve.png.

    python curve.py --recipes outcome-linear,outcome-mlp,sample-head --sizes 125,250,500

A recipe is a label source + a trainable part:
- outcome-linear / outcome-mlp: train_outcome.jsonl (llm2 explore --strategy outcome), --objective outcome,
  --trainable head with a linear / MLP head;
- sample-head: ../heldout/train500.jsonl (sample-strategy negatives on self-gold solutions), pairwise, head;
- outcome-lora / sample-lora / divergence-lora: the same labels, a LoRA adapter (rank 16, all linear layers) on
  the LLM, trained with transformers' Trainer (--lora-epochs, --lora-lr), scored as a verifier model;
- divergence-head: pairs at the first token where a right and a wrong sample of a question part ways
  (from train_outcome.jsonl), pairwise, head.
Size = questions (the first N records of the file). Rows carry the benchmark's point count: when the benchmark
grows, re-running scores the verifiers already trained under work/ on the new points (no retraining).
CPU seconds per row = feature extraction + fitting (+ the label generation's share: the exploration summaries' seconds per question x N, added in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = os.environ.get("M", str(Path("~/.cache/llm2-eval/models/qwen2.5-coder-0.5b-instruct").expanduser()))
SOURCES = {
    "outcome": HERE / "train_outcome.jsonl",
    "sample": HERE.parent / "heldout" / "train500.jsonl",
    "divergence": HERE / "train_outcome.jsonl",
}


def first_records(src: Path, n: int, dst: Path) -> Path:
    lines = [x for x in src.read_text(encoding="utf-8").splitlines() if x.strip()][:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def divergence_pairs(src: Path, dst: Path, tokenizer) -> Path:
    """Triplet records from outcome records (``llm2 divergence-pairs``: the first token where a right and a wrong
    sample of a question part ways)."""
    sys.path.insert(0, str(HERE.parent.parent))
    from verifier_train.explore.divergence import write_divergence_pairs

    dst.unlink(missing_ok=True)  # this script's own file (work/), possibly from before the command existed
    write_divergence_pairs(src, dst, tokenizer)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="outcome-linear,outcome-mlp,sample-head")
    ap.add_argument("--sizes", default="125,250,500")
    ap.add_argument("--betas", default="0.25,0.5,1,2,4,8")
    ap.add_argument("--benchmark", default=str(HERE / "dev100.jsonl"))
    ap.add_argument("--outcome-data", default=None,
                    help="outcome records for the outcome and divergence recipes (default train_outcome.jsonl; "
                         "../scale/train_outcome_all.jsonl begins with the same 512 questions)")
    ap.add_argument("--epochs", type=float, default=10.0, help="head recipes")
    ap.add_argument("--lora-epochs", type=float, default=2.0, help="lora / full recipes")
    ap.add_argument("--lora-lr", type=float, default=1e-4, help="lora / full recipes")
    ap.add_argument("--lora-batch", type=int, default=16, help="lora / full recipes: samples (pairs: solutions) per step")
    args = ap.parse_args()
    if args.outcome_data:
        SOURCES["outcome"] = SOURCES["divergence"] = Path(args.outcome_data).resolve()
    sys.path.insert(0, str(HERE.parent.parent))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm2_eval.head_verifier import load_head
    from llm2_eval.verifier import load_verifier
    from verifier_train.decisions.score import candidate_hidden_states, evaluate, load_benchmark, verifier_scores_on
    from verifier_train.train import train_verifier

    bench = load_benchmark(args.benchmark)
    betas = [float(b) for b in args.betas.split(",")]
    rows_path = HERE / "curve.jsonl"
    rows = [json.loads(x) for x in rows_path.read_text().splitlines() if x.strip()] if rows_path.exists() else []
    points = len(bench.points)
    done = {(r["recipe"], r["size"], r.get("points", 64)) for r in rows}
    trained = {(r["recipe"], r["size"]): r["train_seconds"] for r in rows}  # verifiers already in work/
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    tok = AutoTokenizer.from_pretrained(MODEL)
    llm = hidden = None
    for recipe in args.recipes.split(","):
        source, part = recipe.split("-", 1)
        for n in map(int, args.sizes.split(",")):
            if (recipe, n, points) in done:
                continue
            out = work / f"ver_{recipe}_{n}"
            if (recipe, n) in trained and out.is_dir():  # benchmark grew: score the verifier trained before
                train_s, metrics, reused = trained[(recipe, n)], None, True
            else:
                available = sum(1 for x in SOURCES[source].read_text(encoding="utf-8").splitlines() if x.strip())
                if n > available:
                    print(f"{recipe} {n}: skipped, {SOURCES[source].name} has {available} records", flush=True)
                    continue
                t0 = time.time()
                res = train_verifier(train_config(recipe, n, out, tok, args))
                train_s, metrics, reused = time.time() - t0, res.metrics, res.card.get("reused_cache")
            if llm is None:
                llm = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16).eval()
            t0 = time.time()
            if part in ("linear", "mlp", "head"):
                if hidden is None:  # every head reads the same hidden states: computed once per run
                    hidden = candidate_hidden_states(bench, llm)
                head, _ = load_head(out)
                with torch.no_grad():
                    scores = {pid: head(h).squeeze(-1).tolist() for pid, h in hidden.items()}
            else:  # lora / full: a verifier model of its own (an adapter loads onto the LLM's weights)
                with torch.no_grad():
                    scores = verifier_scores_on(bench, load_verifier(str(out), dtype="bfloat16", llm=llm))
            rep = evaluate(bench, scores, betas)
            row = {"recipe": recipe, "size": n, "points": points, "train_seconds": round(train_s, 1),
                   "score_seconds": round(time.time() - t0, 1), "reused_cache": reused,
                   "train_metrics": metrics, "all": rep["all"], "matter": rep["matter"]}
            with rows_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            best = rep["all"]["betas"][rep["all"]["best_beta"]]["gain"]
            print(f"{recipe} {n} ({points} points): best beta {rep['all']['best_beta']} gain {100 * best['mean']:+.2f} "
                  f"[{100 * best['ci95'][0]:+.1f}, {100 * best['ci95'][1]:+.1f}] pair acc "
                  f"{rep['matter']['pairs']['accuracy']} ({train_s:.0f} s)", flush=True)


def train_config(recipe: str, n: int, out: Path, tok, args):
    """The training config of one (recipe, size) row: its data (first n records; divergence pairs derived from
    outcome records), objective, and trainable part (head: cached features; lora: adapter, --lora-epochs)."""
    from verifier_train.train import TrainConfig

    source, part = recipe.split("-", 1)
    work = out.parent
    data = first_records(SOURCES[source], n, work / f"{source}{n}.jsonl")
    if source == "divergence":
        data = divergence_pairs(data, work / f"divergence{n}.pairs.jsonl", tok)
    objective = "outcome" if source == "outcome" else "pairwise"
    common = dict(model=MODEL, data=[str(data)], output=str(out), objective=objective, eval_fraction=0.1,
                  eval_steps=10**9, progress=False, overwrite=True, balance=objective == "outcome")
    if part in ("lora", "full"):
        return TrainConfig(**common, trainable=part, lora=part == "lora",
                           lora_save="adapter" if part == "lora" else "merged", epochs=args.lora_epochs,
                           lr=args.lora_lr, global_batch=args.lora_batch, micro_batch=4, gradient_checkpointing=False)
    head = "mlp" if part == "mlp" else "linear"
    return TrainConfig(**common, trainable="head", head=head, head_hidden=256,
                       head_dropout=0.1 if head == "mlp" else 0.0, epochs=args.epochs, head_lr=1e-3)

if __name__ == "__main__":
    main()


def table_and_plot(rows_path: Path = HERE / "curve.jsonl", png: Path = HERE / "curve.png",
                   label_seconds: dict[str, float] | None = None) -> str:
    """The experiments/README.md table (markdown) of curve.jsonl's rows on the largest benchmark and a plot of decision gain vs CPU-hours, one line per recipe.

    ``label_seconds``: seconds of label generation per question, per label source (from the exploration
    summaries), added to each row's CPU cost.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in rows_path.read_text().splitlines() if x.strip()]
    latest = max(r.get("points", 64) for r in rows)  # rows scored on the benchmark at its current size
    rows = [r for r in rows if r.get("points", 64) == latest]
    order = list(dict.fromkeys(r["recipe"] for r in rows))  # recipes in the order first run, sizes ascending
    rows.sort(key=lambda r: (order.index(r["recipe"]), r["size"]))
    label_seconds = label_seconds or {}
    lines = ["| recipe | questions | gain at beta 1 | gain at beta 4 | gain, beta chosen on the other questions [95% CI] "
             "| best beta: its gain (biased) | pair accuracy (significant pairs) | changed at best beta "
             "| CPU-h (labels + training) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    fig, ax = plt.subplots(figsize=(6, 4))
    by_recipe: dict[str, list] = {}

    def fmt(f: dict, digits: int = 1) -> str:
        return f"{100 * f['mean']:+.2f} [{100 * f['ci95'][0]:+.{digits}f}, {100 * f['ci95'][1]:+.{digits}f}]"

    for r in rows:
        b = r["all"]["best_beta"]
        g = r["all"]["betas"][b]["gain"]
        held = r["all"].get("held_out_beta", {}).get("gain", g)  # rows scored before the held-out choice existed
        pa = r["matter"]["pairs"]
        source = r["recipe"].split("-", 1)[0]
        hours = (label_seconds.get(source, 0.0) * r["size"] + r["train_seconds"] + r["score_seconds"]) / 3600
        fixed = [r["all"]["betas"][k]["gain"] for k in ("1.0", "4.0")]
        lines.append(f"| {r['recipe']} | {r['size']} | {fmt(fixed[0])} | {fmt(fixed[1])} | {fmt(held, 2)} | "
                     f"{b}: {100 * g['mean']:+.2f} | {pa['accuracy']} [{pa['ci95'][0]:.2f}, {pa['ci95'][1]:.2f}] "
                     f"(n={pa['pairs']}) | {100 * r['all']['betas'][b]['changed']:.1f}% | {hours:.2f} |")
        by_recipe.setdefault(r["recipe"], []).append(
            (hours, 100 * held["mean"], 100 * held["ci95"][0], 100 * held["ci95"][1]))
    for name, pts in by_recipe.items():
        pts.sort()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.errorbar(xs, ys, yerr=[[y - p[2] for y, p in zip(ys, pts)], [p[3] - y for y, p in zip(ys, pts)]],
                    marker="o", capsize=3, label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("CPU-hours (labels + training + scoring)")
    ax.set_ylabel("decision gain, held-out beta (points of q)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return "\n".join(lines)
