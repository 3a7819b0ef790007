"""Dual-process decoding (LLM2 paper Eq. 1; LLM2.md section 3), in plain PyTorch on transformers models.

At every step ``t`` and for every sequence of the batch:

1. ``z_t = pi(x_<t)``: next-token logits of the LLM (KV cache).
2. Candidates ``V_t``: the plausibility mask ``p(v) >= alpha * max_u p(u)``, or the ``top_k`` tokens, optionally
   capped at ``max_candidates`` by probability (:func:`plausible_candidates`, shared with exploration).
3. If ``|V_t| > 1`` for some row, all candidates of all rows are scored in ONE verifier forward: they are appended
   after the sequence, all with position id = current length, each attending to the real prefix and to itself
   (a 4-D attention mask).
4. ``z*_t[v] = z_t[v] + beta * s(x_<t, v)`` on ``V_t``, ``-inf`` elsewhere.
5. Greedy: argmax of ``z*``. Sampling: temperature and top-p on ``z*``.
6. The verifier's KV cache holds exactly the real sequence: the candidates' key/values are cropped after each
   scoring forward, and real tokens the verifier has not read yet ("pending" tokens: the prompt, the last chosen
   token, and tokens of steps where every row had ``|V_t| = 1``) are fed in front of the next candidates.

``beta == 0`` or no verifier is plain System-1 decoding over the full vocabulary (token for token the same as
transformers' greedy ``generate``); the verifier is then never called.

The loop knows nothing of lm-eval; it serves lm-eval, exploration rollouts and the benchmarks alike.
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class DecodeConfig:
    """Settings of one decoding call (LLM2.md section 3; released defaults alpha 0.1, beta 0.25).

    Attributes:
        alpha: plausibility threshold in (0, 1]: candidates are tokens with ``p >= alpha * p_max``.
        top_k: when > 0, the candidates are the ``top_k`` most probable tokens instead (alpha unused).
        max_candidates: optional cap on ``|V_t|`` (most probable first); ``None`` = no cap.
        beta: verifier weight in ``z* = z + beta * s``; 0 turns the verifier off.
        do_sample: sample from ``z*`` (else greedy argmax).
        temperature: divides ``z*`` before sampling; must be > 0 when sampling.
        top_p: nucleus threshold in (0, 1] applied after temperature when sampling.
        max_new_tokens: generation budget per sequence, in tokens.
        stop: stop strings; a sequence ends with the token that completes one (the token is kept, as in
            transformers' stopping criteria; callers cut the string).
        eos_token_ids: token ids that end a sequence (kept in the output).
    """

    alpha: float = 0.1
    top_k: int = 0
    max_candidates: int | None = None
    beta: float = 0.25
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: Sequence[str] = ()
    eos_token_ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        if not (0.0 < float(self.alpha) <= 1.0):
            raise ValueError(f"alpha={self.alpha!r}: the plausibility threshold must be in (0, 1]")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k={self.top_k!r}: must be >= 0 (0 = use alpha)")
        if self.max_candidates is not None and int(self.max_candidates) < 1:
            raise ValueError(f"max_candidates={self.max_candidates!r}: must be >= 1 or None")
        if not math.isfinite(float(self.beta)) or float(self.beta) < 0:
            raise ValueError(f"beta={self.beta!r}: the verifier weight must be a finite number >= 0")
        if self.do_sample and not float(self.temperature) > 0:
            raise ValueError(f"temperature={self.temperature!r}: must be > 0 when sampling")
        if not (0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: must be >= 1")


@dataclass
class RowStats:
    """Per-sequence counters of one decoding call (units: steps and token forwards).

    Attributes:
        steps: generated tokens.
        candidates: sum over steps of ``|V_t|`` (0 when the verifier is off).
        scored_steps: steps with ``|V_t| > 1`` (the verifier scored this row).
        flips: scored steps where the verifier changed the best candidate: ``argmax z*`` is not the LLM's most
            probable token (for sampling too, whatever token was then drawn).
        margin_sum: sum over scored steps of ``max_v s(v) - s(v_llm)``, the verifier's preference for its
            favourite candidate over the LLM's top token (>= 0).
        llm_tokens: tokens fed through the LLM (prompt tokens + one per step after the first).
        verifier_tokens: tokens fed through the verifier (prefix tokens read + candidate slots scored).
    """

    steps: int = 0
    candidates: int = 0
    scored_steps: int = 0
    flips: int = 0
    margin_sum: float = 0.0
    llm_tokens: int = 0
    verifier_tokens: int = 0

    @property
    def skipped_steps(self) -> int:
        """Steps where the verifier was not needed for this row (``|V_t| = 1``)."""
        return self.steps - self.scored_steps


@dataclass
class DecodeOutput:
    """Result of :func:`generate`.

    Attributes:
        tokens: per input row, the generated token ids (EOS or the stop-completing token included).
        stats: per input row, its :class:`RowStats`.
        finish_reasons: per input row, ``"eos"``, ``"stop"`` or ``"length"``.
        caches: only with ``return_caches=True``: ``(llm_cache, verifier_cache, verifier_columns)``, the final
            KV caches of the rows still active at the last step and how many sequence columns the verifier's
            cache holds (for tests and debugging).
    """

    tokens: list[list[int]]
    stats: list[RowStats]
    finish_reasons: list[str] = field(default_factory=list)
    caches: tuple | None = None


def plausible_candidates(
    logits: torch.Tensor,
    *,
    alpha: float = 0.1,
    top_k: int = 0,
    max_candidates: int | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate set ``V_t`` of each row (LLM2.md section 3 step 2; paper Sec. 2.2).

    Args:
        logits: next-token logits, shape ``[batch, vocab]`` (any float dtype).
        alpha: keep tokens with ``p(v) >= alpha * max_u p(u)``, i.e. ``logit >= max_logit + log(alpha)``.
        top_k: when > 0 keep the ``top_k`` most probable tokens instead.
        max_candidates: optional cap, most probable first.
        exclude: optional token ids to remove from the set, shape ``[batch]`` (exploration removes the gold
            token this way); later candidates shift left, and a row may then have no candidate at all.

    Returns:
        ``(ids, mask)``: ``ids`` shape ``[batch, K]`` long, sorted by decreasing probability (ties in index
        order), ``K`` the largest set size in the batch; ``mask`` shape ``[batch, K]`` bool, True for real
        candidates. Without ``exclude`` every row has at least one candidate and ``ids[:, 0]`` is the argmax.
    """
    z = logits.float()
    if top_k and top_k > 0:
        counts = torch.full((z.shape[0],), min(int(top_k), z.shape[-1]), device=z.device, dtype=torch.long)
    else:
        threshold = z.max(dim=-1, keepdim=True).values + math.log(alpha)
        counts = (z >= threshold).sum(dim=-1)
    if max_candidates is not None:
        counts = counts.clamp(max=int(max_candidates))
    k = int(counts.max().item())
    ids = torch.topk(z, k, dim=-1, sorted=True).indices
    mask = torch.arange(k, device=z.device)[None, :] < counts[:, None]
    if exclude is None:
        return ids, mask
    mask = mask & (ids != exclude.to(ids.device)[:, None])
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)  # real candidates first, order kept
    ids, mask = ids.gather(-1, order), mask.gather(-1, order)
    width = max(int(mask.sum(-1).max().item()), 1)
    return ids[:, :width], mask[:, :width]


def candidate_attention_mask(
    attention_mask: torch.Tensor, n_cached: int, n_candidates: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive 4-D mask for one verifier forward over pending real tokens followed by candidates.

    Keys are the ``S`` real columns (``n_cached`` already in the KV cache, then ``P = S - n_cached`` pending ones)
    followed by the ``K`` candidate slots; queries are the ``P`` pending tokens then the ``K`` candidates.
    A pending token sees the real (non-padding) tokens up to itself; a candidate sees every real token and
    itself only (LLM2.md section 3 step 3). Every query sees itself, so no row is fully masked.

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


def _cache_kwarg(model: torch.nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: torch.nn.Module, full_attention: bool = False):
    """A ``DynamicCache`` for ``model``; ``full_attention=True`` keeps every position of every layer (croppable)."""
    from transformers import DynamicCache

    if full_attention:
        return DynamicCache()
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def sliding_window(config) -> int | None:
    """The sliding-window size of a model whose attention layers use one, else None."""
    types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    uses = any("sliding" in str(t) for t in types) or bool(getattr(config, "use_sliding_window", False))
    return int(window) if uses and window else None


class _Forward:
    """A model forward with its KV cache, hiding the transformers keyword spelling (``cache`` / ``past_key_values``)."""

    def __init__(self, model: torch.nn.Module, full_attention: bool = False):
        self.model = model
        self.cache = _new_cache(model, full_attention)
        self._cache_kw = _cache_kwarg(model)
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def __call__(self, input_ids, attention_mask, position_ids, last_only: bool = False):
        kwargs = {self._cache_kw: self.cache, "use_cache": True}
        if last_only and self._keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.logits

    def select_rows(self, keep: torch.Tensor) -> None:
        if self.cache.get_seq_length() > 0:
            self.cache.batch_select_indices(keep)


@dataclass
class PrefixCache:
    """A batch of left-padded prompt prefixes whose LLM KV cache is already computed (``generate(prefix_cache=)``).

    Attributes:
        input_ids: ``[rows, C]`` long, the prefixes, left-padded (pad id 0, masked).
        attention_mask: ``[rows, C]`` long, 1 for real tokens.
        cache: the LLM's KV cache over those ``C`` columns, batch ``rows``; :func:`generate` consumes (mutates) it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: object


class SharedPrefix:
    """One token sequence run through the LLM once; batch caches of its prefixes are cut from that single forward.

    Causal attention makes the keys/values of ``token_ids[:L]`` the first ``L`` columns of the full sequence's, so
    every prefix (e.g. the ``prompt + gold[:t]`` of each explored position, LLM2.md section 4) shares one prefill;
    :meth:`batch` repeats and left-pads them into a :class:`PrefixCache` for :func:`generate`.

    Args:
        llm: a causal LM whose KV cache is a full-attention ``DynamicCache`` (no sliding-window/linear layers).
        token_ids: the sequence (``n >= 1`` ids).
        logits_at: indices into ``token_ids`` whose next-token logits to keep in ``self.logits``, shape
            ``[len(logits_at), vocab]`` float32 (row ``i`` predicts ``token_ids[logits_at[i] + 1]``).

    Raises:
        ValueError: an empty sequence, or a cache with sliding-window / non-standard layers (prefixes cannot be
            cut from it); callers then fall back to plain :func:`generate`.
    """

    @torch.inference_mode()
    def __init__(self, llm: "PreTrainedModel", token_ids: Sequence[int], *, logits_at: Sequence[int] = ()):
        if len(token_ids) == 0:
            raise ValueError("SharedPrefix needs at least one token")
        self.model = llm
        self.token_ids = [int(t) for t in token_ids]
        n = len(self.token_ids)
        dev = next(llm.parameters()).device
        fwd = _Forward(llm)
        at = torch.tensor([int(i) for i in logits_at], dtype=torch.long, device=dev)
        kwargs = {fwd._cache_kw: fwd.cache, "use_cache": True}
        if fwd._keep:
            kwargs["logits_to_keep"] = at if at.numel() else 1
        out = llm(
            input_ids=torch.tensor([self.token_ids], device=dev),
            attention_mask=torch.ones(1, n, dtype=torch.long, device=dev),
            position_ids=torch.arange(n, device=dev)[None],
            **kwargs,
        )
        logits = out.logits[0] if fwd._keep else out.logits[0, at]
        self.logits = logits[: at.numel()].float()
        layers = getattr(fwd.cache, "layers", None)
        if not layers or any(
            getattr(layer, "is_sliding", False) or getattr(layer, "keys", None) is None or layer.keys.shape[-2] != n
            for layer in layers
        ):
            raise ValueError(f"{type(llm).__name__}: its KV cache is not a plain full-attention cache; cannot share prefixes")
        self._kv = [(layer.keys, layer.values) for layer in layers]

    def batch(self, lengths: Sequence[int], repeats: Sequence[int]) -> PrefixCache:
        """A :class:`PrefixCache` whose rows are ``token_ids[:lengths[i]]``, each repeated ``repeats[i]`` times.

        Rows are in order (prefix 0 x repeats[0], prefix 1 x repeats[1], ...), left-padded to ``max(lengths)``.

        Raises:
            ValueError: a length outside ``[1, n]``, a negative repeat, or no row at all.
        """
        n = len(self.token_ids)
        if len(lengths) != len(repeats) or any(not 1 <= int(ln) <= n for ln in lengths) or any(r < 0 for r in repeats):
            raise ValueError(f"prefix lengths must be in [1, {n}] with one repeat count >= 0 each")
        if sum(repeats) == 0:
            raise ValueError("a prefix batch needs at least one row")
        width = max(int(ln) for ln, r in zip(lengths, repeats) if r > 0)
        cache = _new_cache(self.model)
        for li, (keys, values) in enumerate(self._kv):
            ks, vs = [], []
            for ln, r in zip(lengths, repeats):
                if r == 0:
                    continue
                k, v = keys[:, :, :ln], values[:, :, :ln]
                if ln < width:
                    k = torch.cat([k.new_zeros(*k.shape[:2], width - ln, k.shape[-1]), k], dim=2)
                    v = torch.cat([v.new_zeros(*v.shape[:2], width - ln, v.shape[-1]), v], dim=2)
                ks.append(k.expand(r, -1, -1, -1))
                vs.append(v.expand(r, -1, -1, -1))
            cache.update(torch.cat(ks, 0), torch.cat(vs, 0), li)
        ids, mask = [], []
        for ln, r in zip(lengths, repeats):
            pad = width - int(ln)
            ids += [[0] * pad + self.token_ids[: int(ln)]] * r
            mask += [[0] * pad + [1] * int(ln)] * r
        dev = self._kv[0][0].device
        return PrefixCache(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            attention_mask=torch.tensor(mask, dtype=torch.long, device=dev),
            cache=cache,
        )


def _row_uniforms(generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators]).to(device)


def sample_from_logits(
    z: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """Draw one index per row from ``softmax(z / temperature)`` after a top-p (nucleus) filter.

    Each row draws one uniform number from its own CPU ``torch.Generator``, so a row's samples depend only on its
    own seed and logits, never on the other rows of the batch or on the device.

    Args:
        z: scores ``[batch, n]`` (``-inf`` = excluded).
        temperature: > 0.
        top_p: keep the smallest prefix of the sorted distribution whose mass reaches ``top_p`` (at least 1).
        generators: one per row.

    Returns:
        Long tensor ``[batch]`` of indices into ``n``.
    """
    probs = torch.softmax(z.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        before = sorted_p.cumsum(-1) - sorted_p
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    cdf = sorted_p.double().cumsum(-1)
    u = _row_uniforms(generators, z.device)[:, None] * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u).clamp_(max=z.shape[-1] - 1)
    # never land on a zero-probability slot (u at the very top of the cdf)
    nonzero = (sorted_p > 0).sum(-1, keepdim=True) - 1
    pick = torch.minimum(pick, nonzero)
    return order.gather(-1, pick)[:, 0]


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row, seeded with ``seeds[i]``."""
    gens = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(s))
        gens.append(g)
    return gens


@torch.inference_mode()
def generate(
    llm: "PreTrainedModel",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: DecodeConfig,
    *,
    verifier: "PreTrainedModel | None" = None,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    seeds: Sequence[int] | None = None,
    return_caches: bool = False,
    prefix_cache: PrefixCache | None = None,
    repeats: Sequence[int] | None = None,
) -> DecodeOutput:
    """Generate continuations with LLM2 dual-process decoding (paper Eq. 1; LLM2.md section 3).

    Args:
        llm: any ``AutoModelForCausalLM`` (System 1).
        input_ids: prompts, shape ``[batch, S]``, LEFT-padded.
        attention_mask: ``[batch, S]``, 1 for real tokens (``None`` = no padding).
        config: the decoding settings.
        verifier: a 1-label token-classification model sharing the LLM's tokenizer (System 2), on the same
            device; ``None`` (or ``config.beta == 0``) decodes with the LLM alone.
        tokenizer: needed only when ``config.stop`` is non-empty.
        seeds: one integer per row for sampling (row ``i`` uses its own generator seeded ``seeds[i]``);
            default ``0..batch-1``. Ignored for greedy decoding.
        return_caches: also return the final KV caches (see :class:`DecodeOutput`).
        prefix_cache: optional :class:`PrefixCache` (from :meth:`SharedPrefix.batch`) with one row per input row:
            the LLM's cache already holds those columns, so ``input_ids`` are only the tokens AFTER the prefix
            (left-padded, >= 1 real token per row) and the effective prompt of row ``i`` is its prefix followed
            by its own tokens. The cache is consumed. The verifier (if any) still reads the whole prompt itself.
            ``stats.llm_tokens`` then counts only the tokens fed by this call (not the shared prefill).
        repeats: optional number of samples per input row (self-consistency). Each distinct prompt is prefilled
            ONCE by the LLM and by the verifier, and both KV caches are then expanded to ``repeats[i]`` rows
            (row order: prompt 0 x repeats[0], prompt 1 x repeats[1], ...); ``seeds`` then has one entry per
            output row. Prompt tokens are counted in the stats of each prompt's first copy only.

    Returns:
        :class:`DecodeOutput` with the generated ids of each output row (prompt excluded) and per-row statistics.

    Raises:
        ValueError: an empty prompt (a row with no real token), a seeds list of the wrong length, repeats that
            are not one integer >= 1 per row, or stop strings without a tokenizer.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, seq], got {tuple(input_ids.shape)}")
    n_prompts, seq_len = input_ids.shape
    if repeats is not None:
        repeats = [int(r) for r in repeats]
        if len(repeats) != n_prompts or min(repeats, default=1) < 1:
            raise ValueError(f"repeats must hold one integer >= 1 per prompt row ({n_prompts}), got {repeats}")
        if prefix_cache is not None:
            raise ValueError("repeats and prefix_cache cannot be combined")
    batch = sum(repeats) if repeats is not None else n_prompts
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist() if seq_len else list(range(n_prompts))
    if empty:
        raise ValueError(f"empty prompt in row(s) {empty}: every prompt needs at least one token")
    if config.stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    if seeds is None:
        seeds = list(range(batch))
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")

    use_verifier = verifier is not None and float(config.beta) != 0.0
    do_sample = bool(config.do_sample)
    generators = make_generators(seeds) if do_sample else []
    eos = set(int(t) for t in config.eos_token_ids)
    stop = [config.stop] if isinstance(config.stop, str) else [s for s in config.stop if s]
    # a token holds at least one byte of text, so a stop string spans at most len(utf-8 bytes) + 1 tokens
    stop_window = (max(len(s.encode("utf-8")) for s in stop) + 4) if stop else 0

    llm_fwd = _Forward(llm)
    ver_fwd = None
    v_vocab = None
    if use_verifier:
        # The verifier's cache is cropped after every scoring pass, so it keeps full-attention layers; a sliding
        # window would need a banded 4-D mask, so such verifiers are limited to sequences inside their window.
        window = sliding_window(verifier.config)
        if window is not None and seq_len + int(config.max_new_tokens) > window:
            raise ValueError(
                f"the verifier uses sliding-window attention (window {window} tokens); LLM2 decoding supports "
                f"prompt + new tokens <= {window}, got {seq_len} + {int(config.max_new_tokens)}"
            )
        ver_fwd = _Forward(verifier, full_attention=True)
        v_vocab = verifier.get_input_embeddings().num_embeddings
    v_cached = 0  # columns of `seq` already in the verifier's KV cache

    seq = input_ids
    attn = attention_mask
    fed = attn.sum(-1)  # prompt tokens this call feeds through the LLM, per row
    if prefix_cache is not None:
        if prefix_cache.input_ids.shape[0] != batch:
            raise ValueError(f"prefix_cache has {prefix_cache.input_ids.shape[0]} rows for a batch of {batch}")
        llm_fwd.cache = prefix_cache.cache
        seq = torch.cat([prefix_cache.input_ids.to(seq.device), seq], dim=1)
        attn = torch.cat([prefix_cache.attention_mask.to(device=attn.device, dtype=torch.long), attn], dim=1)
    n_pre = seq.shape[1] - input_ids.shape[1]  # columns already in the LLM's cache
    next_pos = attn.sum(-1)  # position id of the next token, per row
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = llm_fwd(seq[:, n_pre:], attn, positions[:, n_pre:], last_only=True)[:, -1, :].float()

    stats = [RowStats(llm_tokens=int(n)) for n in fed.tolist()]
    if repeats is not None:
        # self-consistency: the verifier reads each distinct prompt once too, then both caches are expanded.
        if ver_fwd is not None:
            ver_fwd(seq, candidate_attention_mask(attn, 0, 0, verifier.dtype), positions)
            v_cached = seq.shape[1]
            for st, n in zip(stats, fed.tolist()):
                st.verifier_tokens = int(n)
        index = torch.repeat_interleave(
            torch.arange(n_prompts, device=seq.device), torch.tensor(repeats, device=seq.device)
        )
        seq, attn, positions, next_pos, logits = seq[index], attn[index], positions[index], next_pos[index], logits[index]
        llm_fwd.select_rows(index)
        if ver_fwd is not None:
            ver_fwd.select_rows(index)
        firsts = {0, *itertools.accumulate(repeats[:-1])}
        stats = [stats[p] if i in firsts else RowStats() for i, p in enumerate(index.tolist())]

    active = list(range(batch))  # original row of each row of the working batch
    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch

    for step in range(int(config.max_new_tokens)):
        if use_verifier:
            if logits.shape[-1] > v_vocab:  # ids the verifier has no embedding for are never candidates
                logits = logits[:, :v_vocab]
            cand_ids, cand_mask = plausible_candidates(
                logits, alpha=config.alpha, top_k=config.top_k, max_candidates=config.max_candidates
            )
            n_cand = cand_mask.sum(-1)
            z = logits.gather(-1, cand_ids)
            scored = n_cand > 1
            scores = None
            if bool(scored.any()):
                k = cand_ids.shape[1]
                mask4d = candidate_attention_mask(attn, v_cached, k, verifier.dtype)
                pend_pos = positions[:, v_cached:]
                pos = torch.cat([pend_pos, next_pos[:, None].expand(-1, k)], dim=1)
                inp = torch.cat([seq[:, v_cached:], cand_ids], dim=1)
                out = ver_fwd(inp, mask4d, pos)
                scores = out[:, -k:, 0].float()
                ver_fwd.cache.crop(-k)
                read = attn[:, v_cached:].sum(-1) + k
                v_cached = seq.shape[1]
                z = z + float(config.beta) * scores
            z = z.masked_fill(~cand_mask, float("-inf"))
            if do_sample:
                idx = sample_from_logits(z, config.temperature, config.top_p, [generators[r] for r in active])
            else:
                idx = z.argmax(-1)
            next_tok = cand_ids.gather(-1, idx[:, None])[:, 0]
            # bookkeeping for the traces
            n_list = n_cand.tolist()
            if scores is not None:
                sc = scores.masked_fill(~cand_mask, float("-inf"))
                margin = (sc.max(-1).values - scores[:, 0]).tolist()
                # a flip: the verifier-adjusted best candidate is not the LLM's top token (sampled or not)
                flips = (z.argmax(-1) != 0).tolist()
                read_list = read.tolist()
                for i, r in enumerate(active):
                    st = stats[r]
                    st.verifier_tokens += int(read_list[i])
                    if n_list[i] > 1:
                        st.scored_steps += 1
                        st.flips += int(flips[i])
                        st.margin_sum += float(margin[i])
            for i, r in enumerate(active):
                stats[r].candidates += int(n_list[i])
        else:
            if do_sample:
                next_tok = sample_from_logits(logits, config.temperature, config.top_p, [generators[r] for r in active])
            else:
                next_tok = logits.argmax(-1)

        seq = torch.cat([seq, next_tok[:, None]], dim=1)
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
        positions = torch.cat([positions, next_pos[:, None]], dim=1)
        next_pos = next_pos + 1

        finished = []
        for i, (r, t) in enumerate(zip(active, next_tok.tolist())):
            tokens[r].append(t)
            stats[r].steps += 1
            if t in eos:
                reasons[r] = "eos"
                finished.append(i)
            elif stop and tokenizer is not None:
                tail = tokenizer.decode(tokens[r][-stop_window:])
                if any(s in tail for s in stop):
                    reasons[r] = "stop"
                    finished.append(i)
        if len(finished) == len(active) or step + 1 == int(config.max_new_tokens):
            break
        if finished:
            done = set(finished)
            keep_list = [i for i in range(len(active)) if i not in done]
            keep = torch.tensor(keep_list, device=seq.device)
            active = [active[i] for i in keep_list]
            seq, attn, positions, next_pos = seq[keep], attn[keep], positions[keep], next_pos[keep]
            next_tok = next_tok[keep]
            llm_fwd.select_rows(keep)
            if ver_fwd is not None:
                ver_fwd.select_rows(keep)
        logits = llm_fwd(next_tok[:, None], attn, next_pos[:, None] - 1)[:, -1, :].float()
        for r in active:
            stats[r].llm_tokens += 1

    caches = (llm_fwd.cache, ver_fwd.cache if ver_fwd else None, v_cached) if return_caches else None
    return DecodeOutput(tokens=tokens, stats=stats, finish_reasons=reasons, caches=caches)
