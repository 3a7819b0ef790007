"""Benchmark: verifier-training throughput (pairs/s) with packing vs one sequence per pair (docs/method.md section 6).

Each method trains the same verifier on the same pairs: forward + pairwise loss (paper Eq. 4) + backward, fp32
master weights with bf16 autocast (``--bf16``, the default where supported) or fp32, plus the AdamW step. As in
real training, both methods take one optimizer step per global batch holding the same pairs (``--updates-of``
solutions' worth), so the measured AdamW step time is charged per pair, identically to every method (reported
separately; the forward+backward-only rate is in the JSON too).

- ``packed``: all negatives of a solution in one sequence (:mod:`verifier_train.packing`), ``--micro-batch``
  solutions per step: what ``llm2 train-verifier`` does.
- ``per-pair``: one sequence per pair, ``x_0..x_pos`` (gold at ``pos``) + one negative slot, ``--pair-batch``
  sequences per step. The goal ratio is ``packed / per-pair`` (>= 5x).
- ``two-seq`` (``--two-seq``): the naive form, two plain causal sequences per pair (``x_<pos + gold``,
  ``x_<pos + neg``), ``--pair-batch`` pairs per step.

The methods run interleaved, step by step, until each has ``--seconds`` of timed steps (after ``--warmup`` untimed
ones), so a shared machine's changing load hits them alike; per-pair methods draw pairs in a shuffled order so a
time-limited subset is representative. Prints a table and one JSON object (also written to ``--json-out``).

Default: a tiny random Qwen2 (hidden 256, 4 layers) with synthetic solutions of realistic length (GSM8K-like: about
``--prompt-tokens`` + ``--response-tokens`` tokens, ``--pairs`` pairs per solution, two negatives per position as
exploration's default n=2), a few minutes on a 2-core CPU::

    python benchmarks/train.py
    python benchmarks/train.py --model /work/models/qwen2.5-coder-0.5b-instruct --solutions 8 --micro-batch 1 \
        --pair-batch 4 --seconds 60 --warmup 1 --min-steps 2
    python benchmarks/train.py --model LLM_DIR --data triplets.jsonl      # real pairs (docs/method.md section 5 format)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm2_eval.loading import build_verifier  # noqa: E402
from verifier_train.packing import PackedCollator, pack_solution  # noqa: E402
from verifier_train.records import chat_token_ids, check_samples, iter_records, response_start  # noqa: E402
from verifier_train.train import bf16_supported, pair_scores, pairwise_loss  # noqa: E402

WORDS = (
    "the a of to and is are has had how many much each every total left more less than apples eggs dollars hours "
    "she he they buys sells makes gives answer so then therefore"
).split()


def _text_of_tokens(tok, n_tokens: int, rng: random.Random) -> str:
    parts: list[str] = []
    while True:
        parts.append(str(rng.randint(0, 999)) if rng.random() < 0.3 else rng.choice(WORDS))
        text = " ".join(parts) + "."
        if len(tok(text, add_special_tokens=False)["input_ids"]) >= n_tokens:
            return text


def synthetic_records(tok, n: int, prompt_tokens: int, response_tokens: int, pairs: int, seed: int) -> list[dict]:
    """Solutions of about the given token lengths with ``pairs`` triplets each (two negatives per position)."""
    rng = random.Random(seed)
    vocab = len(tok)
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": _text_of_tokens(tok, prompt_tokens, rng)},
                {"role": "assistant", "content": _text_of_tokens(tok, response_tokens, rng)}]
        ids = chat_token_ids(tok, msgs)
        start = response_start(tok, msgs)
        positions = rng.sample(range(start, len(ids)), min((pairs + 1) // 2, len(ids) - start))
        samples = []
        for p in positions:
            for _ in range(2):
                if len(samples) < pairs:
                    neg = rng.randrange(vocab - 1)
                    samples.append([p, ids[p], neg if neg != ids[p] else vocab - 1])
        out.append({"id": i, "messages": msgs, "samples": samples})
    return out


def load_examples(tok, args) -> tuple[list[tuple[list[int], list[list[int]]]], str]:
    """``(token ids, samples)`` per solution, from ``--data`` or synthetic; validated."""
    if args.data:
        recs = [{"messages": r.messages, "samples": [list(s) for s in r.samples]} for r in iter_records(args.data)]
        recs = recs[: args.solutions]
        source = str(args.data)
    else:
        recs = synthetic_records(tok, args.solutions, args.prompt_tokens, args.response_tokens, args.pairs, args.seed)
        source = f"synthetic ({args.prompt_tokens}+{args.response_tokens} tokens, {args.pairs} pairs per solution)"
    out = []
    for r in recs:
        ids = chat_token_ids(tok, r["messages"])
        problem = check_samples(ids, r["samples"], len(tok))
        if problem:
            raise ValueError(f"bad record: {problem}")
        ex = pack_solution(ids, r["samples"], args.max_length)
        if ex.num_pairs:
            kept = sorted(r["samples"], key=lambda s: s[0])[: ex.num_pairs]
            out.append((ids, kept))
    return out, source


def two_seq_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Naive batch: rows ``2i`` / ``2i+1`` are ``x_<pos + gold`` / ``x_<pos + neg``, right-padded."""
    seqs = []
    for ids, (pos, gold, neg) in pairs:
        seqs += [ids[:pos] + [gold], ids[:pos] + [neg]]
    t = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), t), dtype=torch.long)
    last = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        last[i] = len(s) - 1
    return {"input_ids": input_ids, "attention_mask": attn, "last": last}


class Method:
    """One way of training on the pairs: its batches (cycled), a pair counter and a training step."""

    def __init__(self, name, batches, n_pairs_of, step_fn):
        self.name, self.batches, self.n_pairs_of, self.step_fn = name, batches, n_pairs_of, step_fn
        self.i = self.steps = self.pairs = self.tokens = 0
        self.seconds = 0.0

    def step(self, timed: bool) -> None:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        t0 = time.perf_counter()
        self.step_fn(b)
        if timed:
            self.seconds += time.perf_counter() - t0
            self.steps += 1
            self.pairs += self.n_pairs_of(b)
            self.tokens += int(b["input_ids"].numel())

    def result(self, opt_seconds_per_pair: float = 0.0) -> dict:
        total = self.seconds + opt_seconds_per_pair * self.pairs
        return {"method": self.name, "steps": self.steps, "fwd_bwd_seconds": round(self.seconds, 3),
                "optimizer_seconds": round(total - self.seconds, 3), "pairs": self.pairs,
                "pairs_per_s": self.pairs / total, "fwd_bwd_pairs_per_s": self.pairs / self.seconds,
                "padded_tokens_per_s": self.tokens / self.seconds, "tokens_per_pair": self.tokens / max(self.pairs, 1)}


def measure(methods: list[Method], seconds: float, warmup: int, min_steps: int, zero_grad) -> None:
    """Interleave the methods step by step (so a shared machine's changing load hits all of them alike) until each
    has ``seconds`` of timed forward+backward steps and at least ``min_steps`` steps, after ``warmup`` untimed
    steps each."""
    for _ in range(warmup):
        for m in methods:
            m.step(timed=False)
            zero_grad()
    while any(m.seconds < seconds or m.steps < min_steps for m in methods):
        for m in methods:
            if m.seconds < seconds or m.steps < min_steps:
                m.step(timed=True)
                zero_grad()


def time_optimizer_step(model, opt, reps: int = 3) -> float:
    """Median seconds of one AdamW step over all parameters (gradients filled with ones)."""
    times = []
    for _ in range(reps + 1):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        t0 = time.perf_counter()
        opt.step()
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
    return sorted(times[1:])[len(times[1:]) // 2]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="LLM directory (default: build a tiny random Qwen2 in a temp dir)")
    ap.add_argument("--data", help="triplet JSON Lines (docs/method.md section 5); default synthetic")
    ap.add_argument("--solutions", type=int, default=48, help="solutions to draw pairs from")
    ap.add_argument("--pairs", type=int, default=32, help="pairs per synthetic solution")
    ap.add_argument("--prompt-tokens", type=int, default=80)
    ap.add_argument("--response-tokens", type=int, default=180)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4, help="packed solutions per step")
    ap.add_argument("--pair-batch", type=int, default=16, help="pairs per step for the per-pair baselines")
    ap.add_argument("--seconds", type=float, default=30.0, help="timed forward+backward seconds per method")
    ap.add_argument("--updates-of", type=int, default=128,
                    help="solutions per optimizer step (the global batch): the AdamW step's time is charged to "
                         "every method per pair, at (this x mean pairs per solution) pairs per update")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--two-seq", action="store_true", help="also time the naive two-sequences-per-pair form")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--bf16", dest="bf16", action="store_true", default=None)
    prec.add_argument("--fp32", dest="bf16", action="store_false")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (default 1: on a shared CPU, OpenMP threads that wait for a busy core "
                         "slow small ops down by orders of magnitude; 0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-weights", action="store_true",
                    help="random weights with --model's config and tokenizer (timing only)")
    ap.add_argument("--json-out", help="also write the JSON result here")
    return ap.parse_args(argv)


def _model_source(args: argparse.Namespace) -> tuple["tempfile.TemporaryDirectory | None", str]:
    """Point ``args.model`` at the model to time (a tiny random Qwen2 built in a temporary directory without
    ``--model``; random weights with ``--random-weights``); returns ``(temporary directory or None, model name)``."""
    tmp = None
    if args.model is None:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import build_tiny_llm

        tmp = tempfile.TemporaryDirectory()
        args.model = str(build_tiny_llm(Path(tmp.name) / "llm", seed=0, hidden=256, layers=4, heads=4, kv_heads=2))
        model_name = "tiny-qwen2 (hidden 256, 4 layers, random)"
    else:
        model_name = args.model
        if args.random_weights:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from random_weights import materialize

            args.model = materialize(args.model)
            model_name += " (random weights)"
    return tmp, model_name


def _print_report(report: dict, results: list[dict], updates_of: int, t_opt: float, pairs_per_update: float,
                  ratio: float) -> None:
    """The result table on stdout (times in seconds, throughputs per second), then the JSON line."""
    model_name, source = report["model"], report["data"]
    print(f"\nmodel: {model_name} | data: {source} | {report['device']} | {report['precision']}")
    print(f"AdamW step {t_opt:.3f} s per {pairs_per_update:.0f} pairs (global batch of {updates_of} solutions)")
    print(f"{'method':<10} {'steps':>6} {'pairs/s':>10} {'fwd+bwd pairs/s':>16} {'tokens/s':>10} {'tokens/pair':>12}")
    for r in results:
        print(f"{r['method']:<10} {r['steps']:>6} {r['pairs_per_s']:>10.2f} {r['fwd_bwd_pairs_per_s']:>16.2f} "
              f"{r['padded_tokens_per_s']:>10.0f} {r['tokens_per_pair']:>12.1f}")
    print(f"packed / per-pair: {ratio:.2f}x (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    print(json.dumps(report))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON report (also printed)."""
    args = _parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    tmp, model_name = _model_source(args)
    bf16 = bf16_supported() if args.bf16 is None else args.bf16
    dev = torch.device(args.device)
    tok = AutoTokenizer.from_pretrained(args.model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    examples, source = load_examples(tok, args)
    rng = random.Random(args.seed)
    rng.shuffle(examples)

    model = build_verifier(args.model, dtype=torch.float32, attn_implementation=args.attn, seed=args.seed,
                           use_cache=False, quiet=True).to(dev)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    attn_dtype = torch.bfloat16 if bf16 else torch.float32
    collate = PackedCollator(pad_token_id=pad)

    def to_dev(b):
        return {k: v.to(dev, non_blocking=True) for k, v in b.items()}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def packed_step(b):
        b = to_dev(b)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            g, n = pair_scores(model, b, attn_dtype)
        pairwise_loss(g, n, b["pair_mask"]).backward()
        sync()

    def two_seq_step(b):
        b = to_dev(b)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        s = out.logits[..., 0].float().gather(1, b["last"][:, None])[:, 0]
        g, n = s[0::2], s[1::2]
        pairwise_loss(g, n, torch.ones_like(g, dtype=torch.bool)).backward()
        sync()

    # the same pairs for every method; per-pair methods draw them in a shuffled order
    solutions = [pack_solution(ids, s, args.max_length) for ids, s in examples]
    all_pairs = [(ids, list(p)) for ids, s in examples for p in s]
    rng.shuffle(all_pairs)
    packed_batches = [collate(solutions[i : i + args.micro_batch]) for i in range(0, len(solutions), args.micro_batch)]
    pair_seqs = [pack_solution(ids, [p]) for ids, p in all_pairs]
    per_pair_batches = [collate(pair_seqs[i : i + args.pair_batch]) for i in range(0, len(pair_seqs), args.pair_batch)]
    n_pairs = lambda b: int(b["pair_mask"].sum())  # noqa: E731

    methods = [Method("packed", packed_batches, n_pairs, packed_step),
               Method("per-pair", per_pair_batches, n_pairs, packed_step)]
    if args.two_seq:
        chunks = [all_pairs[i : i + args.pair_batch] for i in range(0, len(all_pairs), args.pair_batch)][:64]
        two = [two_seq_batch(c, pad) for c in chunks]
        methods.append(Method("two-seq", two, lambda b: b["input_ids"].shape[0] // 2, two_seq_step))
    measure(methods, args.seconds, args.warmup, args.min_steps, lambda: opt.zero_grad(set_to_none=True))
    # one AdamW step per global batch (the same pairs per update for every method), charged per pair
    pairs_per_update = args.updates_of * len(all_pairs) / len(solutions)
    t_opt = time_optimizer_step(model, opt)
    results = [m.result(t_opt / pairs_per_update) for m in methods]
    by = {r["method"]: r for r in results}
    ratio = by["packed"]["pairs_per_s"] / by["per-pair"]["pairs_per_s"]
    report = {
        "benchmark": "verifier training pairs/s, packing vs one sequence per pair",
        "model": model_name,
        "data": source,
        "device": str(dev) + ("" if dev.type == "cuda" else f" ({torch.get_num_threads()} threads)"),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "solutions": len(solutions),
        "pairs": len(all_pairs),
        "mean_solution_tokens": sum(s.solution_length for s in solutions) / len(solutions),
        "optimizer_step_seconds": round(t_opt, 4),
        "pairs_per_optimizer_step": round(pairs_per_update, 1),
        "micro_batch": args.micro_batch,
        "pair_batch": args.pair_batch,
        "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results],
        "speedup_packed_vs_per_pair": round(ratio, 2),
        "goal": ">= 5x",
        "goal_met": ratio >= 5.0,
    }
    if "two-seq" in by:
        report["speedup_packed_vs_two_seq"] = round(by["packed"]["pairs_per_s"] / by["two-seq"]["pairs_per_s"], 2)

    _print_report(report, results, args.updates_of, t_opt, pairs_per_update, ratio)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
