"""One batch of examples explored in phases, each phase one engine call over the whole batch (docs/method.md section 4).

The phases of a batch, top to bottom (``--gold self`` first samples the solutions,
:meth:`~verifier_train.explore.explorer.Explorer.self_solutions`, in the run loop that decides which questions are
explored):

- ``--strategy rollout`` / ``sample``: the teacher-forced forward over every solution (``p_t``, candidate sets,
  explored positions; :meth:`~verifier_train.explore.explorer.Explorer.score_solutions`), then the strategy's own
  phases (:func:`~verifier_train.explore.rollout.rollout_labels`: q(gold) for all positions, all candidates'
  rollouts; :func:`~verifier_train.explore.sample.sample_labels`: the second model's scores, the draws);
- ``--strategy outcome``: the questions' sampled solutions, judged
  (:func:`~verifier_train.explore.outcome.outcome_records`).

Every random choice is seeded by the example id (and position, token, rollout), so the records do not depend on
which examples share a batch; the run's counters are summed once per record.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from verifier_train.explore.explorer import Example, Explorer, Solution
from verifier_train.explore.inputs import BadExample
from verifier_train.explore.outcome import outcome_records
from verifier_train.explore.rollout import rollout_labels
from verifier_train.explore.sample import sample_labels


def explore_batch(
    ex: Explorer, examples: Sequence[Example], *, stop_at_bad: bool = False
) -> "list[dict[str, Any] | BadExample | None]":
    """Explore a batch of examples (module docstring); ``seconds`` of each record is the batch's wall time shared
    evenly, and the explorer's counters grow by the records.

    Args:
        ex: the explorer (models and settings).
        examples: the batch, in input order (each with its solution; the question alone for ``outcome``).
        stop_at_bad: after the first example that is bad (``BadExample``, found before any rollout), explore none
            of the later ones (their entries are None).

    Returns:
        Per example, its record (:mod:`verifier_train.explore.run` lists the fields), or the ``BadExample`` that
        rejected it, or None (not explored, ``stop_at_bad``).

    Raises:
        BadExample: ``outcome`` only, a question whose prompt does not fit the context.
        RuntimeError: an internally inconsistent triplet (a bug, never a user error).
    """
    t0 = time.perf_counter()
    if ex.cfg.strategy == "outcome":
        out: list[Any] = outcome_records(ex, examples)
    else:
        out = ex.score_solutions(examples, stop_at_bad=stop_at_bad)
        explored = [s for s in out if isinstance(s, Solution) and s.positions]
        strategy = rollout_labels if ex.cfg.strategy == "rollout" else sample_labels
        labels = {id(s): found for s, found in zip(explored, strategy(ex, explored) if explored else [])}
        out = [ex.record(s, labels.get(id(s), {})) if isinstance(s, Solution) else s for s in out]
    records = [r for r in out if isinstance(r, dict)]
    seconds = round((time.perf_counter() - t0) / max(len(records), 1), 3)
    for r in records:
        ex.counters.add(r)
        r["seconds"] = seconds
    return out
