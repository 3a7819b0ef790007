"""Decoding throughput: plain transformers greedy vs LLM2 at batch 1 and batch 8/16, on the same prompts.

Prints a table and a JSON object with generated tokens/s, the mean candidate-set size |V_t|, the share of
steps where the verifier was skipped (|V_t| = 1) and the verifier's token forwards per generated token (prompt,
pending tokens and candidate slots: its work, which sets its cost where the CPU is compute-bound). Every
configuration generates exactly ``--new-tokens`` tokens per prompt (EOS ignored), so the numbers compare the same
work.

    python benchmarks/decode.py --model /path/to/llm [--verifier /path/to/verifier] --dtype bfloat16 \
        --prompts 16 --new-tokens 64 --batch-sizes 1,8,16 [--head [HEAD_DIR]] [--json out.json]

Without ``--verifier`` an untrained verifier is initialised from the LLM in a temporary directory (scores are
then noise, but the compute is the same as with a trained one). Prompts are the first GSM8K test questions of
``$LLM2_DATA_DIR/gsm8k/test.jsonl`` in the model's chat template.

``--random-weights`` times the same architecture with random weights (only ``config.json`` and the tokenizer are
read: for a GPU machine the real weights cannot reach). Random weights give near-uniform next-token distributions,
so pin the candidate set with ``--top-k K``: every step then scores K candidates, more verifier work than a real
model's alpha mask asks for (most of its steps have one plausible token and skip the verifier).

``--prepack`` (CPU) prepacks the linear weights of the LLM and the verifier for oneDNN and gives SDPA their grouped
key/value heads as they are (:mod:`llm2_eval.cpu_kernels`, the ``cpu_prepack`` model arg) for the LLM2 rows; plain HF greedy is then timed
twice, on a dense copy of the LLM (``hf greedy``, what ``--model hf`` runs) and on the prepacked one
(``hf greedy prepacked``: the like-for-like baseline), and both ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.loading import resolve_dtype
from llm2_eval.verifier import init_verifier, load_verifier


def load_prompts(tokenizer, n: int) -> list[str]:
    data = Path(os.environ.get("LLM2_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = data / "gsm8k" / "test.jsonl"
    if not path.exists():
        sys.exit(f"GSM8K test data not found at {path}; set LLM2_DATA_DIR")
    qs = [json.loads(line)["question"] for line in path.open()][:n]
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in qs
    ]


def chunks(xs, n):
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


def run_hf(llm, tok, prompts, bs, new_tokens) -> float:
    t0 = time.perf_counter()
    for part in chunks(prompts, bs):
        enc = tok(part, return_tensors="pt", padding=True).to(llm.device)
        with torch.inference_mode():
            llm.generate(**enc, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=tok.pad_token_id)
    if llm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_llm2(llm, ver, tok, prompts, bs, cfg):
    stats = []
    t0 = time.perf_counter()
    for part in chunks(prompts, bs):
        enc = tok(part, return_tensors="pt", padding=True).to(llm.device)
        out = generate(llm, enc.input_ids, enc.attention_mask, cfg, verifier=ver, tokenizer=tok)
        stats += out.stats
    return time.perf_counter() - t0, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--verifier")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=0.25)
    ap.add_argument("--top-k", type=int, default=0, help="fixed candidate count instead of the alpha mask (0 = off)")
    ap.add_argument("--max-candidates", type=int, default=0)
    ap.add_argument("--random-weights", action="store_true", help="random weights with the model's config")
    ap.add_argument("--prepack", action="store_true", help="prepack linear weights for oneDNN (CPU; see above)")
    ap.add_argument("--head", nargs="?", const="random", default=None,
                    help="also time LLM2 with a head verifier on the LLM's own backbone (the fused step, "
                    "llm2_eval/fused.py): a head directory, or nothing for a random linear head (same compute)")
    ap.add_argument("--no-separate", action="store_true",
                    help="skip the separate-verifier LLM2 rows (e.g. to time only --head against greedy)")
    ap.add_argument("--json", help="also write the JSON result here")
    args = ap.parse_args()

    dtype = resolve_dtype(args.dtype)
    if args.random_weights:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from random_weights import materialize

        args.model = materialize(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    llm = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    tmp = None
    vpath = args.verifier
    if vpath is None and not args.no_separate:
        tmp = tempfile.TemporaryDirectory(prefix="llm2-bench-")
        vpath = init_verifier(args.model, Path(tmp.name) / "verifier", dtype=args.dtype)
    ver = None if args.no_separate else load_verifier(vpath, dtype=dtype, device=args.device)
    dense = llm
    if args.prepack:
        from llm2_eval.cpu_kernels import prepack_linears, use_gqa_attention

        dense = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        for m in (x for x in (llm, ver) if x is not None):  # what the cpu_prepack model arg does
            prepack_linears(m)
            use_gqa_attention(m)
    head_ver = None
    if args.head == "random":
        from llm2_eval.head_verifier import HeadVerifier, ScoreHead

        head = ScoreHead(llm.config.get_text_config().hidden_size).to(dtype)
        torch.nn.init.normal_(head.linear.weight, std=0.05)
        head_ver = HeadVerifier(llm, head).eval()
    elif args.head:
        head_ver = load_verifier(args.head, llm=llm)
    prompts = load_prompts(tok, args.prompts)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    total = len(prompts) * args.new_tokens
    cfg = DecodeConfig(alpha=args.alpha, top_k=args.top_k, max_candidates=args.max_candidates or None,
                       beta=args.beta, max_new_tokens=args.new_tokens, eos_token_ids=())
    plain = DecodeConfig(beta=0.0, max_new_tokens=args.new_tokens, eos_token_ids=())

    # warm-up (first calls pay one-off costs)
    run_llm2(llm, ver or head_ver, tok, prompts[:2], 2, DecodeConfig(alpha=args.alpha, beta=args.beta,
                                                                     max_new_tokens=4))
    run_hf(llm, tok, prompts[:2], 2, 4)
    if dense is not llm:
        run_hf(dense, tok, prompts[:2], 2, 4)

    rows = []

    def show(row):  # print each configuration as soon as it is measured (long runs)
        print(f"{row['config']:<26}{row['tokens_per_s']:>10.1f} tok/s {row['seconds']:>8.1f} s", flush=True)

    for bs in sizes:
        t = run_hf(dense, tok, prompts, bs, args.new_tokens)
        rows.append({"config": f"hf greedy b{bs}", "batch": bs, "seconds": t, "tokens_per_s": total / t})
        show(rows[-1])
        if dense is not llm:
            t = run_hf(llm, tok, prompts, bs, args.new_tokens)
            rows.append({"config": f"hf greedy prepacked b{bs}", "batch": bs, "seconds": t, "tokens_per_s": total / t})
            show(rows[-1])
        t, _ = run_llm2(llm, None, tok, prompts, bs, plain)
        rows.append({"config": f"llm2 beta=0 b{bs}", "batch": bs, "seconds": t, "tokens_per_s": total / t})
        show(rows[-1])
        if ver is not None:
            t, st = run_llm2(llm, ver, tok, prompts, bs, cfg)
            steps = sum(s.steps for s in st)
            rows.append({
                "config": f"llm2 b{bs}", "batch": bs, "seconds": t, "tokens_per_s": total / t,
                "mean_candidates": sum(s.candidates for s in st) / steps,
                "verifier_skipped_share": sum(s.skipped_steps for s in st) / steps,
                "mean_flips_per_seq": statistics.mean(s.flips for s in st),
                # the verifier's work (prompt tokens read + pending tokens + candidate slots) per generated token
                "verifier_tokens_per_token": sum(s.verifier_tokens for s in st) / steps,
            })
            show(rows[-1])
        if head_ver is not None:
            t, st = run_llm2(llm, head_ver, tok, prompts, bs, cfg)
            steps = sum(s.steps for s in st)
            rows.append({"config": f"llm2 head fused b{bs}", "batch": bs, "seconds": t, "tokens_per_s": total / t,
                         "mean_candidates": sum(s.candidates for s in st) / steps,
                         "verifier_skipped_share": sum(s.skipped_steps for s in st) / steps,
                         "mean_flips_per_seq": statistics.mean(s.flips for s in st),
                         "verifier_tokens_per_token": 0.0,
                         "llm_tokens_per_token": sum(s.llm_tokens for s in st) / steps})
            show(rows[-1])
    by = {r["config"]: r for r in rows}
    ratios = {}
    if len(sizes) > 1 and ver is not None:
        ratios[f"llm2 b{sizes[-1]} / llm2 b{sizes[0]}"] = (
            by[f"llm2 b{sizes[-1]}"]["tokens_per_s"] / by[f"llm2 b{sizes[0]}"]["tokens_per_s"]
        )
    for bs in sizes:
        if head_ver is not None:  # like for like: greedy on the same weights and kernels (llm2 beta=0)
            ratios[f"llm2 head fused / llm2 beta=0 at b{bs}"] = (
                by[f"llm2 head fused b{bs}"]["tokens_per_s"] / by[f"llm2 beta=0 b{bs}"]["tokens_per_s"])
        if ver is None:
            continue
        ratios[f"llm2 / hf greedy at b{bs}"] = by[f"llm2 b{bs}"]["tokens_per_s"] / by[f"hf greedy b{bs}"]["tokens_per_s"]
        if args.prepack:
            ratios[f"llm2 / hf greedy prepacked at b{bs}"] = (
                by[f"llm2 b{bs}"]["tokens_per_s"] / by[f"hf greedy prepacked b{bs}"]["tokens_per_s"])
    result = {
        "model": args.model, "device": str(args.device), "dtype": args.dtype, "prompts": len(prompts),
        "new_tokens": args.new_tokens, "alpha": args.alpha, "top_k": args.top_k,
        "max_candidates": args.max_candidates, "beta": args.beta, "random_weights": args.random_weights,
        "prepack": args.prepack,
        "gpu": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else None,
        "torch_threads": torch.get_num_threads(), "rows": rows, "ratios": ratios,
    }
    print(f"{'config':<26}{'tok/s':>10}{'seconds':>10}{'|V_t|':>8}{'skipped':>9}{'ver tok/tok':>12}")
    for r in rows:
        extra = (f"{r['mean_candidates']:>8.2f}{r['verifier_skipped_share']:>9.2f}{r['verifier_tokens_per_token']:>12.2f}"
                 if "mean_candidates" in r else "")
        print(f"{r['config']:<26}{r['tokens_per_s']:>10.1f}{r['seconds']:>10.1f}{extra}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
