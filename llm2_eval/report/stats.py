"""Uncertainty of accuracies over questions: Wilson score intervals, bootstrap intervals, paired differences.

An accuracy measured on n questions estimates the accuracy on the task's population of questions; its 95%
interval says how far that estimate may be off by the luck of which questions were drawn. Two methods decoded on
the SAME questions are compared by the mean of their per-question differences (a paired comparison: the
question-to-question spread in difficulty cancels), with a bootstrap interval over questions (Efron &
Tibshirani 1993, ch. 13, percentile interval).

- exact match and maj@k (0/1 per question): Wilson score interval (:func:`wilson_interval`);
- pass@1 (mean of k samples per question, a fraction in [0, 1]) and any other per-question score: percentile
  bootstrap over questions (:func:`bootstrap_mean_interval`);
- paired difference of two runs: percentile bootstrap over questions (:func:`paired_difference`).

The bootstraps use numpy (installed with torch, transformers and matplotlib) and are deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Mapping, Sequence

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
_CHUNK_ELEMENTS = 4_000_000  # resample indices drawn at once (memory ~32 MB)


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` of an accuracy (fractions in [0, 1]; a difference in [-1, 1]).

    ``method`` is ``"wilson"`` or ``"bootstrap"``; ``confidence`` the coverage (0.95 = 95%).
    """

    low: float
    high: float
    method: str
    confidence: float = CONFIDENCE

    def contains(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a binomial proportion (Wilson 1927, "Probable inference, the law of succession,
    and statistical inference", JASA 22(158):209-212).

    With ``p = successes / n`` and ``z`` the standard normal quantile of ``(1 + confidence) / 2`` (1.96 at 95%)::

        centre     = (p + z^2 / (2n)) / (1 + z^2 / n)
        half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    the interval is ``centre -/+ half-width``: the proportions q whose score test ``|p - q| <= z sqrt(q(1-q)/n)``
    accepts ``p``. Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at p = 0 or 1
    (e.g. 0 of 10 gives [0, 0.278]), so it suits small n and accuracies near 0 or 1.

    Args:
        successes: questions answered correctly, 0 <= successes <= n.
        n: questions, n >= 1.
        confidence: coverage in (0, 1).

    Raises:
        ValueError: n < 1, successes outside [0, n] or confidence outside (0, 1).
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"Wilson interval needs 0 <= successes <= n and n >= 1 (got {successes} of {n})")
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half), "wilson", confidence)


def _bootstrap_means(values: Sequence[float], resamples: int, seed: int):
    """``resamples`` means of ``values`` resampled with replacement (numpy array, shape ``[resamples]``)."""
    import numpy as np

    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be >= 1")
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("bootstrap over no questions")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        means[start:start + b] = x[rng.integers(0, n, size=(b, n))].mean(axis=1)
    return means


def _percentile_interval(means, confidence: float) -> Interval:
    import numpy as np

    _z(confidence)  # validates
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(low), float(high), "bootstrap", confidence)


def bootstrap_mean_interval(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> Interval:
    """Percentile bootstrap interval of the mean of per-question scores (e.g. pass@1 of k samples per question).

    Draws ``resamples`` sets of n questions with replacement (numpy PCG64 seeded with ``seed``), takes each
    set's mean score, and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those
    means. The k samples of a question stay together, since they are not independent of each other.

    Args:
        values: one score per question, shape ``[n]``, n >= 1.

    Raises:
        ValueError: no values, resamples < 1 or confidence outside (0, 1).
    """
    return _percentile_interval(_bootstrap_means(values, resamples, seed), confidence)


def is_binary(values: Sequence[float]) -> bool:
    """Whether every value is 0 or 1 (an exact-match or maj@k score per question)."""
    return all(v in (0.0, 1.0) for v in values)


def accuracy_interval(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> Interval:
    """Interval of the mean of per-question scores: Wilson for 0/1 scores, else the percentile bootstrap.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("interval over no questions")
    if is_binary(values):
        return wilson_interval(int(sum(values)), len(values), confidence)
    return bootstrap_mean_interval(values, resamples=resamples, seed=seed, confidence=confidence)


def doc_order(ids: Iterable) -> list:
    """doc_ids in numeric order where they are numbers (lm-eval's are), else as text.

    The one order every per-question list of a report follows (intervals of single runs and paired differences
    alike), so that a bootstrap draws the same questions whatever the order of the samples file.
    """
    return sorted(ids, key=lambda k: (0, int(k), "") if str(k).isdigit() else (1, 0, str(k)))


@dataclass(frozen=True)
class PairedDifference:
    """A score (accuracy, or pass@1) of a run minus that of a baseline on the same n questions (fractions; +0.03 =
    3 points better).

    ``won``: questions where the run scored higher than the baseline, ``lost``: lower, ``tied``: equal
    (for 0/1 scores: right where the baseline was wrong, and the reverse). ``sign_test_p``: the exact two-sided sign
    test of won against lost (:func:`sign_test`; for 0/1 scores, the exact McNemar test).
    """

    baseline: str
    n: int
    difference: float
    interval: Interval
    won: int
    lost: int
    tied: int
    resamples: int
    seed: int
    sign_test_p: float = 1.0


def sign_test(won: int, lost: int) -> float:
    """Exact two-sided sign test: the chance of a split at least as uneven as ``won`` vs ``lost`` if each
    non-tied question were a fair coin, ``min(1, 2 * P(X <= min(won, lost)))`` with ``X ~ Binomial(won + lost, 1/2)``
    (ties carry no information and are left out; for 0/1 scores this is the exact McNemar test). 1.0 when there is
    no non-tied question.

    Raises:
        ValueError: a negative count.
    """
    if won < 0 or lost < 0:
        raise ValueError(f"won={won}, lost={lost}: counts must be >= 0")
    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(won, lost) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_difference(
    scores: Mapping[str, float], baseline_scores: Mapping[str, float], *, baseline: str = "baseline",
    resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE,
) -> PairedDifference:
    """Paired difference in a per-question score (accuracy, or pass@1) between a run and a baseline on the same
    questions, with its percentile bootstrap interval over questions.

    With ``d_i = score_i - baseline_score_i`` per question (keyed by lm-eval's ``doc_id``), the difference is
    ``mean(d)``; the interval resamples the n questions with replacement (``resamples`` times, numpy PCG64
    seeded with ``seed``; both runs keep their answers to each drawn question) and takes the quantiles of the
    resampled means. An interval above 0 says the run beats the baseline beyond the luck of the questions.

    Args:
        scores, baseline_scores: per-question scores in [0, 1] of the run and the baseline, same keys.
        baseline: the baseline's name (recorded in the result).

    Raises:
        ValueError: the two runs scored different questions (the message counts those only in either), or none.
    """
    only_run = doc_order(set(scores) - set(baseline_scores))
    only_base = doc_order(set(baseline_scores) - set(scores))
    if only_run or only_base:
        def some(ids: list[str]) -> str:
            return f" (e.g. {', '.join(ids[:3])})" if ids else ""

        raise ValueError(f"different questions: {len(only_run)} doc_ids only in the run{some(only_run)}, "
                         f"{len(only_base)} only in the baseline{some(only_base)}")
    keys = doc_order(scores)
    if not keys:
        raise ValueError("no questions to compare")
    d = [float(scores[k]) - float(baseline_scores[k]) for k in keys]
    interval = _percentile_interval(_bootstrap_means(d, resamples, seed), confidence)
    won = sum(x > 0 for x in d)
    lost = sum(x < 0 for x in d)
    return PairedDifference(
        baseline=baseline, n=len(d), difference=sum(d) / len(d), interval=interval, won=won, lost=lost,
        tied=len(d) - won - lost, resamples=resamples, seed=seed, sign_test_p=sign_test(won, lost),
    )
