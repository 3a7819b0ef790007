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

import time
from typing import TYPE_CHECKING, Any, Sequence

from verifier_train.explore.inputs import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from verifier_train.explore.config import Checker
    from verifier_train.explore.labels import Explorer


def outcome_records(ex: "Explorer", items: Sequence[tuple[Any, int, str, str, "Checker"]]) -> list[dict[str, Any]]:
    """Sample and judge the solutions of several questions, ``(ex_id, line, user message, gold, check)`` each.

    Returns:
        One record per question (module docstring), in order; the explorer's counters are updated once per record.
    """
    from verifier_train.records import chat_token_ids
    from verifier_train.rollouts import RolloutRequest

    t0 = time.perf_counter()
    work = []
    for ex_id, _, question, _, _ in items:
        prompt = ex.check_self_prompt(question)
        seeds = [derive_seed(ex.cfg.seed, ex_id, "self", j) for j in range(ex.cfg.self_samples)]
        work.append((prompt, [RolloutRequest(prefix_len=len(prompt), continuation=[], seeds=seeds)]))
    groups = ex.engine.rollouts_many(work, ex._params(ex.cfg.self_max_tokens))
    records = []
    for (ex_id, line, question, gold, check), group in zip(items, groups):
        outcomes = []
        for r in group[0]:
            body = [t for t in r.tokens if t not in ex.end_ids]
            text = ex._decode(body).strip()
            ok = bool(text) and r.finish_reason == "eos" and bool(check(text, gold, r.tokens))
            outcomes.append({"response": text, "correct": int(ok), "finish": r.finish_reason, "tokens": len(r.tokens)})
        right = sum(o["correct"] for o in outcomes)
        tokens = sum(o["tokens"] for o in outcomes)
        c = ex.c
        c.examples += 1
        c.self_samples += len(outcomes)
        c.rollouts += len(outcomes)
        c.generated_tokens += tokens
        c.truncated += sum(o["finish"] != "eos" for o in outcomes)
        c.outcome_right += right
        c.outcome_mix["all right" if right == len(outcomes) else "all wrong" if right == 0 else "mixed"] += 1
        messages = [{"role": "user", "content": question}]
        chat_token_ids(ex.tok, messages, add_generation_prompt=True)  # the template must take the messages
        records.append({
            "id": ex_id, "line": line, "messages": messages, "samples": [], "gold_answer": gold,
            "outcomes": outcomes, "right": right, "rollouts": len(outcomes), "generated_tokens": tokens,
            "settings": ex.settings,
        })
    for r in records:
        r["seconds"] = round((time.perf_counter() - t0) / max(len(records), 1), 3)
    return records
