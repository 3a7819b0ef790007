"""Dual-process decoding (LLM2 paper Eq. 1; docs/method.md section 3), in plain PyTorch on transformers models.

At every step ``t`` and for every sequence of the batch (:class:`_Decoding`, one method per step):

1. ``z_t = pi(x_<t)``: next-token logits of the LLM (KV cache; :meth:`~_Decoding.feed`).
2. Candidates ``V_t``: the plausibility mask ``p(v) >= alpha * max_u p(u)`` intersected with the ``top_k`` most
   probable tokens (each when set; ``top_k`` alone is pure top-k), optionally capped at ``max_candidates``
   (:func:`~llm2_eval.candidates.plausible_candidates`, shared with exploration; :meth:`~_Decoding.candidates`).
3. The rows with ``|V_t| > 1`` have all their candidates scored in ONE verifier forward: the candidates are
   appended after the sequence, all with position id = current length, each attending to the real prefix and to
   itself (a 4-D attention mask); rows with a single candidate skip the verifier
   (:class:`~llm2_eval.scoring.VerifierCache`; :meth:`~_Decoding.score`).
4. ``z*_t[v] = z_t[v] + beta * s(x_<t, v)`` on ``V_t``, ``-inf`` elsewhere (:meth:`~_Decoding.choose`).
5. Greedy: argmax of ``z*``. Sampling: temperature and top-p on ``z*``.
6. The verifier's KV cache holds exactly the real sequence of every row: the candidates' key/values are cropped
   after each scoring forward except the chosen one's, which becomes the row's next real column (it attended to
   exactly what that token attends to), and real tokens the verifier has not read yet ("pending" tokens: the
   prompt and tokens of steps where the row had ``|V_t| = 1``) are fed in front of the row's next candidates
   (:meth:`~_Decoding.append` for the sequences, :meth:`~_Decoding.finish` for stop strings / EOS).

``beta == 0`` or no verifier is plain System-1 decoding over the full vocabulary (token for token the same as
transformers' greedy ``generate``); the verifier is then never called.

The loop knows nothing of lm-eval; it serves lm-eval, exploration rollouts and the benchmarks alike.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from llm2_eval.candidates import make_generators, plausible_candidates, sample_from_logits
from llm2_eval.fused import FusedHeadScorer, can_fuse
from llm2_eval.kv_cache import CachedForward, PrefixCache, sliding_window
from llm2_eval.scoring import ScoredCandidates, VerifierCache

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class DecodeConfig:
    """Settings of one decoding call (docs/method.md section 3; released defaults alpha 0.1, beta 0.25).

    Attributes:
        alpha: plausibility threshold in (0, 1]: candidates are tokens with ``p >= alpha * p_max``; None = 0.1
            without ``top_k``, no threshold with ``top_k`` (:func:`~llm2_eval.candidates.resolve_alpha`).
        top_k: when > 0, the candidates are at most the ``top_k`` most probable tokens: the intersection with the
            alpha set when alpha is given too (:func:`~llm2_eval.candidates.plausible_candidates`).
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

    alpha: float | None = None
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
        if self.alpha is not None and not (0.0 < float(self.alpha) <= 1.0):
            raise ValueError(f"alpha={self.alpha!r}: the plausibility threshold must be in (0, 1]")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k={self.top_k!r}: must be >= 0 (0 = off)")
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
            KV caches of the rows still active at the last step and how many sequence columns the verifier has
            read per row (an int when every row has read as many, else a list with one count per row); a row's
            verifier cache holds exactly its real sequence up to that column (for tests and debugging).
    """

    tokens: list[list[int]]
    stats: list[RowStats]
    finish_reasons: list[str] = field(default_factory=list)
    caches: tuple | None = None


class NonFiniteScoreError(ValueError):
    """The verifier gave a NaN or infinite score to a candidate (decoding stops: the fusion would be meaningless)."""


def _check_inputs(input_ids, attention_mask, config, tokenizer, seeds, prefix_cache, repeats):
    """Validated ``(attention_mask, seeds, repeats, batch)`` of a :func:`generate` call (see its Raises)."""
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
    if prefix_cache is not None and prefix_cache.input_ids.shape[0] != batch:
        raise ValueError(f"prefix_cache has {prefix_cache.input_ids.shape[0]} rows for a batch of {batch}")
    return attention_mask, seeds, repeats, batch


class _Decoding:
    """The state of one :func:`generate` call, with one method per step of the decode loop.

    The working batch holds the rows still generating (``active[i]`` is the output row of working row ``i``):
    ``seq`` ``[rows, S]`` the left-padded prompt + generated tokens, ``attn`` its padding mask, ``positions`` its
    position ids, ``next_pos`` ``[rows]`` the position id of the next token, ``logits`` ``[rows, vocab]`` float32
    the LLM's next-token logits. ``scorer`` is the verifier side (None when decoding with the LLM alone).
    """

    def __init__(self, llm, input_ids, attention_mask, config: DecodeConfig, *, verifier, tokenizer, seeds,
                 prefix_cache, repeats):
        attention_mask, seeds, repeats, batch = _check_inputs(
            input_ids, attention_mask, config, tokenizer, seeds, prefix_cache, repeats
        )
        self.config, self.tokenizer = config, tokenizer
        self.max_new_tokens = int(config.max_new_tokens)
        self.beta = float(config.beta)
        self.generators = make_generators(seeds) if config.do_sample else []
        self.eos = set(int(t) for t in config.eos_token_ids)
        self.stop = [config.stop] if isinstance(config.stop, str) else [s for s in config.stop if s]
        # a token holds at least one byte of text, so a stop string spans at most len(utf-8 bytes) + 1 tokens
        self.stop_window = (max(len(s.encode("utf-8")) for s in self.stop) + 4) if self.stop else 0
        self.llm = CachedForward(llm)
        self.scorer = None
        if verifier is not None and self.beta != 0.0:
            # The verifier's cache is cropped after every scoring pass, so it keeps full-attention layers; a sliding
            # window would need a banded 4-D mask, so such verifiers are limited to sequences inside their window.
            window = sliding_window(verifier.config)
            if window is not None and input_ids.shape[1] + self.max_new_tokens > window:
                raise ValueError(
                    f"the verifier uses sliding-window attention (window {window} tokens); LLM2 decoding supports "
                    f"prompt + new tokens <= {window}, got {input_ids.shape[1]} + {self.max_new_tokens}"
                )
            if can_fuse(llm, verifier):  # a head on the LLM's own backbone: one forward per step does both jobs
                self.scorer = FusedHeadScorer(llm, verifier, self.llm, input_ids.shape[0])
            else:
                self.scorer = VerifierCache(verifier, input_ids.shape[0], input_ids.device)
        self.fused = isinstance(self.scorer, FusedHeadScorer)
        self.active = list(range(batch))
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.reasons = ["length"] * batch
        self._prefill(input_ids, attention_mask, prefix_cache, repeats)

    def _prefill(self, input_ids, attn, prefix_cache: PrefixCache | None, repeats: list[int] | None) -> None:
        """Step 1 for the prompts: the LLM reads them (after a shared prefix, if any); with ``repeats`` the
        verifier reads each distinct prompt too, and both caches are expanded to the samples."""
        fed = attn.sum(-1)  # prompt tokens this call feeds through the LLM, per row
        seq = input_ids
        if prefix_cache is not None:
            self.llm.cache = prefix_cache.cache
            seq = torch.cat([prefix_cache.input_ids.to(seq.device), seq], dim=1)
            attn = torch.cat([prefix_cache.attention_mask.to(device=attn.device, dtype=torch.long), attn], dim=1)
        n_pre = seq.shape[1] - input_ids.shape[1]  # columns already in the LLM's cache
        self.seq, self.attn = seq, attn
        self.next_pos = attn.sum(-1)
        self.positions = (attn.cumsum(-1) - 1).clamp(min=0)
        self.logits = self.llm(seq[:, n_pre:], attn, self.positions[:, n_pre:], last_only=True)[:, -1, :].float()
        self.stats = [RowStats(llm_tokens=int(n)) for n in fed.tolist()]
        if repeats is None:
            return
        # self-consistency: the verifier reads each distinct prompt once too, then both caches are expanded.
        if self.scorer is not None and not self.fused:  # a fused scorer reads the LLM's own cache
            for st, n in zip(self.stats, self.scorer.read_prompts(self.seq, self.attn, self.positions).tolist()):
                st.verifier_tokens = int(n)
        index = torch.repeat_interleave(
            torch.arange(len(repeats), device=seq.device), torch.tensor(repeats, device=seq.device)
        )
        self._select(index)
        firsts = {0, *itertools.accumulate(repeats[:-1])}
        self.stats = [self.stats[p] if i in firsts else RowStats() for i, p in enumerate(index.tolist())]

    def _select(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the working rows ``index``, in every per-row tensor and in both caches."""
        self.seq, self.attn, self.positions = self.seq[index], self.attn[index], self.positions[index]
        self.next_pos, self.logits = self.next_pos[index], self.logits[index]
        self.llm.select_rows(index)
        if self.scorer is not None:
            self.scorer.select_rows(index)

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: ``(ids, mask)`` ``[rows, K]`` of each row's candidate set ``V_t`` (ids the verifier has no
        embedding for are never candidates)."""
        cfg = self.config
        logits = self.logits[:, : self.scorer.vocab]
        return plausible_candidates(logits, alpha=cfg.alpha, top_k=cfg.top_k, max_candidates=cfg.max_candidates)

    def score(self, cand_ids: torch.Tensor, cand_mask: torch.Tensor) -> ScoredCandidates | None:
        """Step 3: the verifier's scores ``[rows, K]`` float32 of the candidates of the rows with ``|V_t| > 1``
        (0 for the others), with what :meth:`choose` hands back to the scorer, or None when no row needs the
        verifier; counts the verifier's token forwards."""
        scored = self.scorer.score(self.seq, self.attn, self.positions, self.next_pos, cand_ids, cand_mask.sum(-1))
        if scored is None:
            return None
        for r, n in zip(self.active, scored.fed.tolist()):
            if self.fused:  # the candidates' forward is the LLM's own step (llm2_eval/fused.py)
                self.stats[r].llm_tokens += int(n)
            else:
                self.stats[r].verifier_tokens += int(n)
        return scored

    def choose(self, cand_ids: torch.Tensor, cand_mask: torch.Tensor, scored: ScoredCandidates | None) -> torch.Tensor:
        """Steps 4-5: fuse ``z* = z + beta * s`` on the candidates and pick one per row (greedy or sampled); the
        scorer keeps the chosen candidates (step 6, :meth:`~llm2_eval.scoring.VerifierCache.accept`). Returns the
        chosen token ids ``[rows]`` and counts candidates, flips and score margins."""
        scores = scored.scores if scored is not None else None
        z = self.logits.gather(-1, cand_ids)
        if scores is not None:
            z = z + self.beta * scores
        z = z.masked_fill(~cand_mask, float("-inf"))
        slot = self.draw(z)
        next_tok = cand_ids.gather(-1, slot[:, None])[:, 0]
        if scored is not None:
            next_logits = self.scorer.accept(scored, slot)
            if next_logits is not None:  # fused: the chosen candidate's logits are the next step's, no separate feed
                self.logits = next_logits
        n_list = cand_mask.sum(-1).tolist()
        for r, n in zip(self.active, n_list):
            self.stats[r].candidates += int(n)
        if scores is not None:
            margin = (scores.masked_fill(~cand_mask, float("-inf")).max(-1).values - scores[:, 0]).tolist()
            # a flip: the verifier-adjusted best candidate is not the LLM's top token (sampled or not)
            flips = (z.argmax(-1) != 0).tolist()
            for i, r in enumerate(self.active):
                if n_list[i] > 1:
                    if not math.isfinite(margin[i]):  # NaN / inf scores: the fusion would be meaningless
                        raise NonFiniteScoreError(
                            f"the verifier's scores are not finite ({margin[i]}) at decoding step "
                            f"{self.stats[r].steps + 1}: its weights or its dtype overflow; load it in float32 "
                            "(dtype=float32) or check the checkpoint")
                    st = self.stats[r]
                    st.scored_steps += 1
                    st.flips += int(flips[i])
                    st.margin_sum += float(margin[i])
        return next_tok

    def draw(self, z: torch.Tensor) -> torch.Tensor:
        """Step 5: one index per row of ``z`` ``[rows, n]``: argmax, or a seeded sample (temperature, top-p)."""
        if not self.config.do_sample:
            return z.argmax(-1)
        gens = [self.generators[r] for r in self.active]
        return sample_from_logits(z, self.config.temperature, self.config.top_p, gens)

    def append(self, next_tok: torch.Tensor) -> list[int]:
        """Cache bookkeeping: ``next_tok`` ``[rows]`` joins each row's sequence (the LLM reads it at the next
        :meth:`feed`, the verifier when the row is next scored); returns the token ids as a list."""
        self.seq = torch.cat([self.seq, next_tok[:, None]], dim=1)
        self.attn = torch.cat([self.attn, self.attn.new_ones(self.attn.shape[0], 1)], dim=1)
        self.positions = torch.cat([self.positions, self.next_pos[:, None]], dim=1)
        self.next_pos = self.next_pos + 1
        return next_tok.tolist()

    def finish(self, new_tokens: list[int]) -> list[int]:
        """Stop handling: record each row's new token; returns the working rows that just ended (EOS, or a stop
        string completed by the token, which is kept)."""
        finished = []
        for i, (r, t) in enumerate(zip(self.active, new_tokens)):
            self.tokens[r].append(t)
            self.stats[r].steps += 1
            if t in self.eos:
                self.reasons[r] = "eos"
                finished.append(i)
            elif self.stop and self.tokenizer is not None:
                tail = self.tokenizer.decode(self.tokens[r][-self.stop_window:])
                if any(s in tail for s in self.stop):
                    self.reasons[r] = "stop"
                    finished.append(i)
        return finished

    def drop(self, finished: list[int], next_tok: torch.Tensor) -> torch.Tensor:
        """Finished rows leave the working batch (and both caches); returns ``next_tok`` of the rows kept."""
        if not finished:
            return next_tok
        done = set(finished)
        keep_list = [i for i in range(len(self.active)) if i not in done]
        keep = torch.tensor(keep_list, device=self.seq.device)
        self.active = [self.active[i] for i in keep_list]
        self._select(keep)
        return next_tok[keep]

    def feed(self, next_tok: torch.Tensor) -> None:
        """Step 1 of the next step: the LLM reads the chosen tokens ``[rows]`` and gives the next logits (a fused
        step already did: its candidates' forward was the read)."""
        if self.fused:
            return
        self.logits = self.llm(next_tok[:, None], self.attn, self.next_pos[:, None] - 1)[:, -1, :].float()
        for r in self.active:
            self.stats[r].llm_tokens += 1

    def output(self, return_caches: bool) -> DecodeOutput:
        """The :class:`DecodeOutput` of the call."""
        caches = None
        if return_caches:
            ver = self.scorer
            caches = (self.llm.cache, ver.cache if ver else None, ver.columns() if ver else 0)
        return DecodeOutput(tokens=self.tokens, stats=self.stats, finish_reasons=self.reasons, caches=caches)


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
    """Generate continuations with LLM2 dual-process decoding (paper Eq. 1; docs/method.md section 3).

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
    run = _Decoding(llm, input_ids, attention_mask, config, verifier=verifier, tokenizer=tokenizer, seeds=seeds,
                    prefix_cache=prefix_cache, repeats=repeats)
    for step in range(run.max_new_tokens):
        if run.scorer is None:
            next_tok = run.draw(run.logits)
        else:
            cand_ids, cand_mask = run.candidates()
            next_tok = run.choose(cand_ids, cand_mask, run.score(cand_ids, cand_mask))
        finished = run.finish(run.append(next_tok))
        if len(finished) == len(run.active) or step + 1 == run.max_new_tokens:
            break
        next_tok = run.drop(finished, next_tok)
        run.feed(next_tok)
    return run.output(return_caches)
