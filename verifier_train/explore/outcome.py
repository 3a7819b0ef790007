"""``llm2 explore --strategy outcome``: the model's own sampled solutions with their outcome (OVM-style labels).

Outcome supervision (Yu et al. 2023, "Outcome-supervised value models for planning in mathematical reasoning";
Cobbe et al. 2021) labels every token of a sampled solution with that solution's final outcome (right or wrong
answer); a value model regressed on those labels estimates, at each token, how likely the continuation is to reach
the right answer. No rollouts from intermediate positions are needed: every token of every sample is a label, and the
regression averages the per-sample noise over the data.

Per question, ``--self-samples`` k solutions are sampled from the chat prompt (``--prompt task`` recommended) at
``--temperature`` (default 0.7) with at most ``--self-max-tokens`` tokens, with the seeds ``--gold self`` uses (so
the samples are those ``--gold self`` draws), all questions of a ``--self-batch`` chunk in one engine call. One
record per question (questions whose samples all agree are kept: their mix is in the record and the summary)::

    {"id", "line", "messages": [{"role": "user", ...}], "samples": [], "gold_answer",
     "outcomes": [{"response", "correct", "finish", "tokens"}, ...], "right", "rollouts", "generated_tokens",
     "seconds", "settings"}

A sample that stops at the token budget (``finish`` "length") counts as wrong. ``llm2 train-verifier --objective
outcome`` trains on these records (:mod:`verifier_train.train.outcome`).
"""

from __future__ import annotations

from typing import Any, Sequence

from verifier_train.explore.explorer import Example, Explorer


def outcome_records(ex: Explorer, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """The outcome strategy over a batch of questions: one phase, their sampled solutions
    (:meth:`~verifier_train.explore.explorer.Explorer.sample_solutions`, one engine call), each judged.

    Returns:
        One record per question (module docstring), in order, without ``seconds`` (set by the batch).

    Raises:
        BadExample: a prompt plus ``--self-max-tokens`` exceeds the model context.
    """
    records = []
    for e, samples in zip(examples, ex.sample_solutions(examples)):
        outcomes = []
        for r in samples:
            text = ex.decode([t for t in r.tokens if t not in ex.end_ids]).strip()
            ok = bool(text) and r.finish_reason == "eos" and bool(e.check(text, e.gold, r.tokens))
            outcomes.append({"response": text, "correct": int(ok), "finish": r.finish_reason, "tokens": len(r.tokens)})
        records.append({
            "id": e.id, "line": e.line, "messages": [{"role": "user", "content": e.question}], "samples": [],
            "gold_answer": e.gold, "outcomes": outcomes, "right": sum(o["correct"] for o in outcomes),
            "rollouts": len(outcomes), "generated_tokens": sum(o["tokens"] for o in outcomes),
            "settings": ex.settings,
        })
    return records
