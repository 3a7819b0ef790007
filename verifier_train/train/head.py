"""``llm2 train-verifier --trainable head``: train a score head on the frozen LLM's cached hidden states.

The verifier is the LLM's own backbone plus a trained head (:mod:`llm2_eval.head_verifier`). Since the backbone is
frozen, every hidden state it will ever see in training is computed once, with forward passes only, and cached on
disk; the head then trains on the cache in seconds per epoch. Two objectives:

- ``--objective pairwise`` (paper Eq. 4) on triplet files: the hidden states of the gold token at ``pos`` and of the
  negative in its packed slot (:mod:`verifier_train.packing`: the same read-out as decoding), loss
  ``-log sigmoid(s(h_gold) - s(h_neg))`` averaged over pairs.
- ``--objective outcome`` (OVM, Yu et al. 2023) on ``llm2 explore --strategy outcome`` files: the hidden state of
  every response token of every sample (the token's own position, LLM2's read-out; the end-of-turn token
  included), binary cross-entropy of the score as a logit against the sample's outcome (1 right, 0 wrong). BCE
  rather than MSE on a sigmoid: the score then estimates the log-odds that the continuation reaches the answer,
  an additive quantity that ``z + beta * s`` can weigh, and its gradient does not vanish on confident mistakes.
  Each sample weighs the same whatever its length (token weights ``1 / its response tokens``); ``--balance``
  also gives the right and the wrong samples of a question equal total weight.

Cache: ``--feature-cache DIR`` (default ``~/.cache/llm2-eval/features``), one subdirectory per key, the sha256 of
the model's ``config.json`` and weight files (names and sizes), the dtype, the chat template, the objective, the
``--max-length`` and the data files' contents: a run with the same model and data reuses it (across epochs and
runs), any change makes a new one. Size: ``hidden_size`` x 2 bytes per cached token in bf16 (1,792 bytes for
Qwen2.5-0.5B), as ``features.safetensors`` plus ``meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from llm2_eval.jsonl import iter_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from verifier_train.train.config import TrainConfig

DEFAULT_CACHE = Path("~/.cache/llm2-eval/features").expanduser()


def _file_sha(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(cfg: "TrainConfig", dtype: torch.dtype) -> str:
    """The feature-cache key of a run (module docstring): 16 hex digits."""
    model = Path(str(cfg.model))
    parts: dict[str, Any] = {"model": str(cfg.model), "dtype": str(dtype), "objective": cfg.objective,
                             "max_length": cfg.max_length, "version": 1}
    if model.is_dir():
        parts["config"] = (model / "config.json").read_text(encoding="utf-8") if (model / "config.json").is_file() else ""
        parts["weights"] = sorted((p.name, p.stat().st_size) for p in model.glob("*.safetensors"))
    parts["template"] = _file_sha(cfg.chat_template) if cfg.chat_template else None
    parts["data"] = [_file_sha(p) for p in cfg.data]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- reading the data


def outcome_sequences(paths: Sequence[str], tokenizer: Any) -> list[dict[str, Any]]:
    """The samples of outcome files as sequences to score: ``{"ids", "start", "end", "label", "group"}`` each, with
    the response tokens ``ids[start:end]`` (end-of-turn token included) and the question id as ``group``.

    Raises:
        ValueError: a record that is not an outcome record (file:line; the check is
            :func:`verifier_train.records.check_outcome_record`), or no sample at all.
    """
    from verifier_train.records import chat_token_ids, check_outcome_record, response_start

    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    seqs = []
    for path in paths:
        for line, obj in iter_jsonl(path, parse=check_outcome_record):
            for k, o in enumerate(obj["outcomes"]):
                if not o.get("response"):
                    continue
                msgs = list(obj["messages"]) + [{"role": "assistant", "content": o["response"]}]
                ids = chat_token_ids(tokenizer, msgs)
                start = response_start(tokenizer, msgs)
                end = next((i + 1 for i in range(start, len(ids)) if ids[i] in eos), len(ids))
                seqs.append({"ids": ids, "start": start, "end": end, "label": float(o["correct"]),
                             "group": f"{path}:{obj.get('id', line)}"})
    if not seqs:
        raise ValueError(f"no sample with a response in {', '.join(map(str, paths))}")
    return seqs


# ---------------------------------------------------------------- features


@torch.no_grad()
def outcome_features(llm: Any, seqs: Sequence[dict[str, Any]], batch_tokens: int = 8192,
                     progress: Any = None) -> dict[str, torch.Tensor]:
    """Last hidden states (after the final norm) at the response tokens of ``seqs``, one forward per batch.

    Returns:
        ``{"h": [N, H] (the model's dtype), "label": [N], "seq": [N] long}`` over all response tokens, in order.
    """
    backbone = getattr(llm, llm.base_model_prefix)
    dev = next(backbone.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]["ids"]))
    hs: list[torch.Tensor | None] = [None] * len(seqs)
    lo = 0
    while lo < len(order):
        hi = lo + 1
        while hi < len(order) and (hi - lo + 1) * len(seqs[order[hi]]["ids"]) <= batch_tokens:
            hi += 1
        batch = [seqs[i] for i in order[lo:hi]]
        width = max(len(s["ids"]) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):
            ids[r, : len(s["ids"])] = torch.tensor(s["ids"])
            mask[r, : len(s["ids"])] = 1
        out = backbone(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        for r, i in enumerate(order[lo:hi]):
            hs[i] = out[r, seqs[i]["start"]: seqs[i]["end"]].cpu()
        if progress:
            progress(hi, len(order))
        lo = hi
    label = torch.cat([torch.full((len(h),), s["label"]) for h, s in zip(hs, seqs)])
    seq = torch.cat([torch.full((len(h),), i, dtype=torch.long) for i, h in enumerate(hs)])
    return {"h": torch.cat(hs), "label": label, "seq": seq}


@torch.no_grad()
def pair_features(llm: Any, examples: Sequence[Any], batch: int = 4) -> dict[str, torch.Tensor]:
    """Hidden states of the gold and negative token of every packed pair (:class:`PackedExample`s), read where the
    pairwise loss reads scores (:func:`verifier_train.train.loss.pair_scores`).

    Returns:
        ``{"h_gold": [P, H], "h_neg": [P, H], "example": [P] long}``.
    """
    from verifier_train.packing import PackedCollator, additive_mask

    backbone = getattr(llm, llm.base_model_prefix)
    dev = next(backbone.parameters()).device
    dtype = next(backbone.parameters()).dtype
    collate = PackedCollator()
    hg, hn, ex = [], [], []
    for lo in range(0, len(examples), batch):
        part = [e for e in examples[lo:lo + batch]]
        b = collate(part)
        out = backbone(input_ids=b["input_ids"].to(dev), attention_mask=additive_mask(b["allowed"], dtype).to(dev),
                       position_ids=b["position_ids"].to(dev)).last_hidden_state.cpu()
        for r in range(len(part)):
            k = int(b["pair_mask"][r].sum())
            hg.append(out[r, b["gold_index"][r, :k]])
            hn.append(out[r, b["neg_index"][r, :k]])
            ex.append(torch.full((k,), lo + r, dtype=torch.long))
    return {"h_gold": torch.cat(hg), "h_neg": torch.cat(hn), "example": torch.cat(ex)}


def cached(directory: Path, build: Any) -> tuple[dict[str, torch.Tensor], bool]:
    """``(tensors, reused)``: the cache in ``directory`` when complete, else ``build()`` saved there atomically."""
    from safetensors.torch import load_file, save_file

    f = directory / "features.safetensors"
    if f.is_file() and (directory / "meta.json").is_file():
        return load_file(str(f)), True
    tensors = build()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "features.safetensors.partial"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(f)
    (directory / "meta.json").write_text(json.dumps({k: list(v.shape) for k, v in tensors.items()}), encoding="utf-8")
    return tensors, False


# ---------------------------------------------------------------- training


def balance_weights(labels: Sequence[float], groups: Sequence[str]) -> torch.Tensor:
    """Per-sample weights ``[N]`` (``--balance``): the right and the wrong samples of a question get equal total
    weight, ``n_q / (2 n_right)`` each right one and ``n_q / (2 n_wrong)`` each wrong one, so a question's weights
    still sum to its sample count; a question with one kind only keeps weight 1 per sample."""
    w = torch.ones(len(groups))
    by_q: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_q.setdefault(g, []).append(i)
    for idx in by_q.values():
        right = [i for i in idx if float(labels[i]) > 0.5]
        wrong = [i for i in idx if float(labels[i]) <= 0.5]
        if right and wrong:
            for side in (right, wrong):
                for i in side:
                    w[i] = len(idx) / (2 * len(side))
    return w


def outcome_weights(seq: torch.Tensor, labels_per_seq: torch.Tensor, groups: Sequence[str], balance: bool) -> torch.Tensor:
    """Token weights: ``1 / response tokens`` of the token's sample (each sample weighs 1); with ``balance``, the
    right and the wrong samples of a question get equal total weight (:func:`balance_weights`).
    Normalised to mean 1 over tokens."""
    counts = torch.bincount(seq, minlength=len(groups)).clamp(min=1).float()
    w_seq = balance_weights(labels_per_seq, groups) if balance else torch.ones(len(groups))
    w = (w_seq / counts)[seq]
    return w * (len(w) / w.sum())


def head_steps(n: int, epochs: float, batch: int) -> int:
    """Optimizer steps :func:`fit_head` makes: ``max(1, ceil(epochs * n / batch))`` for ``n`` training items
    (tokens or pairs) in minibatches of ``batch``."""
    return max(1, math.ceil(epochs * n / batch))


def fit_head(head: torch.nn.Module, loss_fn: Any, n: int, *, epochs: float, lr: float, batch: int, seed: int,
             weight_decay: float = 0.0, log: Any = None, eval_fn: Any = None, eval_every: int = 0) -> int:
    """AdamW on ``loss_fn(indices) -> scalar`` over shuffled minibatches of ``range(n)``, cosine decay with 5%
    warmup. Returns the number of steps (:func:`head_steps`)."""
    steps = head_steps(n, epochs, batch)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    g = torch.Generator().manual_seed(seed)
    perm, at = torch.randperm(n, generator=g), 0
    head.train()
    for step in range(1, steps + 1):
        if at >= n:
            perm, at = torch.randperm(n, generator=g), 0
        idx = perm[at: at + batch]
        at += batch
        loss = loss_fn(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 50 == 0 or step == steps):
            rec = {"step": step, "loss": round(float(loss.detach()), 5), "lr": sched.get_last_lr()[0]}
            if eval_fn and (step == steps or (eval_every and step % eval_every == 0)):
                head.eval()
                rec.update(eval_fn())
                head.train()
            log(rec)
    head.eval()
    return steps
