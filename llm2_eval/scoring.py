"""Verifier scoring of the candidates (docs/method.md section 3 steps 3 and 6): the forward, its mask, its KV cache.

The candidates of a row are appended after its real sequence, all at position id = current length, each attending
to the real prefix and to itself only (:func:`candidate_attention_mask`); the verifier's score of a candidate is
read at the candidate's own position. The candidate columns are cropped from the cache after the forward, so the
cache only ever holds real tokens; the key/values of the candidate the row then chooses are kept as its next real
column (:meth:`VerifierCache.accept`), so a row scored at consecutive steps feeds only its candidates. A scoring
forward returns the candidates' key/values with the scores (:class:`ScoredCandidates`), and the decoder hands them
back to :meth:`VerifierCache.accept` with its choice.

Only the rows that need scores (``|V_t| >= 2``) take part in a forward, with as many candidate slots as the widest
of them needs. The verifier reads a row's real tokens when that row is scored: the tokens it has not read yet
("pending": the prompt and the tokens of steps where the row had a single candidate) are fed in front of its
candidates. Rows may therefore have read different numbers of columns (:attr:`VerifierCache.read`);
a sub-batch starts at the fewest columns any of its rows has read (re-reading, for the others, a few columns they
already hold) and its new columns are written back into those rows of the shared cache. The first scoring pass
takes every row, so that all prompts are read in one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llm2_eval.kv_cache import CachedForward, new_cache

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel


def candidate_attention_mask(
    attention_mask: torch.Tensor, n_cached: int, n_candidates: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive 4-D mask for one verifier forward over pending real tokens followed by candidates.

    Keys are the ``S`` real columns (``n_cached`` already in the KV cache, then ``P = S - n_cached`` pending ones)
    followed by the ``K`` candidate slots; queries are the ``P`` pending tokens then the ``K`` candidates.
    A pending token sees the real (non-padding) tokens up to itself; a candidate sees every real token and
    itself only (docs/method.md section 3 step 3). Every query sees itself, so no row is fully masked.

    Args:
        attention_mask: 2-D padding mask ``[batch, S]`` (1 = real token).
        n_cached: columns already in the verifier's KV cache.
        n_candidates: ``K``.
        dtype: the model's dtype (0 where allowed, ``finfo(dtype).min`` elsewhere).

    Returns:
        Tensor ``[batch, 1, P + K, S + K]``.
    """
    b, s = attention_mask.shape
    p, k = s - n_cached, n_candidates
    dev = attention_mask.device
    real = attention_mask.bool()
    cols = torch.arange(s, device=dev)
    q_abs = torch.arange(n_cached, s, device=dev)
    pend = (cols[None, :] <= q_abs[:, None])[None] & real[:, None, :]  # [b, P, S]
    pend = pend | (cols[None, :] == q_abs[:, None])[None]
    eye_k = torch.eye(k, dtype=torch.bool, device=dev)
    top = torch.cat([pend, torch.zeros(b, p, k, dtype=torch.bool, device=dev)], dim=-1)
    bottom = torch.cat([real[:, None, :].expand(b, k, s), eye_k[None].expand(b, k, k)], dim=-1)
    allowed = torch.cat([top, bottom], dim=1)
    out = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]


@dataclass
class ScoredCandidates:
    """What one scoring forward gives the decoder, and what :meth:`VerifierCache.accept` needs back with its choice.

    Attributes:
        scores: float32 ``[rows, K]``, the verifier score ``s(x_<t, v)`` of each candidate slot of the scored rows
            (0 for the rows left out, and meaningless past a row's count).
        fed: long ``[rows]``, the tokens the forward fed per row (real pending tokens + candidate slots; 0 for the
            rows left out).
        rows: long ``[n]``, the working rows the forward took.
        width: the real sequence columns at scoring (a chosen candidate becomes column ``width``).
        candidate_kv: per layer, the candidates' keys and values ``[n, heads, k, head_dim]`` each.
        hidden: a fused scorer's candidate hidden states ``[rows, k, hidden]`` (None for a separate verifier).
    """

    scores: torch.Tensor
    fed: torch.Tensor
    rows: torch.Tensor
    width: int
    candidate_kv: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: torch.Tensor | None = None


class VerifierCache:
    """The verifier of one decoding call: its KV cache, how many real columns each row has read, and scoring.

    The cache (``self.fwd.cache``, a full-attention ``DynamicCache`` over the rows of the working batch) holds, for
    row ``r``, the key/values of the sequence columns ``0 .. read[r] - 1``; columns past ``read[r]`` are not yet
    meaningful for that row and never attended to.

    Args:
        verifier: a 1-label token-classification model (docs/method.md section 2).
        rows: rows of the working batch.
        device: where the row bookkeeping lives (the models' device).
    """

    def __init__(self, verifier: "PreTrainedModel", rows: int, device: torch.device):
        self.fwd = CachedForward(verifier, full_attention=True)
        self.dtype = verifier.dtype
        self.vocab = verifier.get_input_embeddings().num_embeddings
        self.read = torch.zeros(rows, dtype=torch.long, device=device)
        self.prompts_read = False

    @property
    def cache(self):
        """The verifier's ``DynamicCache`` (rows of the working batch)."""
        return self.fwd.cache

    def columns(self) -> int | list[int]:
        """Real columns read per row: one int when every row has read the same number, else one per row."""
        read = self.read.tolist()
        return read[0] if len(set(read)) <= 1 and read else read

    def read_prompts(self, seq: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed every row's whole (left-padded) sequence ``[rows, S]``; returns the real tokens read per row."""
        self.fwd(seq, candidate_attention_mask(attn, 0, 0, self.dtype), positions)
        self.read.fill_(seq.shape[1])
        self.prompts_read = True
        return attn.sum(-1)

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep the rows ``keep`` (long ``[rows]``, in that order, repeats allowed), as the decode loop does."""
        self.fwd.select_rows(keep)
        self.read = self.read[keep]

    def score(
        self,
        seq: torch.Tensor,
        attn: torch.Tensor,
        positions: torch.Tensor,
        next_pos: torch.Tensor,
        cand_ids: torch.Tensor,
        n_cand: torch.Tensor,
    ) -> ScoredCandidates | None:
        """Verifier scores of the candidates of the rows that need them (``n_cand >= 2``), in one forward.

        Args:
            seq: the working batch's sequences ``[rows, S]`` (left-padded), ``attn`` its padding mask and
                ``positions`` its position ids (same shape).
            next_pos: ``[rows]``, the position id of the next token (every candidate's position).
            cand_ids: ``[rows, K]`` candidate ids (first ``n_cand[r]`` real, :func:`plausible_candidates`).
            n_cand: ``[rows]`` candidate counts.

        Returns:
            None when no row needs scores; else the scores and the tokens fed (:class:`ScoredCandidates`), with the
            candidates' key/values that :meth:`accept` keeps for the chosen one. Until then the cache holds one
            column past the sequence that no row has read.
        """
        need = n_cand > 1
        if not bool(need.any()):
            return None
        rows = torch.arange(seq.shape[0], device=seq.device)
        if self.prompts_read:
            rows = rows[need]
        k = int(n_cand[rows].max())
        start = int(self.read[rows].min())
        stored = self.cache.get_seq_length()
        whole = rows.numel() == seq.shape[0] and start == stored and bool((self.read == start).all())
        cache = self.cache if whole else self._sub_cache(rows, start)
        width = seq.shape[1]
        out = self.fwd(
            torch.cat([seq[rows, start:], cand_ids[rows, :k]], dim=1),
            candidate_attention_mask(attn[rows], start, k, self.dtype),
            torch.cat([positions[rows, start:], next_pos[rows, None].expand(-1, k)], dim=1),
            cache=cache,
        )
        # the candidates' key/values: the chosen one becomes the row's next real column (accept)
        kv = [(layer.keys[:, :, -k:].clone(), layer.values[:, :, -k:].clone()) for layer in cache.layers]
        # keep one column past the sequence for the chosen candidate (accept); until then it is not read
        if whole:
            cache.crop(-(k - 1))
        else:
            self._write_back(rows, start, width, cache)
        self.read[rows] = width
        self.prompts_read = True
        scores = torch.zeros(cand_ids.shape, dtype=torch.float32, device=seq.device)
        scores[rows, :k] = out[:, -k:, 0].float()
        fed = torch.zeros_like(n_cand)
        fed[rows] = attn[rows, start:].sum(-1) + k
        return ScoredCandidates(scores=scores, fed=fed, rows=rows, width=width, candidate_kv=kv)

    def accept(self, scored: ScoredCandidates, slot: torch.Tensor) -> torch.Tensor | None:
        """The token chosen from the last scored candidates joins the cache as the row's next real column.

        A candidate attends to the real prefix and to itself, at position id = the sequence length: exactly what
        that token reads as the next real token, so its key/values from the scoring forward ARE the key/values
        of the real column, and the row need not feed it again as a pending token (docs/method.md section 3 step 6).

        Args:
            scored: what the last :meth:`score` returned (the working rows unchanged since).
            slot: long ``[rows]``, the index into each working row's candidates of the token it chose; only the
                rows of that forward are used (for each of them the slot is < its count).

        Returns:
            None (a fused scorer returns the next step's logits here, :class:`llm2_eval.fused.FusedHeadScorer`).
        """
        rows, width, kv = scored.rows, scored.width, scored.candidate_kv
        pick = slot[rows]
        at = torch.arange(rows.numel(), device=pick.device)
        for layer, (keys, values) in zip(self.cache.layers, kv):  # score() left the cache width + 1 columns
            layer.keys[rows, :, width] = keys[at, :, pick]
            layer.values[rows, :, width] = values[at, :, pick]
        self.read[rows] = width + 1
        return None

    def _sub_cache(self, rows: torch.Tensor, columns: int):
        """A new cache holding the first ``columns`` columns of the rows ``rows`` (a copy)."""
        sub = new_cache(self.fwd.model, full_attention=True)
        if columns > 0:
            for i, layer in enumerate(self.cache.layers):
                sub.update(layer.keys[rows, :, :columns], layer.values[rows, :, :columns], i)
        return sub

    def _write_back(self, rows: torch.Tensor, start: int, width: int, sub) -> None:
        """Copy the columns ``start .. width - 1`` that the sub-batch ``rows`` read into the shared cache (which
        grows to ``width + 1`` columns when shorter, one for the chosen candidate of :meth:`accept`; the new columns
        of the other rows are zeros, not yet read)."""
        for layer, new in zip(self.cache.layers, sub.layers):
            grow = width + 1 - layer.keys.shape[-2]
            if grow > 0:
                pad = (*layer.keys.shape[:2], grow, layer.keys.shape[-1])
                layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(pad)], dim=-2)
                layer.values = torch.cat([layer.values, layer.values.new_zeros(pad)], dim=-2)
            layer.keys[rows, :, start:width] = new.keys[:, :, start:width]
            layer.values[rows, :, start:width] = new.values[:, :, start:width]
