"""The rollout engine interface and its records (docs/method.md section 4, paper Sec. 2.3, Eq. 5).

Exploration asks two things of the LLM for one tokenised solution ``token_ids`` (chat prompt + gold response):

* :meth:`~RolloutEngine.score`: the teacher-forced next-token logits at chosen positions (``p_t`` of step 2), and
* :meth:`~RolloutEngine.rollouts`: for each request ``(t, continuation, seeds)``, ``len(seeds)`` sampled
  continuations of ``token_ids[:t] + continuation`` (the ``m`` rollouts of a candidate ``v`` are the request
  ``(t, [v], m seeds)``; ``--gold self`` sampling is ``(len(prompt), [], k seeds)``).

Both also take several examples at once (:meth:`RolloutEngine.rollouts_many`, :meth:`RolloutEngine.score_many`).
The engines are :class:`verifier_train.rollouts.hf_engine.HFRolloutEngine` (transformers) and
:class:`verifier_train.rollouts.vllm_engine.VLLMRolloutEngine` (vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


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


def check_requests(n: int, requests: Sequence[RolloutRequest]) -> None:
    """Refuse requests that do not fit a ``token_ids`` of ``n`` tokens.

    Raises:
        ValueError: a ``prefix_len`` outside ``[1, n]`` or a request without seeds (naming the request).
    """
    for i, r in enumerate(requests):
        if not 1 <= int(r.prefix_len) <= n:
            raise ValueError(f"request {i}: prefix_len {r.prefix_len} outside [1, {n}]")
        if not r.seeds:
            raise ValueError(f"request {i}: needs at least one seed (one rollout)")
