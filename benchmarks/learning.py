"""Benchmark: does the whole LLM2 loop learn? The end-to-end learning check as a table (docs/method.md sections 3, 4, 6).

In the synthetic world of :mod:`verifier_train.synthetic` (GSM8K-shaped two-step additions; a tiny LLM trained on
solutions that drop most needed carries and slip some ones digits), the check runs the real pipeline: ``explore``
with rollouts on training problems -> ``train_verifier`` (pairwise loss) -> greedy LLM2 decoding of held-out
problems, against greedy decoding (beta 0) on the same problems, and against a verifier trained with the
preference reversed (the control: it must end below greedy). Prints a table and one JSON object (also written
to ``--json-out``).

    python benchmarks/learning.py --workdir /tmp/llm2-learning      # about 2-4 minutes on 2 CPU cores
    python benchmarks/learning.py --beta 0.25 --train-problems 300   # other settings (see --help)

Reading it: ``greedy`` is the flawed LLM alone (right only where no carry is needed); ``LLM2`` must be far above
it; ``reversed`` must be below it. ``flips/problem`` counts the steps where the verifier changed the LLM's choice;
``fixing`` are those that replaced a wrong digit of a sum by the right one, ``breaking`` the reverse.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from verifier_train.learning_check import CheckConfig, run_learning_check  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    d = CheckConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=None, help="Where the LLM, data and verifiers go (default: a temp dir). "
                    "An existing workdir/llm is reused; the exploration output must not exist or match.")
    ap.add_argument("--train-problems", type=int, default=d.train_problems)
    ap.add_argument("--test-problems", type=int, default=d.test_problems)
    ap.add_argument("--alpha", type=float, default=d.alpha)
    ap.add_argument("--beta", type=float, default=d.beta)
    ap.add_argument("--rollouts", type=int, default=d.rollouts)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--no-reversed", action="store_true", help="Skip the reversed-preference control.")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest).")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CheckConfig(
        train_problems=args.train_problems, test_problems=args.test_problems, alpha=args.alpha, beta=args.beta,
        rollouts=args.rollouts, lr=args.lr, epochs=args.epochs, reversed_control=not args.no_reversed,
    )
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llm2-learning-"))
    t0 = time.perf_counter()
    res = run_learning_check(work, cfg, log=lambda m: print(f"[{time.perf_counter() - t0:6.1f} s] {m}", flush=True))
    rows = [("greedy (beta 0)", res["greedy"], None)]
    rows.append((f"LLM2 (beta {cfg.beta})", res["llm2"], res["heldout_pair_accuracy"]))
    if cfg.reversed_control:
        rows.append((f"reversed control (beta {cfg.beta})", res["reversed"], res["reversed_heldout_pair_accuracy"]))
    n = res["greedy"]["problems"]
    print(f"\n{n} held-out problems; {res['explore']['examples']} explored, {res['pairs']} training pairs\n")
    print("| run | accuracy | held-out pair accuracy | flips/problem | fixing | breaking |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r, acc in rows:
        pair = f"{acc:.3f}" if acc is not None else "-"
        print(f"| {name} | {100 * r['accuracy']:.1f}% ({r['correct']}/{n}) | {pair} | {r['flips'] / n:.2f} | "
              f"{r['flips_fixing']} | {r['flips_breaking']} |")
    print("\nwall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["seconds"].items()))
    out = {"config": {k: v for k, v in vars(args).items()}, **res}
    print(json.dumps(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
