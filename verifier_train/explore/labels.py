"""Exploration labels: the candidate sets, the draws among them, and the rules that make negatives.

docs/method.md section 4 (paper Sec. 2.3, Eq. 5-6). The candidates of a response position ``t`` are the plausible
set (:func:`llm2_eval.candidates.plausible_candidates`, alpha / top-k, the same function decoding uses) without the
gold token (:func:`candidate_mask`). The rollout strategy (:mod:`~verifier_train.explore.rollout`) draws among them
(:func:`candidate_draws`) and measures each candidate's quality

    q(v) = (1/m) * #{rollouts whose extracted answer equals the gold answer}      (Eq. 5)

which one of three rules turns into a label (:func:`is_negative`):

- ``--label absolute`` (the paper): ``v`` is a negative  <=>  ``q(v) < tau`` (``--tau``, 0.5 by default; Eq. 6);
- ``--label relative``: ``v`` is a negative  <=>  ``q(v) <= q(gold) - margin`` (``--margin``, default 0.25), with
  q(gold) measured with the same rollout budget. With a weak model the absolute rule labels nearly every candidate
  negative (q(gold) itself is often below tau); ranking against the gold token keeps only candidates that are
  clearly worse. Positions with ``q(gold) < --min-gold-quality`` are not judged (``unjudged_positions``);
- ``--label significant``: the same comparison judged on the rollout counts as they are, so that sampling error
  cannot make a negative (with m = 4 the standard error of q is ~0.2-0.25, the size of the margin, and one failed
  rollout, q 0.75 vs 1.0, is a relative-rule negative): ``v`` is a negative  <=>  ``p <= --significance`` (default
  0.05), ``p`` the one-sided Fisher exact p-value of ``q(v) < q(gold)`` from ``correct_v`` of m and
  ``correct_gold`` of m (:func:`worse_than_gold_p`, :mod:`verifier_train.explore.significance`), written as
  ``p_worse``. A difference of one rollout never passes (p = 1/2), and at m = 4 and 0.05 only 0/4 vs 4/4 does
  (p = 1/70); positions where no outcome of the m candidate rollouts could pass (at m = 4 and 0.05: every position
  whose gold token did not reach the answer in all 4 rollouts) are not judged either.

The answer is extracted from the whole response: gold prefix ``x_{start..t-1}`` + ``v`` + the rollout
(:func:`default_checker`). The sample strategy (:mod:`~verifier_train.explore.sample`) draws negatives from
:func:`sample_scores` over the candidate set without the end-of-turn ids (:func:`without_ids`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from llm2_eval.answers import gsm8k_is_correct, math_is_correct
from llm2_eval.candidates import plausible_candidates
from verifier_train.explore.config import Checker, ExploreConfig
from verifier_train.explore.significance import fisher_less_p


def default_checker(data_format: str) -> Checker:
    """The answer checker of a format: GSM8K numeric equality or MATH math-verify (docs/method.md section 7)."""
    fn = gsm8k_is_correct if data_format == "gsm8k" else math_is_correct
    return lambda text, gold, tokens: fn(text, gold)


def is_negative(
    q: float,
    q_gold: float | None,
    cfg: ExploreConfig,
    *,
    counts: tuple[int, int] | None = None,
    gold_counts: tuple[int, int] | None = None,
) -> bool:
    """The label rule: whether candidate ``v`` with quality ``q = q(v)`` is a negative (docs/method.md section 4
    step 5).

    ``absolute`` (paper Eq. 6): ``q(v) < tau``. ``relative``: ``q(v) <= q(gold) - margin`` (the candidate's
    continuations reach the answer clearly less often than the gold token's, measured with the same rollout
    budget; value estimates rank more reliably than they score, as rStar-Math, PQM and PAV found).
    ``significant``: the one-sided test of :func:`worse_than_gold_p` on the rollout counts gives ``p <=
    significance`` (q(v) < q(gold) beyond sampling error; a difference of one rollout never is).

    Args:
        q: q(v), the share of the candidate's rollouts that reach the answer (Eq. 5), in [0, 1].
        q_gold: q(gold), the same for the gold token (``relative``), else may be None.
        cfg: the settings (``label``, ``tau``, ``margin``, ``significance``).
        counts: ``(correct, rollouts)`` of the candidate (``significant``).
        gold_counts: ``(correct, rollouts)`` of the gold token (``significant``).

    Raises:
        ValueError: ``relative`` without ``q_gold``; ``significant`` without both counts.
    """
    if cfg.label == "absolute":
        return q < cfg.tau
    if cfg.label == "significant":
        if counts is None or gold_counts is None:
            raise ValueError("the significant label rule needs the rollout counts of the candidate and the gold token")
        return worse_than_gold_p(counts, gold_counts) <= cfg.significance
    if q_gold is None:
        raise ValueError("the relative label rule needs q(gold)")
    return q <= q_gold - cfg.margin + 1e-9


def worse_than_gold_p(counts: tuple[int, int], gold_counts: tuple[int, int]) -> float:
    """p-value of "q(v) < q(gold)" from ``(correct, rollouts)`` counts: one-sided Fisher exact test
    (:func:`~verifier_train.explore.significance.fisher_less_p`; formula, sources and why Fisher there).

    A count with 0 rollouts is an outcome known exactly, ``correct`` in {0, 1} (an end-of-turn token: the response
    ends there and is right or wrong, no sampling); against it the test is the exact binomial tail at that known
    rate, which is 0 or 1: a known failure (0) is worse than a gold token with at least one success, and a
    candidate with at least one failed rollout is worse than a known success of the gold token (1); two known
    outcomes compare as they are.

    Returns:
        The p-value in [0, 1] (no unit): small means the candidate reaches the answer less often than the gold token.

    Raises:
        ValueError: impossible counts (more correct than rollouts; a known outcome not 0 or 1).
    """
    (cv, mv), (cg, mg) = (tuple(int(x) for x in c) for c in (counts, gold_counts))
    for c, m in ((cv, mv), (cg, mg)):
        if m < 0 or c < 0 or c > max(m, 1):
            raise ValueError(f"counts {c} of {m}: need 0 <= correct <= rollouts (or 0/1 with 0 rollouts)")
    if mv == 0 and mg == 0:
        return 0.0 if cv < cg else 1.0
    if mv == 0:  # q(v) known: H0 q(gold) <= q(v); P(X_gold >= cg) under q(gold) = q(v)
        return 0.0 if cv == 0 and cg > 0 else 1.0
    if mg == 0:  # q(gold) known: H0 q(v) >= q(gold); P(X_v <= cv) under q(v) = q(gold)
        return 0.0 if cg == 1 and cv < mv else 1.0
    return fisher_less_p(cv, mv, cg, mg)


def candidate_draws(
    logits: torch.Tensor, cand_ids: torch.Tensor, n: int, seed: int
) -> list[int]:
    """Draw ``min(n, K)`` distinct candidates from ``p_t`` restricted to the candidate set (docs/method.md section
    4 step 3).

    Args:
        logits: ``[vocab]`` logits (or log-probs) of one position.
        cand_ids: ``[K]`` the plausible non-gold token ids (K >= 1).
        n: how many to draw.
        seed: seed of the draw's CPU generator.

    Returns:
        Token ids in draw order (weighted sampling without replacement).
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    probs = torch.softmax(logits[cand_ids].float().cpu(), dim=-1)
    k = min(int(n), int(cand_ids.numel()))
    idx = torch.multinomial(probs, k, replacement=False, generator=g)
    return [int(cand_ids[i]) for i in idx.tolist()]


def sample_scores(mode: str, logits: torch.Tensor, contrast_logits: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """Scores of the sample strategy's distribution, ``[P, vocab]`` (the released data builder's ``--sample`` modes).

    ``base``: the LLM's log-probabilities ``l1``; ``uniform``: zeros; ``contrast``: ``l1 + gamma * (l1 - l2)`` with
    ``l2`` the second model's log-probabilities; ``expert``: ``l2`` (negatives sampled from the second, stronger
    model). Callers mask the non-candidates with ``-inf`` and apply ``softmax(scores / temperature)`` (log-probs
    or raw logits give the same distribution: softmax is shift-invariant per row).

    Raises:
        ValueError: an unknown mode, or ``contrast`` / ``expert`` without the second model's logits.
    """
    l1 = torch.log_softmax(logits.float(), dim=-1)
    if mode == "base":
        return l1
    if mode == "uniform":
        return torch.zeros_like(l1)
    if mode in ("contrast", "expert"):
        if contrast_logits is None:
            raise ValueError(f"{mode} mode needs the second model's logits")
        l2 = torch.log_softmax(contrast_logits.float(), dim=-1)
        if mode == "expert":
            return l2
        out = l1 + float(gamma) * (l1 - l2)
        return out.nan_to_num(nan=-float("inf"))
    raise ValueError(f"unknown sample mode {mode!r}")


def candidate_mask(logits: torch.Tensor, gold_ids: torch.Tensor, alpha: float | None, top_k: int) -> torch.Tensor:
    """Dense ``[P, vocab]`` bool mask of the plausible set without the gold token, via
    :func:`llm2_eval.candidates.plausible_candidates` (the one candidate-set function: alpha set AND top-k)."""
    ids, mask = plausible_candidates(logits, alpha=alpha, top_k=top_k, exclude=gold_ids)
    dense = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    return dense.scatter(1, ids, mask)


def without_ids(mask: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """``mask`` (``[P, vocab]`` bool) with the columns of ``token_ids`` cleared (ids outside the vocabulary are
    ignored); a new tensor. The sample strategy removes the end-of-turn ids from its candidate sets this way."""
    cols = sorted({int(v) for v in token_ids if 0 <= int(v) < mask.shape[-1]})
    if not cols:
        return mask
    out = mask.clone()
    out[:, cols] = False
    return out
