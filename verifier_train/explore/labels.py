"""Exploration labels: candidates at each explored position, their quality, and the rule that makes negatives.

docs/method.md section 4 (paper Sec. 2.3, Eq. 5-6). One teacher-forced forward gives ``p_t`` at every response position;
the candidates of position ``t`` are the plausible set (:func:`llm2_eval.candidates.plausible_candidates`, alpha /
top-k, the same function decoding uses) without the gold token (:func:`candidate_mask`).

``--strategy rollout`` (the paper): draw up to ``--candidates`` n candidates per position from ``p_t`` restricted to
that set (without replacement, seeded, :func:`candidate_draws`), run ``--rollouts`` m continuations of
``x_<t + v`` each (sampling at ``--temperature``, default 0.7, top-p, ``--max-rollout-tokens``, stop at EOS), and
set

    q(v) = (1/m) * #{rollouts whose extracted answer equals the gold answer}      (Eq. 5)
    v is a negative  <=>  q(v) < tau  (tau = 0.5 by default)                       (Eq. 6)

writing ``[t, gold_id, v]`` for negatives. ``--gold-rollouts`` also measures ``q(gold)`` (recorded, never a label).

``--label relative`` replaces Eq. 6 by a comparison with the gold token, measured with the same rollout budget:

    v is a negative  <=>  q(v) <= q(gold) - margin        (--margin, default 0.25)

and skips the positions where ``q(gold) < --min-gold-quality`` (their candidates are not rolled out: nothing can be
judged where the gold continuation itself rarely reaches the answer; listed as ``unjudged_positions``). With a
weak model the absolute rule labels nearly every candidate negative (q(gold) itself is often below tau); ranking
against the gold token keeps only candidates that are clearly worse (:func:`is_negative`).

``--label significant`` judges the same comparison with the rollout counts as they are, so that sampling error
cannot make a negative (with m = 4 the standard error of q is ~0.2-0.25, the size of the margin, and one failed
rollout, q 0.75 vs 1.0, is a relative-rule negative):

    v is a negative  <=>  p <= --significance (default 0.05),
    p = one-sided Fisher exact p-value of q(v) < q(gold) from correct_v of m and correct_gold of m
        (:func:`worse_than_gold_p`, :mod:`verifier_train.explore.significance`)

A difference of one rollout never passes (p = 1/2), and at m = 4 and 0.05 only 0/4 vs 4/4 does (p = 1/70). The
positions with ``q(gold) < --min-gold-quality`` are skipped as with the relative rule, and so are those where no
outcome of the m candidate rollouts could pass the test (at m = 4 and 0.05: every position whose gold token did not
reach the answer in all 4 rollouts), listed in ``unjudged_positions`` too; each judged candidate's p-value is
written as ``p_worse``.

The answer is extracted from the whole response: gold prefix ``x_{start..t-1}`` + ``v`` + the rollout
(:func:`default_checker`). A candidate that is itself an end-of-turn token stays a candidate here (unlike the
sample strategy) and ends the response at once: its quality is that of the truncated response, without rollouts,
so an end-of-turn token is a negative exactly when stopping there misses the answer (a measured, not an assumed,
label).

``--strategy sample`` (the authors' released data builder, no rollouts): every sampled plausible non-gold token is
a negative; ``--num-samples`` draws per position, with replacement, from ``softmax(scores / temperature)`` over the
plausible set, where ``scores`` are the LLM's log-probabilities ``l1`` (``base``), constants (``uniform``), the
contrast ``l1 + gamma * (l1 - l2)`` with the ``--contrast-model`` ``l2`` (``contrast``) or ``l2`` alone
(``expert``: negatives that the second, stronger model finds plausible); :func:`sample_scores`. As in the authors'
builder:

- whenever a second model is given (any mode), the set is restricted to tokens plausible under both models;
- end-of-turn / EOS ids are never in the set (the builder drops its EOS-as-pad id): a sampled negative never
  claims that ending the response there is worse than the gold token, which only rollouts could tell;
- duplicate draws are kept (``--keep-duplicates``, default): a token drawn twice is two pairs, so negatives weigh
  as often as they are drawn; ``--no-keep-duplicates`` writes each drawn token once.

``--gold self`` replaces the gold solution by the first of ``--self-samples`` sampled solutions that ends (EOS)
with the right answer (:meth:`Explorer.self_solutions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Sequence

from llm2_eval.answers import gsm8k_is_correct, math_is_correct
from verifier_train.explore.config import Checker, ExploreConfig
from verifier_train.explore.inputs import BadExample, derive_seed, response_positions, rollout_seed, select_positions
from verifier_train.explore.significance import can_be_significant, fisher_less_p
from verifier_train.records import chat_token_ids, check_samples, response_start

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from verifier_train.rollouts import Rollout, RolloutEngine, RolloutRequest

#: the work of one example in steps: it yields ``(token_ids, requests)`` rollout asks, receives each ask's rollouts
#: (``list[list[Rollout]]``, one list per request) and returns its record (:meth:`Explorer.run_many` drives it)
Steps = Generator["tuple[Sequence[int], list[RolloutRequest]]", "list[list[Rollout]]", dict]


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
    """The label rule: whether candidate ``v`` with quality ``q = q(v)`` is a negative (docs/method.md section 4 step 5).

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
    logits: "torch.Tensor", cand_ids: "torch.Tensor", n: int, seed: int
) -> list[int]:
    """Draw ``min(n, K)`` distinct candidates from ``p_t`` restricted to the candidate set (docs/method.md section 4 step 3).

    Args:
        logits: ``[vocab]`` logits (or log-probs) of one position.
        cand_ids: ``[K]`` the plausible non-gold token ids (K >= 1).
        n: how many to draw.
        seed: seed of the draw's CPU generator.

    Returns:
        Token ids in draw order (weighted sampling without replacement).
    """
    import torch

    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    probs = torch.softmax(logits[cand_ids].float().cpu(), dim=-1)
    k = min(int(n), int(cand_ids.numel()))
    idx = torch.multinomial(probs, k, replacement=False, generator=g)
    return [int(cand_ids[i]) for i in idx.tolist()]


def sample_scores(mode: str, logits: "torch.Tensor", contrast_logits: "torch.Tensor | None", gamma: float) -> "torch.Tensor":
    """Scores of the sample strategy's distribution, ``[P, vocab]`` (the released data builder's ``--sample`` modes).

    ``base``: the LLM's log-probabilities ``l1``; ``uniform``: zeros; ``contrast``: ``l1 + gamma * (l1 - l2)`` with
    ``l2`` the second model's log-probabilities; ``expert``: ``l2`` (negatives sampled from the second, stronger
    model). Callers mask the non-candidates with ``-inf`` and apply ``softmax(scores / temperature)`` (log-probs
    or raw logits give the same distribution: softmax is shift-invariant per row).

    Raises:
        ValueError: an unknown mode, or ``contrast`` / ``expert`` without the second model's logits.
    """
    import torch

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


def candidate_mask(logits: "torch.Tensor", gold_ids: "torch.Tensor", alpha: float | None, top_k: int) -> "torch.Tensor":
    """Dense ``[P, vocab]`` bool mask of the plausible set without the gold token, via
    :func:`llm2_eval.candidates.plausible_candidates` (the one candidate-set function: alpha set AND top-k)."""
    import torch

    from llm2_eval.candidates import plausible_candidates

    ids, mask = plausible_candidates(logits, alpha=alpha, top_k=top_k, exclude=gold_ids)
    dense = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    return dense.scatter(1, ids, mask)


def without_ids(mask: "torch.Tensor", token_ids: Sequence[int]) -> "torch.Tensor":
    """``mask`` (``[P, vocab]`` bool) with the columns of ``token_ids`` cleared (ids outside the vocabulary are
    ignored); a new tensor. The sample strategy removes the end-of-turn ids from its candidate sets this way."""
    cols = sorted({int(v) for v in token_ids if 0 <= int(v) < mask.shape[-1]})
    if not cols:
        return mask
    out = mask.clone()
    out[:, cols] = False
    return out


# --------------------------------------------------------------------------------------------------- the explorer


@dataclass
class Counters:
    """Running totals of an exploration run (what its summary reports)."""

    examples: int = 0
    response_positions: int = 0
    candidate_positions: int = 0
    positions: int = 0
    candidates: int = 0
    negatives: int = 0
    rollouts: int = 0
    truncated: int = 0
    generated_tokens: int = 0
    q_sum: float = 0.0
    gold_q_sum: float = 0.0
    gold_q_n: int = 0
    unjudged_positions: int = 0
    self_samples: int = 0
    outcome_right: int = 0
    outcome_mix: dict = field(default_factory=lambda: {"all right": 0, "all wrong": 0, "mixed": 0})


class Explorer:
    """The per-example work of exploration, with the models loaded once (docs/method.md section 4).

    Args:
        cfg: the settings.
        tokenizer: the LLM's tokenizer (with a chat template).
        engine: the rollout engine (:mod:`verifier_train.rollouts`): teacher-forced scores and rollouts.
        contrast: the second model's engine (sample strategy with ``--contrast-model``), else None.
        end_ids: end-of-turn token ids.
    """

    def __init__(self, cfg: ExploreConfig, tokenizer: Any, engine: "RolloutEngine", contrast: Any, end_ids: set[int]):
        self.cfg, self.tok, self.engine, self.contrast, self.end_ids = cfg, tokenizer, engine, contrast, end_ids
        self.vocab = min(len(tokenizer), engine.vocab_size)
        self.ctx = cfg.max_context or engine.max_context
        self.settings = cfg.settings()
        self.c = Counters()

    def _params(self, max_new: int):
        from verifier_train.rollouts import RolloutParams

        return RolloutParams(
            temperature=(self.cfg.resolved_temperature if self.cfg.strategy in ("rollout", "outcome")
                         else ExploreConfig.ROLLOUT_TEMPERATURE),
            top_p=self.cfg.top_p,
            max_new_tokens=max_new,
            eos_token_ids=tuple(sorted(self.end_ids)),
        )

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def self_solutions(self, items: Sequence[tuple[Any, str, str, Checker]]) -> list[str | None]:
        """``--gold self`` for several questions at once: per ``(ex_id, question, gold, check)``, the first of its
        k sampled solutions (seeds derived from the run seed and ``ex_id``) that reaches the gold answer, or None.

        All questions' samples go to the engine in one ``rollouts_many`` call (vLLM decodes them as one batch).

        Raises:
            BadExample: a prompt plus ``--self-max-tokens`` exceeds the model context (a caller that wants to skip
                only that question checks each one with :meth:`check_self_prompt` first).
        """
        from verifier_train.rollouts import RolloutRequest

        work = []
        for ex_id, question, _, _ in items:
            prompt = self.check_self_prompt(question)
            seeds = [derive_seed(self.cfg.seed, ex_id, "self", j) for j in range(self.cfg.self_samples)]
            work.append((prompt, [RolloutRequest(prefix_len=len(prompt), continuation=[], seeds=seeds)]))
        groups = self.engine.rollouts_many(work, self._params(self.cfg.self_max_tokens))
        found: list[str | None] = []
        for (_, _, gold, check), group in zip(items, groups):
            outs = group[0]
            self.c.self_samples += len(outs)
            self.c.rollouts += len(outs)
            self.c.generated_tokens += sum(len(r.tokens) for r in outs)
            found.append(next((text for text, r in ((self._decode(r.tokens).strip(), r) for r in outs)
                               if text and r.finish_reason == "eos" and check(text, gold, r.tokens)), None))
        return found

    def check_self_prompt(self, question: str) -> list[int]:
        """The chat prompt ids of a ``--gold self`` question.

        Raises:
            BadExample: the prompt plus ``--self-max-tokens`` exceeds the model context.
        """
        prompt = chat_token_ids(self.tok, [{"role": "user", "content": question}], add_generation_prompt=True)
        if self.ctx and len(prompt) + self.cfg.self_max_tokens > self.ctx:
            raise BadExample(
                f"prompt of {len(prompt)} tokens + --self-max-tokens {self.cfg.self_max_tokens} exceeds the "
                f"model context ({self.ctx})"
            )
        return prompt

    def run(self, ex_id: Any, lineno: int, question: str, solution: str, gold: str, check: Checker) -> dict:
        """Explore one example: its output record (see :mod:`verifier_train.explore.run` for the fields).

        Raises:
            BadExample: the conversation plus the rollout budget exceeds the model context.
            RuntimeError: an internally inconsistent triplet (a bug, never a user error).
        """
        (got,) = self.run_many([(ex_id, lineno, question, solution, gold, check)])
        if isinstance(got, BadExample):
            raise got
        return got

    def run_many(self, items: Sequence[tuple], *, stop_at_bad: bool = False) -> "list[dict | BadExample | None]":
        """Explore several examples together, ``(ex_id, lineno, question, solution, gold, check)`` each: their
        rollouts go to the engine as ONE ``rollouts_many`` call per phase (the relative rule has two: q(gold),
        then the candidates), so vLLM decodes every example's continuations as one batch (docs/method.md section 4:
        rollouts are independent). Seeds are per (example, position, token, rollout), so the records do not depend
        on which examples are explored together; ``seconds`` is the batch's wall time shared evenly.

        Args:
            items: the examples, in input order.
            stop_at_bad: after the first example that is bad (``BadExample``, found before any rollout), explore
                none of the later ones (their entries are None).

        Returns:
            Per item, its record, or the ``BadExample`` that rejected it, or None (not explored, ``stop_at_bad``).

        Raises:
            RuntimeError: an internally inconsistent triplet (a bug, never a user error).
        """
        t0 = time.perf_counter()
        steps = [self._steps(*item) for item in items]
        out: list[Any] = [None] * len(items)
        asks: dict[int, tuple] = {}
        for k, st in enumerate(steps):
            self._advance(k, st, None, asks, out)
            if stop_at_bad and isinstance(out[k], BadExample):
                break
        while asks:
            keys = sorted(asks)
            results = self.engine.rollouts_many([asks[k] for k in keys], self._params(self.cfg.max_rollout_tokens))
            asks = {}
            for k, res in zip(keys, results):
                self._advance(k, steps[k], res, asks, out)
        records = [r for r in out if isinstance(r, dict)]
        for r in records:
            r["seconds"] = round((time.perf_counter() - t0) / len(records), 3)
        return out

    @staticmethod
    def _advance(k: int, steps: Steps, sent: Any, asks: dict, out: list) -> None:
        """Run example ``k`` to its next rollout ask (kept in ``asks``) or to its end (its record in ``out``)."""
        try:
            asks[k] = steps.send(sent)
        except StopIteration as done:
            out[k] = done.value
        except BadExample as err:
            out[k] = err

    def _steps(self, ex_id: Any, lineno: int, question: str, solution: str, gold: str, check: Checker) -> Steps:
        """:meth:`run` as steps (see ``Steps``)."""
        import torch

        tally = {"rollouts": 0, "generated_tokens": 0}  # this example's share of the counters
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
        ids = chat_token_ids(self.tok, messages)
        rs = response_start(self.tok, messages)
        budget = self.cfg.max_rollout_tokens if self.cfg.strategy == "rollout" else 0
        if self.ctx and len(ids) + budget > self.ctx:
            extra = f" + --max-rollout-tokens {budget}" if budget else ""
            raise BadExample(f"the conversation's {len(ids)} tokens{extra} exceed the model context ({self.ctx})")
        resp = response_positions(ids, rs, self.end_ids, self.cfg.include_eot)
        record: dict[str, Any] = {
            "id": ex_id, "line": lineno, "messages": messages, "samples": [], "gold_answer": gold,
            "response_start": rs, "response_positions": len(resp), "candidate_positions": 0, "positions": [],
        }
        if resp:
            # one teacher-forced forward over the solution: p_t at every response position (step 2)
            logits = self.engine.score(ids, resp)[:, : self.vocab].float()
            gold_ids = torch.tensor([ids[t] for t in resp], device=logits.device)
            allowed = candidate_mask(logits, gold_ids, self.cfg.alpha, self.cfg.top_k)  # step 3
            if self.cfg.strategy == "sample":  # end-of-turn ids are never sampled negatives (module docstring)
                allowed = without_ids(allowed, self.end_ids)
            rows = allowed.any(-1).nonzero().flatten().tolist()  # positions with >= 1 candidate
            record["candidate_positions"] = len(rows)
            chosen = select_positions(
                self.cfg.positions, [resp[i] for i in rows], derive_seed(self.cfg.seed, ex_id, "positions")
            )
            keep = [resp.index(t) for t in chosen]
            record["positions"] = chosen
            if keep:
                sel = torch.tensor(keep, device=logits.device)
                args = (record, ids, chosen, logits[sel], allowed[sel], ex_id)
                if self.cfg.strategy == "rollout":
                    yield from self._rollout(*args, rs=rs, gold=gold, check=check, tally=tally)
                else:
                    self._sample(*args)
        positions = record["positions"]
        problem = check_samples(ids, [tuple(s) for s in record["samples"]], self.vocab)
        if problem is not None:  # an internal bug, never a user error
            raise RuntimeError(f"example {ex_id}: inconsistent triplet: {problem}")
        self.c.examples += 1
        self.c.positions += len(positions)
        self.c.response_positions += record["response_positions"]
        self.c.candidate_positions += record["candidate_positions"]
        self.c.negatives += len(record["samples"])
        self.c.rollouts += tally["rollouts"]
        self.c.generated_tokens += tally["generated_tokens"]
        record["rollouts"] = tally["rollouts"]
        record["generated_tokens"] = tally["generated_tokens"]
        record["seconds"] = 0.0  # set by run_many
        record["settings"] = self.settings
        return record

    def _measure(self, jobs, ids, ex_id, *, rs, gold, check, tally) -> Steps:
        """Quality (Eq. 5) of each ``(pos, token, is_gold)`` job: ``{job: (q, correct, rollouts, truncated)}``.

        All rollouts of the jobs are one ask (they share the solution prefix; :meth:`run_many` batches the asks of
        several examples)."""
        from verifier_train.rollouts import RolloutRequest

        cfg = self.cfg
        requests, req_jobs, outcomes = [], [], {}
        for job in jobs:
            t, v, _ = job
            if v in self.end_ids:  # the response ends here: one deterministic outcome, no rollout
                ok = bool(check(self._decode(ids[rs:t]), gold, []))
                outcomes[job] = (1.0 if ok else 0.0, int(ok), 0, 0)
                continue
            seeds = [rollout_seed(cfg.seed, ex_id, t, v, j) for j in range(cfg.rollouts)]
            requests.append(RolloutRequest(prefix_len=t, continuation=[v], seeds=seeds))
            req_jobs.append(job)
        if requests:
            results = yield (ids, requests)
            for job, group in zip(req_jobs, results):
                t, v, _ = job
                head = list(ids[rs:t]) + [v]
                correct = sum(bool(check(self._decode(head + r.tokens), gold, r.tokens)) for r in group)
                truncated = sum(r.finish_reason == "length" for r in group)
                outcomes[job] = (correct / len(group), correct, len(group), truncated)
                self.c.truncated += truncated
                tally["rollouts"] += len(group)
                tally["generated_tokens"] += sum(len(r.tokens) for r in group)
        return outcomes

    def _rollout(self, record, ids, positions, logits, allowed, ex_id, *, rs, gold, check, tally) -> Steps:
        cfg = self.cfg
        against_gold = cfg.label in ("relative", "significant")
        cand_jobs: list[tuple[int, int, bool]] = []  # (pos, token, is_gold)
        for i, t in enumerate(positions):
            cset = allowed[i].nonzero().flatten().cpu()
            for v in candidate_draws(logits[i].cpu(), cset, cfg.candidates, derive_seed(cfg.seed, ex_id, t, "cand")):
                cand_jobs.append((t, v, False))
        gold_jobs = [(t, int(ids[t]), True) for t in positions] if cfg.measures_gold else []
        kw = dict(rs=rs, gold=gold, check=check, tally=tally)
        if against_gold:
            # q(gold) first: positions where the gold continuation itself rarely reaches the answer cannot rank
            # their candidates, so their candidates are not rolled out at all
            outcomes = yield from self._measure(gold_jobs, ids, ex_id, **kw)
            q_gold = {t: outcomes[(t, v, True)][0] for t, v, _ in gold_jobs}
            unjudged = sorted(t for t, q in q_gold.items() if q < cfg.min_gold_quality)
            if cfg.label == "significant":  # nor where no outcome of m candidate rollouts could be significant
                hopeless = {t for t, v, _ in gold_jobs if not self._can_judge(*outcomes[(t, v, True)][1:3])}
                unjudged = sorted(set(unjudged) | hopeless)
            record["unjudged_positions"] = unjudged
            self.c.unjudged_positions += len(unjudged)
            cand_jobs = [j for j in cand_jobs if j[0] not in set(unjudged)]
            outcomes.update((yield from self._measure(cand_jobs, ids, ex_id, **kw)))
        else:
            outcomes = yield from self._measure(cand_jobs + gold_jobs, ids, ex_id, **kw)
            q_gold = {t: outcomes[(t, v, True)][0] for t, v, _ in gold_jobs}
        gold_counts = {t: outcomes[(t, v, True)][1:3] for t, v, _ in gold_jobs}
        qualities, gold_q = [], []
        for job in cand_jobs + gold_jobs:
            t, v, is_gold = job
            q, correct, n_roll, truncated = outcomes[job]
            entry = {"pos": t, "gold_id": int(ids[t]), "token": v, "text": self.tok.decode([v]), "q": q,
                     "correct": correct, "rollouts": n_roll, "truncated": truncated}
            if is_gold:
                gold_q.append(entry)
                self.c.gold_q_sum += q
                self.c.gold_q_n += 1
                continue
            if cfg.label == "significant":
                entry["p_worse"] = worse_than_gold_p((correct, n_roll), gold_counts[t])
            entry["negative"] = is_negative(q, q_gold.get(t), cfg, counts=(correct, n_roll),
                                            gold_counts=gold_counts.get(t))
            qualities.append(entry)
            self.c.candidates += 1
            self.c.q_sum += q
            if entry["negative"]:
                record["samples"].append([t, int(ids[t]), v])
        record["qualities"] = qualities
        if gold_jobs:
            record["gold_qualities"] = gold_q

    def _can_judge(self, gold_correct: int, gold_rollouts: int) -> bool:
        """``--label significant``: whether a candidate measured with ``--rollouts`` m could come out significantly
        worse than a gold token with these counts (0 rollouts: a known outcome, see :func:`worse_than_gold_p`)."""
        if gold_rollouts == 0:
            return gold_correct == 1
        return can_be_significant(gold_correct, gold_rollouts, self.cfg.rollouts, self.cfg.significance)

    def _sample(self, record, ids, positions, logits, allowed, ex_id) -> None:
        import torch

        cfg = self.cfg
        l2 = None
        if self.contrast is not None:  # any mode: the set shrinks to tokens plausible under both models
            l2 = self.contrast.score(ids, positions)[:, : self.vocab].float().to(logits.device)
            gold_ids = torch.tensor([ids[t] for t in positions], device=logits.device)
            allowed = allowed & candidate_mask(l2, gold_ids, cfg.alpha, cfg.top_k)
        scores = sample_scores(cfg.mode, logits, l2, cfg.gamma) / cfg.resolved_temperature
        scores = scores.masked_fill(~allowed, -float("inf")).cpu()
        allowed = allowed.cpu()
        drawn = []
        for i, t in enumerate(positions):
            if not bool(allowed[i].any()):
                continue
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed(cfg.seed, ex_id, t, "sample"))
            probs = torch.softmax(scores[i], dim=-1)
            draws = torch.multinomial(probs, cfg.num_samples, replacement=True, generator=g).tolist()
            tokens = [int(v) for v in draws if bool(allowed[i, v])]  # in draw order
            if not cfg.keep_duplicates:
                tokens = list(dict.fromkeys(tokens))
            record["samples"].extend([t, int(ids[t]), v] for v in tokens)
            drawn.append({"pos": t, "gold_id": int(ids[t]), "tokens": tokens, "set_size": int(allowed[i].sum())})
            self.c.candidates += len(tokens)
        record["draws"] = drawn
