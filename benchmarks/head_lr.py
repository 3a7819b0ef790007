"""Head learning-rate sweep in the learning-check world (docs/learning-check.md, "Head learning rate").

A new zero score head passes no gradient to the backbone until it moves, so ``llm2 train-verifier`` gives it its
own learning rate (``--head-lr``, default ``HEAD_LR_FACTOR`` x ``--lr``). This script trains one verifier per
factor on the learning check's exploration output (backbone lr ``--lr``, zero head) and decodes the held-out
problems with LLM2 (:func:`verifier_train.learning_check.decode_problems`), printing one JSON line per factor and
a table: held-out pair accuracy, held-out loss (Eq. 4), LLM2 accuracy and the flips.

    python benchmarks/learning.py --workdir /tmp/llm2-learning          # once: the flawed LLM and its triplets
    python benchmarks/head_lr.py --workdir /tmp/llm2-learning --factors 1,10,50,250,1000,5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm2_eval.verifier import load_verifier  # noqa: E402
from verifier_train.learning_check import decode_problems  # noqa: E402
from verifier_train.train import TrainConfig, train_verifier  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="A workdir of benchmarks/learning.py (llm/, triplets.jsonl, "
                    "test.jsonl).")
    ap.add_argument("--factors", default="1,10,50,250,1000,5000", help="Comma-separated head lr / lr factors.")
    ap.add_argument("--lr", type=float, default=2e-5, help="Backbone learning rate (train-verifier's default).")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    for name in ("llm", "triplets.jsonl", "test.jsonl"):
        if not (work / name).exists():
            sys.exit(f"{work / name} is missing: run benchmarks/learning.py --workdir {work} first")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    test = [json.loads(line) for line in (work / "test.jsonl").open(encoding="utf-8") if line.strip()]
    tok = AutoTokenizer.from_pretrained(work / "llm")
    llm = AutoModelForCausalLM.from_pretrained(work / "llm", dtype=torch.float32).eval()
    rows = []
    for factor in (float(x) for x in args.factors.split(",")):
        out = work / f"head_lr_{factor:g}"
        t = time.perf_counter()
        res = train_verifier(TrainConfig(
            model=str(work / "llm"), data=[str(work / "triplets.jsonl")], output=str(out), lr=args.lr,
            head_lr=args.lr * factor, head_init="zero", epochs=args.epochs, global_batch=16, micro_batch=16,
            bf16=False, gradient_checkpointing=False, eval_fraction=0.1, eval_steps=10_000, logging_steps=10_000,
            warmup_ratio=0.1, max_length=512, progress=False, overwrite=True, save_steps=10_000,
        ))
        seconds = time.perf_counter() - t
        verifier = load_verifier(out, dtype=torch.float32).eval()
        d = decode_problems(llm, tok, test, verifier=verifier, beta=args.beta, alpha=args.alpha)
        row = {"factor": factor, "head_lr": args.lr * factor, "eval_pair_accuracy": res.metrics.get("eval_pair_accuracy"),
               "eval_loss": res.metrics.get("eval_loss"), "llm2_accuracy": d.accuracy, "flips": d.flips,
               "fixing": d.flips_fixing, "breaking": d.flips_breaking, "train_seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{len(test)} held-out problems, backbone lr {args.lr:g}, {args.epochs:g} epochs, beta {args.beta:g}\n")
    print("| head lr / lr | held-out pair accuracy | held-out loss | LLM2 accuracy | flips (fixing / breaking) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['factor']:g} | {r['eval_pair_accuracy']:.3f} | {r['eval_loss']:.3f} | "
              f"{100 * r['llm2_accuracy']:.1f}% | {r['flips']} ({r['fixing']} / {r['breaking']}) |")
    return rows


if __name__ == "__main__":
    main()
