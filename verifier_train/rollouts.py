"""Rollout engines for token quality exploration (LLM2.md section 4, paper Sec. 2.3, Eq. 5).

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
* :class:`VLLMRolloutEngine`: vLLM with automatic prefix caching and ``n`` samples per request; ``vllm`` is
  imported lazily (``pip install llm2-eval[vllm]``). Its request building (:func:`build_vllm_requests`) and
  logprob handling (:func:`dense_logprobs`) are plain Python, testable without vLLM.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from llm2_eval.decoding import DecodeConfig, SharedPrefix, generate

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

VLLM_MISSING = (
    "the vllm backend needs vLLM, which is not installed: `pip install llm2-eval[vllm]` "
    "(or use --backend hf)"
)


@dataclass
class RolloutParams:
    """Sampling settings of rollouts (LLM2.md section 4 step 4; the paper does not state them).

    Attributes:
        temperature: sampling temperature (> 0).
        top_p: nucleus threshold in (0, 1].
        max_new_tokens: budget per rollout, in tokens.
        eos_token_ids: ids that end a rollout (kept in its tokens); empty = run to ``max_new_tokens``.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    eos_token_ids: tuple[int, ...] = ()

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
    """Interface of the rollout engines (see the module docstring)."""

    stats: EngineStats
    vocab_size: int
    max_context: int | None

    def score(self, token_ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Teacher-forced next-token logits for ``token_ids[t]`` at each ``t`` of ``positions``.

        Args:
            token_ids: the full tokenised conversation, ``n`` ids.
            positions: indices ``1 <= t < n``.

        Returns:
            float32 tensor ``[len(positions), vocab]``; row ``i`` is the LLM's logits (or log-probabilities,
            ``-inf`` outside the returned top-k for vLLM) for the token at ``positions[i]`` given
            ``token_ids[:positions[i]]`` (``p_t`` of LLM2.md section 4 step 2).
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
            do_sample=True,
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


# ----------------------------------------------------------------------------------------------------------- vLLM


def import_vllm() -> Any:
    """Import vLLM lazily.

    Raises:
        ImportError: naming ``pip install llm2-eval[vllm]`` when vLLM is not installed.
    """
    try:
        import vllm  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(VLLM_MISSING) from err
    return vllm


def build_vllm_requests(
    token_ids: Sequence[int], requests: Sequence[RolloutRequest], params: RolloutParams
) -> list[dict[str, Any]]:
    """The vLLM requests of :meth:`VLLMRolloutEngine.rollouts`, as plain dicts (no vLLM needed).

    One request per :class:`RolloutRequest`: prompt ``token_ids[:prefix_len] + continuation``, ``n = len(seeds)``
    samples from ONE vLLM request seeded with ``seeds[0]`` (vLLM draws the ``n`` samples of a seeded request
    deterministically), so all candidates of a position share the cached prefix (automatic prefix caching).

    Returns:
        ``[{"prompt_token_ids": [...], "sampling": {"n", "seed", "temperature", "top_p", "max_tokens",
        "stop_token_ids", "skip_special_tokens"}}]``, the keyword arguments of ``vllm.SamplingParams``.
    """
    _check_requests(len(token_ids), requests)
    out = []
    for r in requests:
        out.append(
            {
                "prompt_token_ids": [int(t) for t in token_ids[: r.prefix_len]] + [int(t) for t in r.continuation],
                "sampling": {
                    "n": len(r.seeds),
                    "seed": int(r.seeds[0]) % (2**31),
                    "temperature": float(params.temperature),
                    "top_p": float(params.top_p),
                    "max_tokens": int(params.max_new_tokens),
                    "stop_token_ids": [int(t) for t in params.eos_token_ids],
                    "ignore_eos": not params.eos_token_ids,
                    "skip_special_tokens": False,
                },
            }
        )
    return out


def dense_logprobs(
    prompt_logprobs: Sequence[dict[int, Any] | None], positions: Sequence[int], vocab_size: int
) -> torch.Tensor:
    """Dense ``[len(positions), vocab]`` log-probabilities from vLLM's sparse ``prompt_logprobs``.

    Args:
        prompt_logprobs: vLLM's per-prompt-token list; entry ``t`` maps token ids to objects with a ``logprob``
            attribute (or plain floats) for the token at ``t`` given the tokens before it (entry 0 is None).
        positions: the wanted ``t``.
        vocab_size: width of the result.

    Returns:
        float32 tensor, ``-inf`` for tokens outside vLLM's top-k (so :func:`plausible_candidates` sees only
        them: the candidate set is capped at the ``prompt_logprobs`` k of the engine).
    """
    out = torch.full((len(positions), vocab_size), -math.inf, dtype=torch.float32)
    for i, t in enumerate(positions):
        entry = prompt_logprobs[int(t)] or {}
        for tok, lp in entry.items():
            if 0 <= int(tok) < vocab_size:
                out[i, int(tok)] = float(getattr(lp, "logprob", lp))
    return out


def rollouts_from_vllm(outputs: Sequence[Any], eos_token_ids: Sequence[int]) -> list[list[Rollout]]:
    """Convert ``vllm.LLM.generate`` outputs (one per request, ``.outputs`` holding ``n`` completions with
    ``token_ids``) into :class:`Rollout` lists, in request order."""
    eos = set(int(t) for t in eos_token_ids)
    res = []
    for o in outputs:
        group = []
        for c in o.outputs:
            toks = [int(t) for t in c.token_ids]
            group.append(Rollout(tokens=toks, finish_reason="eos" if toks and toks[-1] in eos else "length"))
        res.append(group)
    return res


class VLLMRolloutEngine(RolloutEngine):
    """vLLM rollout engine: automatic prefix caching and ``n`` samples per request (GPU).

    Multi-GPU: ``tensor_parallel_size`` shards one model over GPUs; for data parallelism run one process per GPU
    with ``llm2 explore --shard i/N`` (``CUDA_VISIBLE_DEVICES=i``), or pass vLLM's own engine options (e.g.
    ``data_parallel_size`` where your vLLM version supports it offline) through ``engine_kwargs``.

    Args:
        model: model directory or hub id.
        dtype: vLLM dtype string (``"auto"``, ``"bfloat16"``, ...).
        seed: engine seed.
        tensor_parallel_size: GPUs per model replica.
        logprobs_k: top-k of the teacher-forced ``prompt_logprobs`` used for candidate sets (vLLM returns no
            full distributions; candidates are the plausible tokens among these k).
        engine_kwargs: further ``vllm.LLM`` keyword arguments (``gpu_memory_utilization``, ``max_model_len``...).

    Raises:
        ImportError: when vLLM is not installed (message names ``pip install llm2-eval[vllm]``).
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        tensor_parallel_size: int = 1,
        logprobs_k: int = 20,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        self._vllm = import_vllm()
        kwargs = {"enable_prefix_caching": True, "tensor_parallel_size": int(tensor_parallel_size), "seed": int(seed)}
        kwargs.update(engine_kwargs or {})
        self.llm = self._vllm.LLM(model=str(model), dtype=dtype, **kwargs)
        cfg = self.llm.llm_engine.model_config
        self.vocab_size = int(cfg.get_vocab_size())
        self.max_context = int(cfg.max_model_len)
        self.logprobs_k = int(logprobs_k)
        self.stats = EngineStats()

    def _generate(self, prompts: list[dict[str, Any]]) -> list[Any]:
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        tp = [TokensPrompt(prompt_token_ids=p["prompt_token_ids"]) for p in prompts]
        sp = [self._vllm.SamplingParams(**p["sampling"]) for p in prompts]
        self.stats.batches += 1
        return self.llm.generate(tp, sp, use_tqdm=False)

    def score(self, token_ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """See :meth:`RolloutEngine.score`: log-probabilities, ``-inf`` outside the top ``logprobs_k``."""
        self.stats.score_calls += 1
        req = {
            "prompt_token_ids": [int(t) for t in token_ids],
            "sampling": {"max_tokens": 1, "prompt_logprobs": self.logprobs_k, "temperature": 0.0},
        }
        out = self._generate([req])[0]
        self.stats.prefill_tokens += len(token_ids)
        return dense_logprobs(out.prompt_logprobs, positions, self.vocab_size)

    def rollouts(
        self, token_ids: Sequence[int], requests: Sequence[RolloutRequest], params: RolloutParams
    ) -> list[list[Rollout]]:
        """See :meth:`RolloutEngine.rollouts` (one vLLM ``generate`` call for all requests)."""
        t0 = time.perf_counter()
        prompts = build_vllm_requests(token_ids, requests, params)
        res = rollouts_from_vllm(self._generate(prompts), params.eos_token_ids)
        for group in res:
            self.stats.rollouts += len(group)
            self.stats.generated_tokens += sum(len(r.tokens) for r in group)
        self.stats.prefill_tokens += sum(len(p["prompt_token_ids"]) for p in prompts)
        self.stats.rollout_seconds += time.perf_counter() - t0
        return res


__all__ = [
    "EngineStats",
    "HFRolloutEngine",
    "Rollout",
    "RolloutEngine",
    "RolloutParams",
    "RolloutRequest",
    "VLLMRolloutEngine",
    "VLLM_MISSING",
    "build_vllm_requests",
    "dense_logprobs",
    "import_vllm",
    "rollouts_from_vllm",
]
