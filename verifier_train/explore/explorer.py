"""What every exploration strategy shares: the loaded models, the examples of a batch and their scored solutions.

docs/method.md section 4. A batch of examples goes through phases, each one engine call over the whole batch
(:func:`verifier_train.explore.batch.explore_batch`); this module holds the phases every strategy begins with:

1. ``--gold self`` only: ``--self-samples`` k sampled solutions per question, the first correct one kept
   (:meth:`Explorer.self_solutions`);
2. the teacher-forced forward over every solution: ``p_t`` at each response position, the candidate sets
   (:func:`~verifier_train.explore.labels.candidate_mask`) and the explored positions
   (:meth:`Explorer.score_solutions`, giving one :class:`Solution` per example);

and the end of every record (:meth:`Explorer.record`) with the run's counters (:class:`Counters`, summed once per
record). The strategies' own phases are in :mod:`~verifier_train.explore.rollout`,
:mod:`~verifier_train.explore.sample` and :mod:`~verifier_train.explore.outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from verifier_train.explore.config import Checker, ExploreConfig
from verifier_train.explore.inputs import BadExample, derive_seed, response_positions, select_positions
from verifier_train.explore.labels import candidate_mask, without_ids
from verifier_train.records import chat_token_ids, check_samples, response_start
from verifier_train.rollouts import Rollout, RolloutEngine, RolloutParams, RolloutRequest


@dataclass
class Example:
    """One input question, parsed (:mod:`verifier_train.explore.inputs`).

    Attributes:
        id: the input's ``id`` field, else its line number.
        line: 1-based line number in the input.
        question: the user message (with the task instruction for ``--prompt task``).
        solution: the assistant message; None until ``--gold self`` has found one.
        gold: the gold answer.
        check: the answer checker.
    """

    id: Any
    line: int
    question: str
    solution: str | None
    gold: str
    check: Checker


@dataclass
class Solution:
    """An example's tokenised conversation with the LLM's ``p_t`` at its explored positions (phase 2).

    Attributes:
        example: the example.
        messages: ``[user, assistant]`` chat messages.
        ids: the tokenised conversation, ``n`` token ids.
        response_start: index of the first assistant-content token.
        response: the response positions (:func:`~verifier_train.explore.inputs.response_positions`).
        candidate_positions: how many response positions have a plausible non-gold candidate.
        positions: the explored positions, ascending, a subset of those (P of them; may be empty).
        logits: ``[P, vocab]`` float32 logits of the explored positions (empty when P = 0).
        allowed: ``[P, vocab]`` bool candidate sets of the explored positions (plausible, not the gold token).
    """

    example: Example
    messages: list[dict[str, str]]
    ids: list[int]
    response_start: int
    response: list[int]
    candidate_positions: int = 0
    positions: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    allowed: torch.Tensor | None = None


@dataclass
class Counters:
    """Running totals of an exploration run (what its summary reports), summed from the records."""

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

    def add(self, record: dict[str, Any]) -> None:
        """Add one output record (any strategy; :mod:`verifier_train.explore.run` lists the fields)."""
        self.examples += 1
        self.negatives += len(record["samples"])
        self.rollouts += record["rollouts"]
        self.generated_tokens += record["generated_tokens"]
        if "outcomes" in record:  # --strategy outcome: the question's sampled solutions
            outcomes = record["outcomes"]
            self.self_samples += len(outcomes)
            self.truncated += sum(o["finish"] != "eos" for o in outcomes)
            self.outcome_right += record["right"]
            mix = "all right" if record["right"] == len(outcomes) else "all wrong" if not record["right"] else "mixed"
            self.outcome_mix[mix] += 1
            return
        self.response_positions += record["response_positions"]
        self.candidate_positions += record["candidate_positions"]
        self.positions += len(record["positions"])
        self.unjudged_positions += len(record.get("unjudged_positions", ()))
        self.candidates += sum(len(d["tokens"]) for d in record.get("draws", ()))  # --strategy sample
        for q in record.get("qualities", ()):  # --strategy rollout
            self.candidates += 1
            self.q_sum += q["q"]
            self.truncated += q["truncated"]
        for q in record.get("gold_qualities", ()):
            self.gold_q_sum += q["q"]
            self.gold_q_n += 1
            self.truncated += q["truncated"]

    def add_self_samples(self, samples: Sequence[Rollout]) -> None:
        """Add the ``--gold self`` samples of one question (written in no record)."""
        self.self_samples += len(samples)
        self.rollouts += len(samples)
        self.generated_tokens += sum(len(r.tokens) for r in samples)


class Explorer:
    """The models of an exploration run, loaded once, and the phases every strategy shares (module docstring).

    Args:
        cfg: the settings.
        tokenizer: the LLM's tokenizer (with a chat template).
        engine: the rollout engine (:mod:`verifier_train.rollouts`): teacher-forced scores and rollouts.
        contrast: the second model's engine (sample strategy with ``--contrast-model``), else None.
        end_ids: end-of-turn token ids.

    Attributes:
        vocab: width of the score rows used (the tokenizer's and the engine's vocabulary, the smaller).
        ctx: the context limit in tokens (``--max-context``, else the engine's; None = unknown).
        settings: the settings written on every record (:meth:`ExploreConfig.settings`).
        counters: the run's totals (:class:`Counters`).
    """

    def __init__(self, cfg: ExploreConfig, tokenizer: Any, engine: RolloutEngine, contrast: Any, end_ids: set[int]):
        self.cfg, self.tok, self.engine, self.contrast, self.end_ids = cfg, tokenizer, engine, contrast, end_ids
        self.vocab = min(len(tokenizer), engine.vocab_size)
        self.ctx = cfg.max_context or engine.max_context
        self.settings = cfg.settings()
        self.counters = Counters()

    def params(self, max_new: int) -> RolloutParams:
        """Rollout sampling settings with a budget of ``max_new`` tokens (``--temperature``, ``--top-p``)."""
        return RolloutParams(
            temperature=(self.cfg.resolved_temperature if self.cfg.strategy in ("rollout", "outcome")
                         else ExploreConfig.ROLLOUT_TEMPERATURE),
            top_p=self.cfg.top_p,
            max_new_tokens=max_new,
            eos_token_ids=tuple(sorted(self.end_ids)),
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped (what the answer checker reads)."""
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def check_self_prompt(self, question: str) -> list[int]:
        """The chat prompt ids of a question whose solutions the LLM samples (``--gold self``, outcome).

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

    def sample_solutions(self, examples: Sequence[Example]) -> list[list[Rollout]]:
        """Phase: ``--self-samples`` k sampled solutions of every question, in ONE ``rollouts_many`` call (vLLM
        decodes them as one batch); seeds ``(--seed, example id, "self", j)``.

        Returns:
            Per example, its k :class:`~verifier_train.rollouts.Rollout` in seed order.

        Raises:
            BadExample: a prompt plus ``--self-max-tokens`` exceeds the model context (:meth:`check_self_prompt`).
        """
        work = []
        for e in examples:
            prompt = self.check_self_prompt(e.question)
            seeds = [derive_seed(self.cfg.seed, e.id, "self", j) for j in range(self.cfg.self_samples)]
            work.append((prompt, [RolloutRequest(prefix_len=len(prompt), continuation=[], seeds=seeds)]))
        return [group[0] for group in self.engine.rollouts_many(work, self.params(self.cfg.self_max_tokens))]

    def self_solutions(self, examples: Sequence[Example]) -> list[str | None]:
        """``--gold self``: per example, the first of its sampled solutions (:meth:`sample_solutions`) that ends
        (EOS) with the gold answer, or None. The samples are counted here (they are in no record).

        Raises:
            BadExample: as :meth:`sample_solutions` (a caller that wants to skip only that question checks each one
                with :meth:`check_self_prompt` first).
        """
        found: list[str | None] = []
        for e, samples in zip(examples, self.sample_solutions(examples)):
            self.counters.add_self_samples(samples)
            texts = ((self.decode(r.tokens).strip(), r) for r in samples)
            found.append(next((text for text, r in texts
                               if text and r.finish_reason == "eos" and e.check(text, e.gold, r.tokens)), None))
        return found

    def tokenise(self, e: Example) -> Solution:
        """The example's conversation as token ids and its response positions (no model call).

        Raises:
            BadExample: the conversation plus the rollout budget exceeds the model context.
        """
        messages = [{"role": "user", "content": e.question}, {"role": "assistant", "content": e.solution}]
        ids = chat_token_ids(self.tok, messages)
        rs = response_start(self.tok, messages)
        budget = self.cfg.max_rollout_tokens if self.cfg.strategy == "rollout" else 0
        if self.ctx and len(ids) + budget > self.ctx:
            extra = f" + --max-rollout-tokens {budget}" if budget else ""
            raise BadExample(f"the conversation's {len(ids)} tokens{extra} exceed the model context ({self.ctx})")
        return Solution(e, messages, ids, rs, response_positions(ids, rs, self.end_ids, self.cfg.include_eot))

    def score_solutions(
        self, examples: Sequence[Example], *, stop_at_bad: bool = False
    ) -> "list[Solution | BadExample | None]":
        """Phase: one teacher-forced forward per solution (one ``score_many`` call for the batch) gives ``p_t`` at
        every response position (docs/method.md section 4 step 2); the candidate sets (step 3: plausible, not the
        gold token; the sample strategy also leaves out the end-of-turn ids) and the explored positions
        (``--positions``, seeded by the example id) follow.

        Args:
            examples: the batch, in input order.
            stop_at_bad: after the first example that does not fit the context, take none of the later ones.

        Returns:
            Per example, its :class:`Solution`, or the ``BadExample`` that rejected it, or None (``stop_at_bad``).
        """
        out: list[Any] = [None] * len(examples)
        for k, e in enumerate(examples):
            try:
                out[k] = self.tokenise(e)
            except BadExample as err:
                out[k] = err
                if stop_at_bad:
                    break
        scored = [s for s in out if isinstance(s, Solution) and s.response]
        for s, logits in zip(scored, self.engine.score_many([(s.ids, s.response) for s in scored])):
            self._choose_positions(s, logits[:, : self.vocab].float())
        return out

    def _choose_positions(self, s: Solution, logits: torch.Tensor) -> None:
        """Fill in ``s``'s candidate sets and explored positions from the logits of its response positions."""
        gold_ids = torch.tensor([s.ids[t] for t in s.response], device=logits.device)
        allowed = candidate_mask(logits, gold_ids, self.cfg.alpha, self.cfg.top_k)
        if self.cfg.strategy == "sample":  # end-of-turn ids are never sampled negatives
            allowed = without_ids(allowed, self.end_ids)
        rows = allowed.any(-1).nonzero().flatten().tolist()  # positions with >= 1 candidate
        s.candidate_positions = len(rows)
        s.positions = select_positions(
            self.cfg.positions, [s.response[i] for i in rows], derive_seed(self.cfg.seed, s.example.id, "positions")
        )
        keep = torch.tensor([s.response.index(t) for t in s.positions], dtype=torch.long, device=logits.device)
        s.logits, s.allowed = logits[keep], allowed[keep]

    def record(self, s: Solution, labels: dict[str, Any]) -> dict[str, Any]:
        """The output record of a solution and its strategy's ``labels`` (``samples``, ``rollouts``,
        ``generated_tokens`` and the strategy's own fields, in the order written; ``seconds`` is set by the batch).

        Raises:
            RuntimeError: an internally inconsistent triplet (a bug, never a user error).
        """
        rest = dict(labels)
        e = s.example
        record: dict[str, Any] = {
            "id": e.id, "line": e.line, "messages": s.messages, "samples": rest.pop("samples", []),
            "gold_answer": e.gold, "response_start": s.response_start, "response_positions": len(s.response),
            "candidate_positions": s.candidate_positions, "positions": s.positions,
        }
        counts = {"rollouts": rest.pop("rollouts", 0), "generated_tokens": rest.pop("generated_tokens", 0)}
        record.update(rest)
        record.update(counts, seconds=0.0, settings=self.settings)
        problem = check_samples(s.ids, [tuple(x) for x in record["samples"]], self.vocab)
        if problem is not None:  # an internal bug, never a user error
            raise RuntimeError(f"example {e.id}: inconsistent triplet: {problem}")
        return record
