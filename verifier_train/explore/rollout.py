"""``--strategy rollout`` (the paper, Sec. 2.3): candidates judged by the share of their rollouts that reach the answer.

docs/method.md section 4. For a batch of scored solutions (:class:`~verifier_train.explore.explorer.Solution`:
``p_t`` and the candidate set at each explored position), :func:`rollout_labels` runs these phases, each ONE
``rollouts_many`` engine call over every solution of the batch:

1. candidates: up to ``--candidates`` n distinct tokens per position, drawn from ``p_t`` restricted to the
   candidate set (:func:`~verifier_train.explore.labels.candidate_draws`, seeded by example and position); no
   engine call;
2. ``--label absolute``: one phase, the ``--rollouts`` m rollouts of every candidate (and, with
   ``--gold-rollouts``, of every gold token); ``--label relative`` / ``significant``: first the gold tokens' rollouts
   (``q(gold)`` at every explored position), then the rollouts of the candidates at the positions that q(gold) lets
   judge (``q(gold) >= --min-gold-quality``; ``significant``: also a position where some outcome of m candidate
   rollouts could pass the test);
3. the label of each candidate (:func:`~verifier_train.explore.labels.is_negative`, Eq. 6 or its relative and
   significant forms), written as ``[t, gold_id, v]`` when negative.

The quality of a token ``v`` at position ``t`` (Eq. 5) is measured by :func:`measure`: the request ``(t, [v], m
seeds)`` with seeds :func:`~verifier_train.explore.inputs.rollout_seed` ``(--seed, example id, t, v, j)``, so a
record does not depend on which examples share its batch; ``q(v)`` is the share of the m responses (gold prefix
``x_{start..t-1}`` + ``v`` + rollout) whose extracted answer equals the gold answer. A token that is itself an
end-of-turn id ends the response at once: its quality is that of the truncated response, without rollouts (a
measured, not an assumed, label).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.explorer import Explorer, Solution
from verifier_train.explore.inputs import derive_seed, rollout_seed
from verifier_train.explore.labels import candidate_draws, is_negative, worse_than_gold_p
from verifier_train.explore.significance import can_be_significant
from verifier_train.rollouts import RolloutRequest


class Job(NamedTuple):
    """A token whose quality is measured: ``token`` at position ``pos``, the gold token or a candidate."""

    pos: int
    token: int
    is_gold: bool


class Outcome(NamedTuple):
    """The measured quality of a :class:`Job` (Eq. 5): ``q = correct / rollouts`` (``rollouts`` 0: an end-of-turn
    token, ``q`` the truncated response's 0 or 1), ``truncated`` rollouts stopped by ``--max-rollout-tokens``,
    ``tokens`` generated in all."""

    q: float
    correct: int
    rollouts: int
    truncated: int
    tokens: int


def rollout_labels(ex: Explorer, solutions: Sequence[Solution]) -> list[dict[str, Any]]:
    """The rollout strategy over a batch of solutions (each with at least one explored position): the phases of
    the module docstring.

    Returns:
        Per solution, its labels for :meth:`~verifier_train.explore.explorer.Explorer.record`: ``samples``
        (negatives ``[t, gold_id, v]``), ``unjudged_positions`` (relative and significant rules), ``qualities``
        (one entry per measured candidate), ``gold_qualities`` (when q(gold) is measured), ``rollouts`` and
        ``generated_tokens``.
    """
    cfg = ex.cfg
    candidates = [candidate_jobs(cfg, s) for s in solutions]
    gold = [[Job(t, int(s.ids[t]), True) for t in s.positions] if cfg.measures_gold else [] for s in solutions]
    if cfg.label == "absolute":
        outcomes = measure(ex, solutions, [c + g for c, g in zip(candidates, gold)])
        unjudged: list[list[int] | None] = [None] * len(solutions)
    else:  # q(gold) first: where it is too low to rank against, the candidates are not rolled out at all
        outcomes = measure(ex, solutions, gold)
        unjudged = [unjudged_positions(cfg, g, o) for g, o in zip(gold, outcomes)]
        candidates = [[j for j in c if j.pos not in set(u)] for c, u in zip(candidates, unjudged)]
        for o, more in zip(outcomes, measure(ex, solutions, candidates)):
            o.update(more)
    return [judge(ex, *args) for args in zip(solutions, candidates, gold, outcomes, unjudged)]


def candidate_jobs(cfg: ExploreConfig, s: Solution) -> list[Job]:
    """Up to ``--candidates`` n distinct candidates per explored position, in position then draw order (seeded by
    ``(--seed, example id, t, "cand")``)."""
    jobs = []
    for i, t in enumerate(s.positions):
        cset = s.allowed[i].nonzero().flatten().cpu()
        seed = derive_seed(cfg.seed, s.example.id, t, "cand")
        jobs.extend(Job(t, v, False) for v in candidate_draws(s.logits[i].cpu(), cset, cfg.candidates, seed))
    return jobs


def measure(ex: Explorer, solutions: Sequence[Solution], jobs: Sequence[Sequence[Job]]) -> list[dict[Job, Outcome]]:
    """Phase: the quality (Eq. 5) of every job of every solution, the rollouts of all of them in ONE
    ``rollouts_many`` call (end-of-turn tokens are judged without rollouts).

    Args:
        ex: the explorer (engine, checker, settings).
        solutions: the batch.
        jobs: per solution, the tokens to measure.

    Returns:
        Per solution, ``{job: Outcome}`` for each of its jobs.
    """
    cfg = ex.cfg
    outcomes: list[dict[Job, Outcome]] = []
    asks: list[tuple[int, list[Job]]] = []  # (solution index, jobs that need rollouts)
    for k, (s, js) in enumerate(zip(solutions, jobs)):
        known, rolled = {}, []
        for job in js:
            if job.token in ex.end_ids:  # the response ends here: one deterministic outcome
                ok = bool(s.example.check(ex.decode(s.ids[s.response_start : job.pos]), s.example.gold, []))
                known[job] = Outcome(float(ok), int(ok), 0, 0, 0)
            else:
                rolled.append(job)
        outcomes.append(known)
        if rolled:
            asks.append((k, rolled))
    if not asks:
        return outcomes
    work = [(solutions[k].ids, [rollout_request(cfg, solutions[k], j) for j in rolled]) for k, rolled in asks]
    results = ex.engine.rollouts_many(work, ex.params(cfg.max_rollout_tokens))
    for (k, rolled), groups in zip(asks, results):
        s = solutions[k]
        for job, group in zip(rolled, groups):
            head = list(s.ids[s.response_start : job.pos]) + [job.token]
            correct = sum(bool(s.example.check(ex.decode(head + r.tokens), s.example.gold, r.tokens)) for r in group)
            truncated = sum(r.finish_reason == "length" for r in group)
            tokens = sum(len(r.tokens) for r in group)
            outcomes[k][job] = Outcome(correct / len(group), correct, len(group), truncated, tokens)
    return outcomes


def rollout_request(cfg: ExploreConfig, s: Solution, job: Job) -> RolloutRequest:
    """The ``--rollouts`` m continuations of ``ids[:pos] + [token]``, seeds ``(--seed, example id, pos, token, j)``."""
    seeds = [rollout_seed(cfg.seed, s.example.id, job.pos, job.token, j) for j in range(cfg.rollouts)]
    return RolloutRequest(prefix_len=job.pos, continuation=[job.token], seeds=seeds)


def unjudged_positions(cfg: ExploreConfig, gold: Sequence[Job], outcomes: dict[Job, Outcome]) -> list[int]:
    """The positions whose candidates the relative and significant rules cannot judge: ``q(gold) <
    --min-gold-quality``, and (significant) those where no outcome of m candidate rollouts could pass the test."""
    out = {j.pos for j in gold if outcomes[j].q < cfg.min_gold_quality}
    if cfg.label == "significant":
        out |= {j.pos for j in gold if not can_judge(cfg, outcomes[j].correct, outcomes[j].rollouts)}
    return sorted(out)


def can_judge(cfg: ExploreConfig, gold_correct: int, gold_rollouts: int) -> bool:
    """``--label significant``: whether a candidate measured with ``--rollouts`` m could come out significantly
    worse than a gold token with these counts (0 rollouts: a known outcome, see
    :func:`~verifier_train.explore.labels.worse_than_gold_p`)."""
    if gold_rollouts == 0:
        return gold_correct == 1
    return can_be_significant(gold_correct, gold_rollouts, cfg.rollouts, cfg.significance)


def judge(
    ex: Explorer,
    s: Solution,
    candidates: Sequence[Job],
    gold: Sequence[Job],
    outcomes: dict[Job, Outcome],
    unjudged: list[int] | None,
) -> dict[str, Any]:
    """The labels of one solution from its measured qualities (see :func:`rollout_labels` for the fields)."""
    cfg = ex.cfg
    q_gold = {j.pos: outcomes[j].q for j in gold}
    gold_counts = {j.pos: (outcomes[j].correct, outcomes[j].rollouts) for j in gold}
    samples, qualities = [], []
    for job in candidates:
        o, entry = outcomes[job], quality_entry(ex, s, job, outcomes[job])
        if cfg.label == "significant":
            entry["p_worse"] = worse_than_gold_p((o.correct, o.rollouts), gold_counts[job.pos])
        entry["negative"] = is_negative(o.q, q_gold.get(job.pos), cfg, counts=(o.correct, o.rollouts),
                                        gold_counts=gold_counts.get(job.pos))
        qualities.append(entry)
        if entry["negative"]:
            samples.append([job.pos, int(s.ids[job.pos]), job.token])
    labels: dict[str, Any] = {"samples": samples}
    if unjudged is not None:
        labels["unjudged_positions"] = unjudged
    labels["qualities"] = qualities
    if gold:
        labels["gold_qualities"] = [quality_entry(ex, s, j, outcomes[j]) for j in gold]
    labels["rollouts"] = sum(o.rollouts for o in outcomes.values())
    labels["generated_tokens"] = sum(o.tokens for o in outcomes.values())
    return labels


def quality_entry(ex: Explorer, s: Solution, job: Job, o: Outcome) -> dict[str, Any]:
    """One ``qualities`` / ``gold_qualities`` entry of a record."""
    return {"pos": job.pos, "gold_id": int(s.ids[job.pos]), "token": job.token, "text": ex.tok.decode([job.token]),
            "q": o.q, "correct": o.correct, "rollouts": o.rollouts, "truncated": o.truncated}
