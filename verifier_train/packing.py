"""Packing all negatives of a solution into one verifier sequence (docs/method.md section 6; paper Eq. 4).

A solution with token ids ``x_0 .. x_{n-1}`` and pairs ``(pos_j, gold_j, neg_j)`` (``x[pos_j] == gold_j``) becomes
ONE sequence::

    index:        0 .. L-1                 L        L+1      ...  L+P-1
    token:        x_0 .. x_{L-1}           neg_0    neg_1    ...  neg_{P-1}
    position id:  0 .. L-1                 pos_0    pos_1    ...  pos_{P-1}
    attends to:   causal (0 .. itself)     0..pos_0-1 + itself, ...

so that ``s(x_<pos, gold) = score[pos]`` (the gold token sits at ``pos`` and sees ``0 .. pos`` causally) and
``s(x_<pos, neg) = score[L + j]`` (the negative slot sees exactly the prefix ``0 .. pos-1`` and itself, with the
position id the gold token has). One forward scores every pair of the solution, and the result equals scoring
each pair with its own two sequences ``x_<pos + gold`` / ``x_<pos + neg`` (tested exactly in fp32).

Solution tokens after the last pair's ``pos`` are never seen by a scored query, so they are dropped (``L`` is the
last kept ``pos`` + 1): this is lossless. Truncation at ``max_length`` (our decision, docs/method.md section 6): the packed
length is ``L + P``; pairs are ordered by ``pos`` and the longest prefix of them with ``max(pos) + 1 + P <=
max_length`` is kept, which keeps the largest possible number of pairs; the others are dropped and counted.

Masks here are boolean ("allowed") in the collator; :func:`additive_mask` turns them into the additive float
convention of :func:`llm2_eval.scoring.candidate_attention_mask` (0 allowed, ``finfo(dtype).min`` masked, shape
``[B, 1, Q, K]``) in the dtype attention runs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class PackedExample:
    """One solution packed with all its kept negatives.

    Attributes:
        input_ids: ``L`` solution tokens followed by ``P`` negative tokens (length ``L + P``).
        position_ids: ``0 .. L-1`` then ``pos_j`` for negative ``j``.
        solution_length: ``L``.
        pair_pos: ``pos_j`` per kept pair (the index of its gold token, ``< L``); the negative of pair ``j`` is at
            index ``L + j``.
        dropped_pairs: pairs removed by the ``max_length`` budget.
    """

    input_ids: list[int]
    position_ids: list[int]
    solution_length: int
    pair_pos: list[int]
    dropped_pairs: int = 0

    @property
    def num_pairs(self) -> int:
        """``P``, the number of kept pairs."""
        return len(self.pair_pos)

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_solution(
    token_ids: Sequence[int], samples: Sequence[Sequence[int]], max_length: int | None = None
) -> PackedExample:
    """Pack the pairs of one solution into one sequence (docs/method.md section 6).

    Args:
        token_ids: the chat-template token list of the solution (what ``pos`` indexes); the triplets must already
            be validated (``token_ids[pos] == gold``, see :func:`verifier_train.records.check_samples`).
        samples: ``[pos, gold_id, neg_id]`` triplets, any order, duplicates allowed.
        max_length: budget for ``L + P`` in tokens (``None`` = unlimited). Pairs are kept in order of ``pos`` (ties in
            input order) while ``max(pos) + 1 + kept <= max_length``.

    Returns:
        A :class:`PackedExample`; its ``pair_pos`` is sorted. With no pair kept, ``input_ids`` is empty.

    Raises:
        ValueError: ``max_length < 2``, or a ``pos`` outside ``token_ids``.
    """
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length={max_length}: must be >= 2 (one solution token and one negative)")
    n = len(token_ids)
    for s in samples:
        if not 0 <= int(s[0]) < n:
            raise ValueError(f"pair {list(s)}: pos outside the {n}-token solution")
    order = sorted(range(len(samples)), key=lambda i: int(samples[i][0]))
    kept = len(order)
    if max_length is not None:
        kept = 0
        for k, i in enumerate(order, start=1):
            if int(samples[i][0]) + 1 + k <= max_length:
                kept = k
            else:
                break
    chosen = [samples[i] for i in order[:kept]]
    if not chosen:
        return PackedExample([], [], 0, [], dropped_pairs=len(samples))
    length = int(chosen[-1][0]) + 1
    ids = [int(t) for t in token_ids[:length]] + [int(s[2]) for s in chosen]
    pos_ids = list(range(length)) + [int(s[0]) for s in chosen]
    return PackedExample(
        input_ids=ids,
        position_ids=pos_ids,
        solution_length=length,
        pair_pos=[int(s[0]) for s in chosen],
        dropped_pairs=len(samples) - kept,
    )


def packed_allowed_mask(solution_length: int, pair_pos: Sequence[int], total_length: int | None = None) -> torch.Tensor:
    """Boolean attention pattern of one packed sequence (True = query may attend to key).

    Rows/columns ``0 .. L-1``: causal. Row ``L + j`` (negative ``j``): columns ``0 .. pair_pos[j]-1`` and itself.
    Rows beyond ``L + P`` (padding up to ``total_length``): only themselves, so no row is fully masked.

    Args:
        solution_length: ``L``.
        pair_pos: ``pos_j`` per negative, each ``< L``.
        total_length: padded length ``T >= L + P`` (default ``L + P``).

    Returns:
        Bool tensor ``[T, T]``.
    """
    length, p = int(solution_length), len(pair_pos)
    t = length + p if total_length is None else int(total_length)
    if t < length + p:
        raise ValueError(f"total_length {t} < solution length {length} + {p} negatives")
    allowed = torch.eye(t, dtype=torch.bool)
    allowed[:length, :length] = torch.ones(length, length, dtype=torch.bool).tril_()
    if p:
        pos = torch.as_tensor(list(pair_pos), dtype=torch.long)
        cols = torch.arange(length)
        allowed[length : length + p, :length] = cols[None, :] < pos[:, None]
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean pattern into the additive float mask transformers accepts as a custom 4-D mask.

    Args:
        allowed: bool ``[B, Q, K]`` or ``[B, 1, Q, K]``.
        dtype: the dtype attention runs in (the autocast dtype under mixed precision).

    Returns:
        ``[B, 1, Q, K]`` of ``dtype``: 0 where allowed, ``torch.finfo(dtype).min`` elsewhere.
    """
    if allowed.dim() == 3:
        allowed = allowed[:, None]
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)


class PackedCollator:
    """Pad a list of packed solutions into one batch (right padding).

    Features are :class:`PackedExample` objects or dicts with the same fields. The batch holds:

    - ``input_ids`` long ``[B, T]`` (padding = ``pad_token_id``), ``position_ids`` long ``[B, T]`` (padding = 0);
    - ``allowed`` bool ``[B, 1, T, T]`` (:func:`packed_allowed_mask`; padding queries see themselves only);
    - ``gold_index`` / ``neg_index`` long ``[B, Pmax]``: where ``s(gold)`` and ``s(neg)`` of each pair are read;
    - ``pair_mask`` bool ``[B, Pmax]``: True for real pairs (padded pairs point at index 0 and must be ignored).

    Args:
        pad_token_id: token used for padding (its scores are never read).
        pad_to_multiple_of: optional rounding of ``T`` (tensor-core friendly shapes on GPUs).
    """

    def __init__(self, pad_token_id: int = 0, pad_to_multiple_of: int | None = None):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[PackedExample | dict[str, Any]]) -> dict[str, torch.Tensor]:
        feats = [f if isinstance(f, PackedExample) else _from_dict(f) for f in features]
        if not feats:
            raise ValueError("cannot collate an empty batch")
        t = max(len(f) for f in feats)
        m = self.pad_to_multiple_of
        if m:
            t = -(-t // m) * m
        p = max(max(f.num_pairs for f in feats), 1)
        b = len(feats)
        input_ids = torch.full((b, t), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((b, t), dtype=torch.long)
        allowed = torch.zeros((b, 1, t, t), dtype=torch.bool)
        gold_index = torch.zeros((b, p), dtype=torch.long)
        neg_index = torch.zeros((b, p), dtype=torch.long)
        pair_mask = torch.zeros((b, p), dtype=torch.bool)
        for i, f in enumerate(feats):
            n, k = len(f), f.num_pairs
            input_ids[i, :n] = torch.as_tensor(f.input_ids, dtype=torch.long)
            position_ids[i, :n] = torch.as_tensor(f.position_ids, dtype=torch.long)
            allowed[i, 0] = packed_allowed_mask(f.solution_length, f.pair_pos, t)
            if k:
                gold_index[i, :k] = torch.as_tensor(f.pair_pos, dtype=torch.long)
                neg_index[i, :k] = torch.arange(f.solution_length, f.solution_length + k)
                pair_mask[i, :k] = True
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "allowed": allowed,
            "gold_index": gold_index,
            "neg_index": neg_index,
            "pair_mask": pair_mask,
        }


def _from_dict(d: dict[str, Any]) -> PackedExample:
    return PackedExample(
        input_ids=list(d["input_ids"]),
        position_ids=list(d["position_ids"]),
        solution_length=int(d["solution_length"]),
        pair_pos=list(d["pair_pos"]),
        dropped_pairs=int(d.get("dropped_pairs", 0)),
    )
