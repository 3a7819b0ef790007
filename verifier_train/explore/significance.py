"""Whether one rollout success rate is significantly below another: the statistics of ``--label significant``.

A candidate's quality ``q(v)`` and the gold token's ``q(gold)`` are both estimated from a few rollouts (docs/method.md
section 4, Eq. 5): ``correct_v`` of ``m_v`` and ``correct_gold`` of ``m_gold`` reach the answer. With m = 4 the
standard error of each is ~0.2-0.25, the size of the relative rule's margin, so one failed rollout decides a label.
This module answers the question "is q(v) < q(gold)?" with a one-sided test on the counts as they are.

Fisher's exact test, one-sided (Fisher 1935, *The Design of Experiments*; Agresti 2013, *Categorical Data
Analysis*, 3rd ed., Sec. 3.5): given both groups' sizes and the total number of successes ``K = correct_v +
correct_gold`` among ``N = m_v + m_gold`` rollouts, the number of successes that fall in the candidate's group is,
under H0 ``q(v) = q(gold)``, hypergeometric; the p-value of H1 ``q(v) < q(gold)`` is its lower tail:

    p = sum_{x = max(0, m_v - (N - K))}^{correct_v}  C(K, x) * C(N - K, m_v - x) / C(N, m_v)

Why Fisher and not a Beta posterior ``P(q_v < q_gold)`` with uniform priors: it is exact (no normal approximation,
which fails at m = 4), it needs no prior, and it is conservative at small m (its size never exceeds the level), which
is what labels need: a wrong negative teaches the verifier a wrong preference, a missed one only costs data. (The
Beta posterior at 0.95 accepts 1/4 vs 4/4 and 0/4 vs 3/4, P = 0.976 each, which Fisher passes only at level 0.1:
on ``experiments/heldout/train500_relative.jsonl`` it keeps 22 negatives where Fisher at 0.05 keeps 9.) Fisher's
consequences at equal m:

- a difference of one rollout is never enough: ``c/m`` vs ``(c+1)/m`` has p = 1/2 exactly, for every m and c (the
  2c + 1 successes split between two equal halves: the count in the candidate's half is symmetric about c + 1/2), so
  in particular one failed rollout (``(m-1)/m`` vs ``m/m``) never makes a negative;
- the most extreme table, ``0/m`` vs ``m/m``, has p = 1 / C(2m, m): 1/6 at m = 2, 1/20 = 0.05 at m = 3, 1/70 ~ 0.014
  at m = 4, 1/12870 at m = 8. So at level 0.05 no negative is possible below m = 3, and at m = 4 the only negative
  is 0/4 vs 4/4 (1/4 vs 4/4 and 0/4 vs 3/4 have p = 5/70 ~ 0.071: negatives at level 0.1);
- with m = 16: 0/16 vs 16/16 has p ~ 1.7e-9; 12/16 vs 16/16 has p = 0.051; 11/16 vs 16/16 p = 0.022.
"""

from __future__ import annotations

from math import comb


def fisher_less_p(correct_a: int, n_a: int, correct_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value of H1 "the success rate of group a is below that of group b".

    ``P(X <= correct_a)`` for ``X ~ Hypergeometric(N = n_a + n_b, K = correct_a + correct_b, draws = n_a)`` (module
    docstring: formula and sources); computed in exact integers, one rounding at the end.

    Args:
        correct_a: successes of group a (the candidate's rollouts that reach the answer).
        n_a: trials of group a (its rollouts), >= 0.
        correct_b: successes of group b (the gold token's).
        n_b: trials of group b, >= 0.

    Returns:
        The p-value in [0, 1] (a probability, no unit). 1.0 when either group is empty (no evidence).

    Raises:
        ValueError: negative counts, or more successes than trials.
    """
    for c, n in ((correct_a, n_a), (correct_b, n_b)):
        if not 0 <= int(c) <= int(n):
            raise ValueError(f"counts {c} of {n}: need 0 <= correct <= trials")
    a, na, b, nb = int(correct_a), int(n_a), int(correct_b), int(n_b)
    if na == 0 or nb == 0:
        return 1.0
    total, succ = na + nb, a + b
    lo = max(0, na - (total - succ))
    tail = sum(comb(succ, x) * comb(total - succ, na - x) for x in range(lo, a + 1))
    return min(1.0, tail / comb(total, na))


def can_be_significant(correct_b: int, n_b: int, n_a: int, level: float) -> bool:
    """Whether some outcome of ``n_a`` trials in group a would make :func:`fisher_less_p` ``<= level`` against
    ``correct_b`` of ``n_b`` in group b (``--label significant`` rolls out no candidate at a position where none
    could: with m = 4 at level 0.05 that is every position whose gold token reached the answer in fewer than 4 of
    its 4 rollouts)."""
    return any(fisher_less_p(x, n_a, correct_b, n_b) <= level for x in range(int(n_a) + 1))


def fisher_two_sided(a: int, m1: int, b: int, m2: int) -> float:
    """Two-sided Fisher exact test p-value of ``a`` of ``m1`` vs ``b`` of ``m2`` successes (Fisher 1922).

    Conditional on the ``a + b`` successes, ``a`` is hypergeometric; the p-value sums the probabilities of every
    table no more likely than the observed one (relative tolerance 1e-7). Example: 16/16 vs 8/16 gives 0.0024,
    4/4 vs 0/4 gives 0.029, 4/4 vs 3/4 gives 1.0.

    Raises:
        ValueError: counts outside ``0 <= a <= m1``, ``0 <= b <= m2``.
    """
    if not (0 <= a <= m1 and 0 <= b <= m2):
        raise ValueError(f"Fisher test needs 0 <= a <= m1 and 0 <= b <= m2 (got {a}/{m1}, {b}/{m2})")
    k, n = a + b, m1 + m2
    denom = comb(n, m1)

    def prob(x: int) -> float:
        return comb(k, x) * comb(n - k, m1 - x) / denom

    observed = prob(a)
    lo, hi = max(0, k - m2), min(k, m1)
    return min(1.0, sum(pr for pr in (prob(x) for x in range(lo, hi + 1)) if pr <= observed * (1 + 1e-7)))
