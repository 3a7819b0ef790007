"""``--objective outcome`` for full and LoRA verifiers: every response token's score regressed on its sample's outcome.

The records are those of ``llm2 explore --strategy outcome`` (:mod:`verifier_train.explore.outcome`). Each sample is
one sequence ``[user message, assistant: the sampled response]`` (chat template); the verifier's score is read at
every response token (its own position, LLM2's read-out; the end-of-turn token included) and trained with binary
cross-entropy against the sample's outcome (1 right, 0 wrong), each sample weighing the same (its tokens' mean),
or with ``--balance`` its weight ``w_i`` (:func:`verifier_train.train.head.balance_weights`: right and wrong samples
of a question weigh the same in total):

    L = sum over samples i of  w_i * mean over response tokens t of  BCE(s_t, y_i)     (w_i = 1 without --balance)

(OVM, Yu et al. 2023; the head-only variant trains the same loss on cached features, :mod:`.head`). Held-out
split by question. :class:`OutcomeCollator` pads a batch; :func:`outcome_loss` is what the trainer minimises.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from llm2_eval.verifier import verifier_scores


@dataclass
class OutcomeFile:
    """Per-file counts (the training card's ``data``)."""

    path: str
    samples: int = 0
    right: int = 0
    dropped: int = 0

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "samples": self.samples, "right": self.right, "dropped_by_max_length": self.dropped}


@dataclass
class OutcomeData:
    """Samples split into training and held-out sets (by question); ``train_pairs`` / ``eval_pairs`` count samples
    (the names the training run prints)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    files: list[OutcomeFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def train_pairs(self) -> int:
        return len(self.train)

    @property
    def eval_pairs(self) -> int:
        return len(self.eval)


def load_outcome_data(paths: Sequence[str], tokenizer: Any, *, max_length: int, eval_fraction: float,
                      seed: int, balance: bool = False) -> OutcomeData:
    """Read outcome files into sequences (:func:`verifier_train.train.head.outcome_sequences`), drop those longer
    than ``max_length`` (counted), split held-out questions (seeded). Each sample carries its ``weight``: 1, or
    with ``balance`` its :func:`~verifier_train.train.head.balance_weights` weight among its question's kept samples.

    Raises:
        ValueError: a record that is not an outcome record (file:line), or no sample left.
    """
    from verifier_train.train.data import split_groups
    from verifier_train.train.head import balance_weights, outcome_sequences

    files = []
    kept = []
    for path in paths:
        f = OutcomeFile(str(path))
        for s in outcome_sequences([path], tokenizer):
            if len(s["ids"]) > max_length:
                f.dropped += 1
                continue
            f.samples += 1
            f.right += int(s["label"])
            kept.append(s)
        files.append(f)
    if not kept:
        raise ValueError(f"no sample within --max-length {max_length} in {', '.join(map(str, paths))}")
    weights = balance_weights([s["label"] for s in kept], [s["group"] for s in kept]) if balance else None
    for i, s in enumerate(kept):
        s["weight"] = float(weights[i]) if weights is not None else 1.0
    held = split_groups([s["group"] for s in kept], eval_fraction, seed)
    train = [s for s in kept if s["group"] not in held]
    random.Random(seed).shuffle(train)
    return OutcomeData(train=train, eval=[s for s in kept if s["group"] in held], files=files)


class OutcomeCollator:
    """Right-pad samples into ``input_ids`` / ``attention_mask`` ``[B, T]``, ``outcome_mask`` bool ``[B, T]`` (the
    response tokens), ``outcome_target`` and ``outcome_weight`` float ``[B]`` (a sample without ``weight``: 1)."""

    def __init__(self, pad_token_id: int = 0):
        self.pad = int(pad_token_id)

    def __call__(self, feats: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        t = max(len(f["ids"]) for f in feats)
        b = len(feats)
        ids = torch.full((b, t), self.pad, dtype=torch.long)
        attn = torch.zeros((b, t), dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.bool)
        for i, f in enumerate(feats):
            ids[i, : len(f["ids"])] = torch.tensor(f["ids"])
            attn[i, : len(f["ids"])] = 1
            mask[i, f["start"]: f["end"]] = True
        return {"input_ids": ids, "attention_mask": attn, "outcome_mask": mask,
                "outcome_target": torch.tensor([float(f["label"]) for f in feats]),
                "outcome_weight": torch.tensor([float(f.get("weight", 1.0)) for f in feats])}


def outcome_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum over the batch's samples of their weight x mean token BCE, per-token scores [B, T])`` (module
    docstring; a batch without ``outcome_weight`` weighs every sample 1)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    scores = verifier_scores(out)
    mask = batch["outcome_mask"]
    target = batch["outcome_target"].to(scores.dtype)[:, None].expand_as(scores)
    per_token = F.binary_cross_entropy_with_logits(scores, target, reduction="none") * mask
    per_sample = per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    weight = batch.get("outcome_weight")
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.dtype)
    return per_sample.sum(), scores
