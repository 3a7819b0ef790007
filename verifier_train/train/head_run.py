"""The ``--trainable head`` run: cache the frozen LLM's hidden states, fit the head, save a head verifier.

Steps of :func:`train_head` (the pieces are in :mod:`verifier_train.train.head`): read the data, look the features
up in the cache (or compute them with forward passes and cache them), split held-out questions (both objectives),
fit the head with AdamW, evaluate, and write ``llm2_head.json`` + ``head.safetensors`` +
``training_card.json`` + ``train_log.jsonl`` to ``--output`` (:mod:`llm2_eval.head_verifier`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llm2_eval.head_verifier import ScoreHead, save_head
from verifier_train.records import use_chat_template
from verifier_train.train.config import TRAIN_LOG, TRAINING_CARD, TrainConfig
from verifier_train.train.data import load_pair_data, split_groups
from verifier_train.train.head import (
    DEFAULT_CACHE,
    cache_key,
    cached,
    fit_head,
    head_steps,
    outcome_features,
    outcome_sequences,
    outcome_weights,
    pair_features,
)
from verifier_train.train.resume import check_output


def _say(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


#: fewer optimizer steps than this draw a warning: with its default --head-batch (4096 tokens or pairs) a head fit on
#: a small pairwise file makes one or two AdamW steps, which is a direction, not a fit
FEW_STEPS = 20


def _check_steps(cfg: TrainConfig, n: int, unit: str) -> str | None:
    """A warning (printed to stderr, kept in the training card) when the head's fit makes fewer than
    :data:`FEW_STEPS` optimizer steps (:func:`verifier_train.train.head.head_steps`)."""
    steps = head_steps(n, cfg.epochs, cfg.head_batch)
    if steps >= FEW_STEPS:
        return None
    text = (f"--trainable head: {n} training {unit} x --epochs {cfg.epochs:g} / --head-batch {cfg.head_batch} = "
            f"{steps} optimizer step(s); lower --head-batch (or raise --epochs) for a fitted head")
    print(f"warning: {text}", file=sys.stderr, flush=True)
    return text


def _fit(cfg: TrainConfig, head: ScoreHead, loss_fn: Any, n: int, unit: str, log: Any, eval_fn: Any) -> dict:
    """Fit ``head`` on ``n`` training ``unit`` s with the run's settings (:func:`verifier_train.train.head.fit_head`);
    ``{"steps", "warnings"}`` for the training card."""
    warning = _check_steps(cfg, n, unit)
    steps = fit_head(head, loss_fn, n, epochs=cfg.epochs, lr=cfg.resolved_head_lr, batch=cfg.head_batch,
                     seed=cfg.seed, weight_decay=cfg.weight_decay, log=log, eval_fn=eval_fn,
                     eval_every=cfg.eval_steps)
    return {"steps": steps, "warnings": [warning] if warning else []}


def _dtype(cfg: TrainConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.resolved_bf16 else torch.float32


def _load_llm(cfg: TrainConfig, dtype: torch.dtype):
    llm = AutoModelForCausalLM.from_pretrained(str(cfg.model), dtype=dtype, attn_implementation=cfg.attn_implementation)
    return llm.eval().to("cuda" if torch.cuda.is_available() else "cpu")


def _outcome(cfg: TrainConfig, tok: Any, cache_dir: Path, dtype: torch.dtype, head: ScoreHead, log: Any) -> dict:
    seqs = outcome_sequences(cfg.data, tok)
    feats, reused = cached(cache_dir, lambda: outcome_features(
        _load_llm(cfg, dtype), seqs, progress=lambda a, b: _say(cfg, f"features: {a}/{b} samples") if a == b else None))
    groups = [s["group"] for s in seqs]
    held = split_groups(groups, cfg.eval_fraction, cfg.seed)
    seq_labels = torch.tensor([s["label"] for s in seqs])
    h, y, seq = feats["h"], feats["label"], feats["seq"]
    is_eval = torch.tensor([groups[i] in held for i in range(len(seqs))])[seq]
    w = outcome_weights(seq, seq_labels, groups, cfg.balance)
    tr, ev = torch.nonzero(~is_eval).flatten(), torch.nonzero(is_eval).flatten()

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        j = tr[idx]
        s = head(h[j]).squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(s, y[j], weight=w[j])

    def eval_fn() -> dict[str, Any]:
        if not len(ev):
            return {}
        with torch.no_grad():
            s = torch.cat([head(h[ev[k:k + 65536]]).squeeze(-1).float() for k in range(0, len(ev), 65536)])
        bce = float(F.binary_cross_entropy_with_logits(s, y[ev], weight=w[ev]))
        last = {}  # each held-out sample's score at its last response token
        for k, i in enumerate(seq[ev].tolist()):
            last[i] = k
        acc = sum(float((s[k] > 0) == (y[ev][k] > 0.5)) for k in last.values()) / max(len(last), 1)
        return {"eval_bce": round(bce, 5), "eval_end_accuracy": round(acc, 4), "eval_samples": len(last)}

    return {**_fit(cfg, head, loss_fn, len(tr), "tokens", log, eval_fn), "reused_cache": reused,
            "train_tokens": len(tr), "eval_tokens": len(ev),
            "samples": len(seqs), "right_samples": int(seq_labels.sum()), "questions": len(set(groups)),
            "eval_questions": len(held), "metrics": eval_fn()}


def _pairwise(cfg: TrainConfig, tok: Any, cache_dir: Path, dtype: torch.dtype, head: ScoreHead, log: Any) -> dict:
    vocab = getattr(AutoConfig.from_pretrained(str(cfg.model)), "vocab_size", None) or len(tok)
    data = load_pair_data(cfg.data, tok, vocab_size=int(vocab), max_length=cfg.max_length, on_error=cfg.on_error,
                          eval_fraction=cfg.eval_fraction, seed=cfg.seed)
    examples = list(data.train) + list(data.eval)
    feats, reused = cached(cache_dir, lambda: pair_features(_load_llm(cfg, dtype), examples))
    hg, hn, ex = feats["h_gold"], feats["h_neg"], feats["example"]
    is_eval = ex >= len(data.train)
    tr, ev = torch.nonzero(~is_eval).flatten(), torch.nonzero(is_eval).flatten()

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        j = tr[idx]
        return -F.logsigmoid(head(hg[j]).float() - head(hn[j]).float()).mean()

    def eval_fn() -> dict[str, Any]:
        if not len(ev):
            return {}
        with torch.no_grad():
            d = (head(hg[ev]).float() - head(hn[ev]).float()).squeeze(-1)
        acc = float(((d > 0).float() + 0.5 * (d == 0).float()).mean())
        return {"eval_loss": round(float(-F.logsigmoid(d).mean()), 5), "eval_pair_accuracy": round(acc, 4),
                "eval_pairs": len(ev)}

    return {**_fit(cfg, head, loss_fn, len(tr), "pairs", log, eval_fn), "reused_cache": reused,
            "train_pairs": len(tr), "eval_pairs": len(ev),
            "files": [fs.summary() for fs in data.files], "metrics": eval_fn()}


def train_head(cfg: TrainConfig) -> tuple[Path, int, dict[str, Any], dict[str, Any]]:
    """Train a head verifier (module docstring); ``(output dir, steps, final metrics, training card)``.

    Raises:
        ValueError: bad settings or data (file:line), as :func:`verifier_train.train.run.train_verifier`.
        FileExistsError: an output holding a model llm2 did not write (without ``--overwrite``).
    """
    check_output(cfg)
    if not cfg.model or not Path(str(cfg.model)).exists():
        raise FileNotFoundError(f"--model {cfg.model}: not found (a head verifier trains on a local LLM)")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(cfg.model))
    template = use_chat_template(tok, cfg.chat_template)
    dtype = _dtype(cfg)
    # pairwise features are cached in train + held-out order; "-q": the split is by question (load_pair_data)
    key = cache_key(cfg, dtype) + ("" if cfg.objective == "outcome" else f"-e{cfg.eval_fraction}-s{cfg.seed}-q")
    cache_dir = Path(cfg.feature_cache or DEFAULT_CACHE).expanduser() / key
    hidden = int(AutoConfig.from_pretrained(str(cfg.model)).get_text_config().hidden_size)
    head = ScoreHead(hidden, cfg.head, cfg.head_hidden if cfg.head == "mlp" else None, cfg.head_dropout)
    log_path = out / TRAIN_LOG
    log_path.unlink(missing_ok=True)

    def log(rec: dict[str, Any]) -> None:
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        _say(cfg, json.dumps(rec))

    t_feat = time.time()
    run = (_outcome if cfg.objective == "outcome" else _pairwise)(cfg, tok, cache_dir, dtype, head, log)
    save_head(head, out, {"base_model": str(Path(str(cfg.model)).resolve()), "objective": cfg.objective,
                          "feature_dtype": str(dtype).replace("torch.", "")})
    card = {
        "kind": "llm2-head-verifier",
        "paper": "LLM2 (Yang et al., NAACL 2025) verifier with a frozen backbone; "
                 + ("Eq. 4 pairwise loss" if cfg.objective == "pairwise" else "outcome supervision (OVM, Yu et al. 2023)"),
        "base_model": str(cfg.model), "chat_template": template or "the tokenizer's own",
        "feature_cache": str(cache_dir), **{k: v for k, v in run.items() if k != "metrics"},
        "final_metrics": run["metrics"], "settings": dataclasses.asdict(cfg), "wall_time_s": round(time.time() - t0, 2),
        "features_and_fit_s": round(time.time() - t_feat, 2),
    }
    tmp = out / (TRAINING_CARD + ".partial")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / TRAINING_CARD)
    return out, run["steps"], run["metrics"], card
