"""Fused LLM2 step for head verifiers: one LLM forward scores the candidates AND gives the next step's logits.

A head verifier (:mod:`llm2_eval.head_verifier`) whose backbone is the LLM's own reads exactly the hidden states the
LLM computes. So at step t the row's candidates ``V_t`` are fed once through the LLM, with the LLM's own KV cache,
each at position id = the sequence length and attending to the real prefix and to itself (the candidate mask of
:func:`llm2_eval.scoring.candidate_attention_mask`); from each candidate's last hidden state ``h_v``:

    s(x_<t, v) = head(h_v)                       (the verifier score, paper Eq. 1's System 2)
    logits_{t+1} | v = lm_head(h_v)              (what the LLM would compute after reading v)

The chosen candidate's key/values are kept as the row's next real cache column and the other candidates' dropped
(as :meth:`llm2_eval.scoring.VerifierCache.accept` does for a separate verifier), and its logits become the next
step's ``z``: no second model, no second cache, no second prompt read, no separate feed of the chosen token. A step
costs ``max |V_t|`` token forwards per row instead of 1 + a verifier forward. With one candidate in every row the
forward is exactly the plain greedy feed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from llm2_eval.head_verifier import HeadVerifier
from llm2_eval.scoring import ScoredCandidates, VerifierCache, candidate_attention_mask

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

    from llm2_eval.kv_cache import CachedForward


def can_fuse(llm: "PreTrainedModel", verifier: Any) -> bool:
    """Whether ``verifier`` is a head verifier running on ``llm``'s own backbone (the fused step applies)."""
    return isinstance(verifier, HeadVerifier) and verifier.backbone is getattr(llm, llm.base_model_prefix, None)


class FusedHeadScorer(VerifierCache):
    """The verifier side of :func:`llm2_eval.decoding.generate` for a head verifier on the LLM's backbone.

    It shares the LLM's KV cache (``llm_fwd.cache``; the decoder selects its rows), so :meth:`select_rows` only
    follows the row bookkeeping. :meth:`score` scores every row's candidates (a single-candidate row too: its
    forward is the feed of its only token) and returns each candidate's hidden state with the scores; :meth:`accept`
    keeps the chosen candidate's key/values and returns its logits ``[rows, vocab]`` float32, the next step's.

    Args:
        llm: the causal LM (its ``lm_head`` makes the next logits).
        verifier: the head verifier whose backbone is ``llm``'s (:func:`can_fuse`).
        llm_fwd: the decoder's LLM forward, whose cache already holds every row's real columns.
        rows: rows of the working batch.
    """

    def __init__(self, llm: "PreTrainedModel", verifier: "HeadVerifier", llm_fwd: "CachedForward", rows: int):
        self.llm_fwd = llm_fwd
        self.backbone = verifier.backbone
        self.head = verifier.head
        self.lm_head = llm.get_output_embeddings()
        self.dtype = next(self.backbone.parameters()).dtype
        self.vocab = llm.get_input_embeddings().num_embeddings
        device = next(self.backbone.parameters()).device
        self.read = torch.zeros(rows, dtype=torch.long, device=device)
        self.prompts_read = True

    @property
    def cache(self):
        """The LLM's own ``DynamicCache`` (shared)."""
        return self.llm_fwd.cache

    def select_rows(self, keep: torch.Tensor) -> None:
        """Follow the decoder's row selection (the shared cache is selected by the decoder itself)."""
        self.read = self.read[keep]

    def score(self, seq, attn, positions, next_pos, cand_ids, n_cand) -> ScoredCandidates:
        """Scores ``[rows, K]`` float32 and tokens fed ``[rows]`` of every row's candidates, with their key/values
        and hidden states (see the class).

        Every real column is already in the LLM's cache (the prompt by the prefill, each chosen token by
        :meth:`accept`), so the forward feeds the candidate slots alone.
        """
        k = int(n_cand.max())
        width = seq.shape[1]
        cache = self.cache
        kw = {self.llm_fwd.cache_kw: cache, "use_cache": True}
        hidden = self.backbone(input_ids=cand_ids[:, :k], attention_mask=candidate_attention_mask(attn, width, k, self.dtype),
                               position_ids=next_pos[:, None].expand(-1, k), **kw).last_hidden_state
        rows = torch.arange(seq.shape[0], device=seq.device)
        kv = [(layer.keys[:, :, -k:].clone(), layer.values[:, :, -k:].clone()) for layer in cache.layers]
        if k > 1:
            cache.crop(-(k - 1))
        scores = torch.zeros(cand_ids.shape, dtype=torch.float32, device=seq.device)
        scores[:, :k] = self.head(hidden)[..., 0].float()
        self.read.fill_(width)
        # the LM head runs on the chosen candidates only (accept)
        return ScoredCandidates(scores=scores, fed=torch.full_like(n_cand, k), rows=rows, width=width,
                                candidate_kv=kv, hidden=hidden)

    def accept(self, scored: ScoredCandidates, slot: torch.Tensor) -> torch.Tensor:
        """Keep the chosen candidates' key/values (:meth:`VerifierCache.accept`); returns their next-token logits
        ``[rows, vocab]`` float32 (the LM head on the chosen candidates' hidden states only)."""
        super().accept(scored, slot)
        chosen = scored.hidden[torch.arange(slot.shape[0], device=slot.device), slot]
        return self.lm_head(chosen).float()
