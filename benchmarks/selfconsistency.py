"""Self-consistency (maj@N) wall time: one shared prefill per question vs N independent requests.

For each question, N samples are drawn with the same seeds either
  - shared: ``generate(..., repeats=[N])``: the prompt is prefilled once by the LLM and by the verifier and
    both KV caches are expanded to N rows (what the ``llm2`` lm-eval model does with ``repeats``), or
  - independent: the N copies as N ordinary rows of one batch (each row prefilled on its own), i.e. the same
    batch shape and the same samples, without the sharing.
Both produce identical tokens (checked), so the ratio is the saving. Run for a 0-shot chat prompt and for an
8-shot prompt (8 GSM8K train solutions before the question), where the prefill dominates.

    python benchmarks/selfconsistency.py --model /path/to/llm [--verifier DIR] --dtype bfloat16 \
        --questions 2 --samples 8 --new-tokens 64 [--beta 0.25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.loading import resolve_dtype
from llm2_eval.verifier import init_verifier, load_verifier


def _data() -> Path:
    d = Path(os.environ.get("LLM2_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) / "gsm8k"
    if not (d / "test.jsonl").exists():
        sys.exit(f"GSM8K data not found in {d}; set LLM2_DATA_DIR")
    return d


def prompts(tokenizer, n: int, shots: int) -> list[str]:
    d = _data()
    tests = [json.loads(line) for line in (d / "test.jsonl").open()][:n]
    train = [json.loads(line) for line in (d / "train.jsonl").open()][:shots]
    instruction = '\n\nSolve step by step and end your response with "The answer is N."'
    messages = []
    for ex in train:
        solution = re.sub(r"<<[^>]*>>", "", ex["answer"]).split("####")
        messages += [
            {"role": "user", "content": ex["question"] + instruction},
            {"role": "assistant", "content": solution[0].strip() + f" The answer is {solution[1].strip()}."},
        ]
    return [
        tokenizer.apply_chat_template(messages + [{"role": "user", "content": t["question"] + instruction}],
                                      tokenize=False, add_generation_prompt=True)
        for t in tests
    ]


def run(llm, ver, tok, texts, n, cfg, shared: bool):
    outs, t0 = [], time.perf_counter()
    for qi, text in enumerate(texts):
        enc = tok([text], return_tensors="pt").to(llm.device)
        seeds = [1000 * qi + k for k in range(n)]
        if shared:
            out = generate(llm, enc.input_ids, enc.attention_mask, cfg, verifier=ver, seeds=seeds, repeats=[n])
        else:
            rows = torch.zeros(n, dtype=torch.long, device=llm.device)
            out = generate(llm, enc.input_ids[rows], enc.attention_mask[rows], cfg, verifier=ver, seeds=seeds)
        outs.append(out)
    return time.perf_counter() - t0, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--verifier")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.25)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--json")
    args = ap.parse_args()

    dtype = resolve_dtype(args.dtype)
    tok = AutoTokenizer.from_pretrained(args.model)
    llm = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    tmp = None
    ver = None
    if args.beta > 0:
        vpath = args.verifier
        if vpath is None:
            tmp = tempfile.TemporaryDirectory(prefix="llm2-bench-")
            vpath = init_verifier(args.model, Path(tmp.name) / "verifier", dtype=args.dtype)
        ver = load_verifier(vpath, dtype=dtype, device=args.device)
    cfg = DecodeConfig(beta=args.beta, do_sample=True, temperature=args.temperature,
                       max_new_tokens=args.new_tokens, eos_token_ids=())
    rows = []
    for shots in (0, 8):
        texts = prompts(tok, args.questions, shots)
        prompt_tokens = sum(len(tok(t).input_ids) for t in texts) / len(texts)
        run(llm, ver, tok, texts[:1], 2, DecodeConfig(beta=args.beta, max_new_tokens=2), True)  # warm-up
        t_shared, a = run(llm, ver, tok, texts, args.samples, cfg, shared=True)
        t_indep, b = run(llm, ver, tok, texts, args.samples, cfg, shared=False)
        same = all(x.tokens == y.tokens for x, y in zip(a, b))
        rows.append({
            "prompt": f"{shots}-shot", "mean_prompt_tokens": prompt_tokens, "shared_s": t_shared,
            "independent_s": t_indep, "speedup": t_indep / t_shared, "identical_samples": same,
        })
    result = {"model": args.model, "device": str(args.device), "dtype": args.dtype, "beta": args.beta,
              "questions": args.questions, "samples": args.samples, "new_tokens": args.new_tokens, "rows": rows}
    print(f"{'prompt':<8}{'tokens':>8}{'shared s':>10}{'indep. s':>10}{'speedup':>9}{'same':>6}")
    for r in rows:
        print(f"{r['prompt']:<8}{r['mean_prompt_tokens']:>8.0f}{r['shared_s']:>10.1f}{r['independent_s']:>10.1f}"
              f"{r['speedup']:>8.2f}x{str(r['identical_samples']):>6}")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
