"""The transformers rollout engine (CPU or GPU): shared-prefix batches decoded by the project's one decode loop.

One forward over ``token_ids`` gives both the teacher-forced logits and the KV cache of every prefix
(:class:`llm2_eval.kv_cache.SharedPrefix`); the rollouts of an example are packed into batches of up to
``batch_rows`` rows whose caches are cut from that single prefill, and decoded by
:func:`llm2_eval.decoding.generate` (``beta = 0``, per-row seeded generators, rows dropped as they hit EOS).
``batch_rows=1, share_prefix=False`` is the naive one-rollout-at-a-time baseline. Several examples
(:meth:`~verifier_train.rollouts.engine.RolloutEngine.rollouts_many`) run one after the other.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import torch

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.kv_cache import SharedPrefix
from llm2_eval.loading import eos_token_ids
from verifier_train.rollouts.engine import (
    EngineStats,
    Rollout,
    RolloutEngine,
    RolloutParams,
    RolloutRequest,
    check_requests,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel


class HFRolloutEngine(RolloutEngine):
    """transformers rollout engine with shared-prefix batches (CPU or GPU).

    Args:
        model: a causal LM in eval mode (any dtype/device).
        batch_rows: maximum rollouts decoded together; the rollouts of one :meth:`rollouts` call are cut, in
            request and seed order, into batches of at most this many rows.
        share_prefix: cut every batch's prompt caches from one forward over ``token_ids`` (the default); False
            feeds every row's whole prompt (the naive baseline with ``batch_rows=1``). Models whose KV cache
            cannot be sliced (sliding-window layers) fall back to False automatically.
    """

    def __init__(self, model: "PreTrainedModel", *, batch_rows: int = 32, share_prefix: bool = True):
        if int(batch_rows) < 1:
            raise ValueError(f"batch_rows={batch_rows!r}: must be >= 1")
        self.model = model
        self.batch_rows = int(batch_rows)
        self.share_prefix = bool(share_prefix)
        self.stats = EngineStats()
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        self.eos_token_ids = eos_token_ids(model.config, getattr(model, "generation_config", None))
        self.device = next(model.parameters()).device
        self._shared: tuple[tuple[int, ...], SharedPrefix] | None = None

    def _shared_prefix(self, token_ids: Sequence[int], logits_at: Sequence[int] = ()) -> SharedPrefix | None:
        key = tuple(int(t) for t in token_ids)
        if self._shared is not None and self._shared[0] == key and not logits_at:
            return self._shared[1]
        try:
            sp = SharedPrefix(self.model, key, logits_at=logits_at)
        except ValueError:
            self.share_prefix = False
            return None
        self.stats.prefill_tokens += len(key)
        self._shared = (key, sp)
        return sp

    @torch.inference_mode()
    def score(self, token_ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """See :meth:`RolloutEngine.score`; on this engine the forward also prepares the shared prefix cache of
        the next :meth:`rollouts` call on the same ``token_ids``."""
        n = len(token_ids)
        if any(not 1 <= int(t) < n for t in positions):
            raise ValueError(f"positions must be in [1, {n - 1}]")
        self.stats.score_calls += 1
        at = [int(t) - 1 for t in positions]
        if self.share_prefix:
            sp = self._shared_prefix(token_ids, logits_at=at)
            if sp is not None:
                return sp.logits
        ids = torch.tensor([list(token_ids)], device=self.device)
        self.stats.prefill_tokens += n
        return self.model(input_ids=ids).logits[0, at].float()

    def rollouts(
        self, token_ids: Sequence[int], requests: Sequence[RolloutRequest], params: RolloutParams
    ) -> list[list[Rollout]]:
        """See :meth:`RolloutEngine.rollouts`. Rollouts of the same seed give the same tokens whatever the
        batching (up to floating-point differences between batched and single-row matmuls)."""
        n = len(token_ids)
        check_requests(n, requests)
        t0 = time.perf_counter()
        cfg = DecodeConfig(
            beta=0.0,
            do_sample=not params.greedy,
            temperature=float(params.temperature),
            top_p=float(params.top_p),
            max_new_tokens=int(params.max_new_tokens),
            eos_token_ids=tuple(params.eos_token_ids),
        )
        sp = self._shared_prefix(token_ids) if self.share_prefix else None
        results: list[list[Rollout]] = [[] for _ in requests]
        rows = [(i, int(seed)) for i, r in enumerate(requests) for seed in r.seeds]  # in request order
        for lo in range(0, len(rows), self.batch_rows):
            self._run(token_ids, requests, rows[lo : lo + self.batch_rows], sp, cfg, results)
        self.stats.rollout_seconds += time.perf_counter() - t0
        return results

    def _run(self, token_ids, requests, rows, sp, cfg, results) -> None:
        # Consecutive rows of one request share its prompt token_ids[:cut] (cached or fed) + suffix (fed); an empty
        # continuation re-feeds the prefix's last token so that every row has at least one token to feed.
        groups: list[tuple[int, int]] = []  # (request index, rows)
        for i, _ in rows:
            if groups and groups[-1][0] == i:
                groups[-1] = (i, groups[-1][1] + 1)
            else:
                groups.append((i, 1))
        cuts, suffixes, repeats = [], [], []
        for i, k in groups:
            r = requests[i]
            cuts.append(r.prefix_len if r.continuation else r.prefix_len - 1)
            suffixes.append(list(r.continuation) if r.continuation else [int(token_ids[r.prefix_len - 1])])
            repeats.append(k)
        seeds = [seed for _, seed in rows]
        if sp is not None and all(c >= 1 for c in cuts):
            pc = sp.batch(cuts, repeats)
            row_ids = [s for s, k in zip(suffixes, repeats) for _ in range(k)]
        else:
            pc = None
            row_ids = [list(token_ids[:c]) + s for c, s, k in zip(cuts, suffixes, repeats) for _ in range(k)]
        width = max(len(r) for r in row_ids)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in row_ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in row_ids], device=self.device)
        out = generate(self.model, ids, mask, cfg, seeds=seeds, prefix_cache=pc)
        self.stats.batches += 1
        self.stats.prefill_tokens += int(mask.sum())
        for row, (i, _) in enumerate(rows):
            toks = out.tokens[row]
            results[i].append(Rollout(tokens=toks, finish_reason=out.finish_reasons[row]))
            self.stats.rollouts += 1
            self.stats.generated_tokens += len(toks)
