"""Build the decision benchmark: the choices LLM2 makes on the model's own greedy solutions, with their true value.

``llm2 decisions build`` (docs/method.md, "The decision benchmark"). For each of the first ``questions`` questions
of the dev slice (GSM8K train questions no exploration uses, :mod:`llm2_eval.splits`):

1. **Greedy solution.** The LLM answers the task prompt greedily (the ``gsm8k_llm2`` user message).
2. **Decision points.** One teacher-forced pass over that solution gives the next-token log-probabilities at every
   response position; a position is a decision point when at least two tokens pass the plausibility mask at
   ``alpha`` (``p >= alpha * p_max``, the rule decoding uses: :func:`llm2_eval.candidates.plausible_candidates`):
   exactly where LLM2 can change the LLM's choice. Its candidates are the tokens that pass the (wider or equal)
   ``wide_alpha`` mask, most probable first, capped at ``max_candidates``; the solution's own token is always one.
3. **Sample.** ``points`` decision points are drawn uniformly without replacement (seeded) from all questions'.
4. **Value of every candidate.** ``q(v)`` = the share of ``rollouts`` sampled continuations of
   ``prefix + v`` (temperature ``temperature``, at most ``max_rollout_tokens``) whose answer is right (paper Eq. 5),
   stored as counts; plus the outcome of the *greedy* continuation of ``prefix + v`` (what LLM2 writes after a flip
   when nothing else flips). An end-of-turn candidate ends the response: its value is that response's outcome.

Output: one JSON Lines file, written as it goes and resumed by re-running the same command::

    {"kind": "llm2-decisions", "version": 1, "settings": {...}}                            (header, line 1)
    {"type": "question", "id": "dev-0", "line": 7274, "gold": "18", "token_ids": [...], "response_start": 31,
     "greedy_correct": true, "finish": "eos", "positions": [[t, [ids...], [logprobs...]], ...]}   (all questions)
    {"type": "point", "id": "dev-0@57", "question": "dev-0", "pos": 57,
     "candidates": [{"token", "text", "logprob", "correct", "rollouts", "greedy_correct", "end"}, ...]}

A resumed run reads the question lines instead of generating again, draws the same sample and skips the points
already written; a file with other settings, or a file that is not a decision benchmark, is refused.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm2_eval.answers import gsm8k_gold, gsm8k_is_correct
from llm2_eval.jsonl import iter_jsonl
from llm2_eval.prompts import gsm8k_prompt
from llm2_eval.splits import split_train_dev
from llm2_eval.loading import resolve_dtype
from verifier_train.explore.inputs import derive_seed, end_token_ids
from verifier_train.records import JsonlAppender, chat_token_ids
from verifier_train.rollouts import HFRolloutEngine, RolloutEngine, RolloutParams, RolloutRequest

KIND = "llm2-decisions"
VERSION = 1

#: ``(response text, gold answer, response token ids) -> correct?``
Checker = Callable[[str, str, Sequence[int]], bool]


class DecisionsError(ValueError):
    """A decision-benchmark file or setting that cannot be used (the message names the file and line)."""


@dataclass
class BuildConfig:
    """Settings of ``llm2 decisions build`` (module docstring).

    Attributes:
        model: LLM directory (the model whose decisions are measured).
        data: GSM8K train file; the dev slice is its last ``dev_size`` questions.
        output: the benchmark file (JSON Lines).
        questions: how many dev questions (the first ones of the slice).
        points: decision points to sample over all questions.
        alpha: the plausibility threshold that makes a decision point (LLM2's decoding alpha).
        wide_alpha: the threshold of the candidates stored per point (<= alpha: a wider set, to learn whether
            ``alpha`` leaves a good token out).
        max_candidates: cap on the candidates of a point (most probable first).
        rollouts: sampled continuations per candidate.
        temperature: sampling temperature of the rollouts.
        max_rollout_tokens: token budget of the greedy solution and of each continuation.
        seed: the point sample's and the rollouts' seed.
        dev_size: size of the dev slice.
        backend: ``"vllm"`` or ``"hf"``.
        dtype: model dtype (``"auto"``, ``"bfloat16"``, ``"float32"``).
        chunk: points whose rollouts go to the engine in one call (and are written together).
    """

    model: str
    data: str
    output: str
    questions: int = 100
    points: int = 300
    alpha: float = 0.1
    wide_alpha: float = 0.03
    max_candidates: int = 4
    rollouts: int = 16
    temperature: float = 0.7
    max_rollout_tokens: int = 400
    seed: int = 0
    dev_size: int = 200
    backend: str = "vllm"
    dtype: str = "auto"
    chunk: int = 24

    def __post_init__(self) -> None:
        for name in ("questions", "points", "max_candidates", "rollouts", "max_rollout_tokens", "chunk", "dev_size"):
            if int(getattr(self, name)) < 1:
                raise DecisionsError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if int(self.max_candidates) < 2:
            raise DecisionsError(f"--max-candidates {self.max_candidates}: a decision needs at least 2 candidates")
        if not 0 < float(self.wide_alpha) <= float(self.alpha) <= 1:
            raise DecisionsError(
                f"--alpha {self.alpha} / --wide-alpha {self.wide_alpha}: need 0 < wide-alpha <= alpha <= 1"
            )
        if not float(self.temperature) > 0:
            raise DecisionsError(f"--temperature {self.temperature}: rollouts sample, it must be > 0")
        if self.backend not in ("vllm", "hf"):
            raise DecisionsError(f"--backend {self.backend!r}: use vllm or hf")

    def settings(self) -> dict[str, Any]:
        """What the benchmark's content depends on (a resume must match it; ``output``, ``chunk``, ``backend``,
        ``dtype`` and ``points`` may differ: more points extend the same sample)."""
        d = asdict(self)
        for k in ("output", "chunk", "dtype", "backend", "points"):
            d.pop(k)
        d["data"] = str(Path(self.data).name)
        d["model"] = str(Path(self.model).name)
        return d


def dev_questions(data: str | Path, dev_size: int, n: int) -> list[dict[str, Any]]:
    """The first ``n`` questions of the dev slice: ``{"id", "line", "question", "gold"}`` each.

    Raises:
        DecisionsError: a missing file, a malformed line (file:line), or fewer than ``dev_size`` rows.
    """
    path = Path(data)
    if not path.is_file():
        raise DecisionsError(f"--data {path}: no such file")
    rows = list(iter_jsonl(path))
    try:
        _, dev = split_train_dev(rows, dev_size)
    except ValueError as err:
        raise DecisionsError(f"--data {path}: {err}") from None
    out = []
    for k, (line, row) in enumerate(dev[:n]):
        try:
            gold = gsm8k_gold(str(row["answer"]))
            question = str(row["question"])
        except (KeyError, ValueError) as err:
            raise DecisionsError(f"{path}:{line}: not a GSM8K row ({err})") from None
        out.append({"id": f"dev-{k}", "line": line, "question": question, "gold": gold})
    return out


def decision_positions(
    logprobs: "Any", token_ids: Sequence[int], positions: Sequence[int], alpha: float, wide_alpha: float, cap: int
) -> list[list[Any]]:
    """The decision points of one solution and their candidates (module docstring, step 2).

    Args:
        logprobs: float tensor ``[len(positions), vocab]``: log-probabilities (or logits) of the token at each
            position given the tokens before it (``-inf`` where unknown).
        token_ids: the conversation's token ids.
        positions: the response positions scored, in order.
        alpha: a position is a decision point when >= 2 tokens have ``p >= alpha * p_max``.
        wide_alpha: the stored candidates have ``p >= wide_alpha * p_max``.
        cap: at most this many candidates (most probable first; the solution's own token always kept).

    Returns:
        ``[[t, [candidate ids], [their log-probabilities]], ...]`` for the decision points, candidates by
        decreasing probability (log-probabilities renormalised over the row, so rows read as log p).
    """
    out = []
    lp = torch.log_softmax(logprobs.float(), dim=-1)
    top = lp.max(dim=-1).values
    for i, t in enumerate(positions):
        row = lp[i]
        if int((row >= top[i] + math.log(alpha)).sum()) < 2:
            continue
        wide = torch.nonzero(row >= top[i] + math.log(wide_alpha)).flatten()
        order = wide[torch.argsort(row[wide], descending=True, stable=True)].tolist()[:cap]
        own = int(token_ids[t])
        if own not in order:
            order = order[: cap - 1] + [own]
        out.append([int(t), [int(v) for v in order], [round(float(row[v]), 5) for v in order]])
    return out


def sample_points(questions: Sequence[dict[str, Any]], n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` decision points ``(question id, t)`` drawn uniformly without replacement (seeded).

    The draw is a seeded shuffle of all decision points, cut after ``n``: a smaller ``n`` gives a prefix of a
    larger one's points, so a benchmark can be built (and resumed, and extended) with more points later.
    """
    pool = [(q["id"], int(p[0])) for q in questions for p in q["positions"]]
    random.Random(derive_seed(seed, "decision-points")).shuffle(pool)
    return pool[:n]


def _read_existing(path: Path, settings: dict[str, Any]) -> tuple[list[dict], set[str]]:
    """``(question lines, done point ids)`` of an existing benchmark file with these settings.

    Raises:
        DecisionsError: a file that is not a decision benchmark, or one built with other settings.
    """
    questions, done = [], set()
    first = True
    for line, obj in iter_jsonl(path, on_error="skip"):
        if first:
            first = False
            if obj.get("kind") != KIND:
                raise DecisionsError(f"{path}:{line}: not a decision benchmark ({KIND} header missing); never appended to")
            if obj.get("settings") != settings:
                diff = sorted(k for k in set(settings) | set(obj.get("settings") or {})
                              if settings.get(k) != (obj.get("settings") or {}).get(k))
                raise DecisionsError(f"{path}:{line}: built with other settings ({', '.join(diff)}); use a new --output")
            continue
        if obj.get("type") == "question":
            questions.append(obj)
        elif obj.get("type") == "point":
            done.add(obj["id"])
    return questions, done


class DecisionBuilder:
    """Builds one benchmark file with an engine (:mod:`verifier_train.rollouts`): see the module docstring.

    Args:
        cfg: the settings.
        tokenizer: the LLM's tokenizer (with its chat template).
        engine: teacher-forced scores and rollouts (vLLM or hf).
        check: answer checker (default GSM8K numeric equality).
    """

    def __init__(self, cfg: BuildConfig, tokenizer: Any, engine: RolloutEngine, check: Checker | None = None):
        self.cfg, self.tok, self.engine = cfg, tokenizer, engine
        self.check = check or (lambda text, gold, tokens: gsm8k_is_correct(text, gold))
        self.end_ids = sorted(end_token_ids(tokenizer) | set(engine.eos_token_ids))

    def _params(self, greedy: bool):
        return RolloutParams(temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_rollout_tokens,
                             eos_token_ids=tuple(self.end_ids), greedy=greedy)

    def _text(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True).strip()

    def solve(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Steps 1-2 for ``rows`` (from :func:`dev_questions`): their question lines."""
        prompts = [chat_token_ids(self.tok, [{"role": "user", "content": gsm8k_prompt(r["question"])}],
                                  add_generation_prompt=True) for r in rows]
        asks = [(p, [RolloutRequest(prefix_len=len(p), continuation=[], seeds=[0])]) for p in prompts]
        sols = [g[0][0] for g in self.engine.rollouts_many(asks, self._params(greedy=True))]
        seqs = [p + list(s.tokens) for p, s in zip(prompts, sols)]
        # the end-of-turn token the solution ends with is a response position too: ending there is a decision
        scored = [list(range(len(p), len(q))) for p, q in zip(prompts, seqs)]
        logits = self.engine.score_many([(q, pos) for q, pos in zip(seqs, scored)])
        out = []
        for r, p, s, q, pos, lg in zip(rows, prompts, sols, seqs, scored, logits):
            resp = [t for t in s.tokens if t not in self.end_ids]
            out.append({
                "type": "question", "id": r["id"], "line": r["line"], "gold": r["gold"], "token_ids": q,
                "response_start": len(p), "finish": s.finish_reason,
                "greedy_correct": bool(s.finish_reason == "eos" and self.check(self._text(resp), r["gold"], resp)),
                "positions": decision_positions(lg, q, pos, self.cfg.alpha, self.cfg.wide_alpha,
                                                self.cfg.max_candidates),
            })
        return out

    def measure(self, question: dict[str, Any], pos: int) -> tuple[list, list, list]:
        """The rollout asks of one point: ``(candidates, sampled asks, greedy asks)`` (asks None for an end token)."""
        entry = next(p for p in question["positions"] if p[0] == pos)
        cands, sampled, greedy = [], [], []
        for v, lp in zip(entry[1], entry[2]):
            cands.append({"token": int(v), "text": self.tok.decode([int(v)]), "logprob": lp, "end": v in self.end_ids})
            if v in self.end_ids:
                sampled.append(None)
                greedy.append(None)
                continue
            seeds = [derive_seed(self.cfg.seed, question["id"], pos, int(v), j) for j in range(self.cfg.rollouts)]
            sampled.append(RolloutRequest(prefix_len=pos, continuation=[int(v)], seeds=seeds))
            greedy.append(RolloutRequest(prefix_len=pos, continuation=[int(v)], seeds=[0]))
        return cands, sampled, greedy

    def points(self, questions: Sequence[dict[str, Any]], chosen: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
        """Step 4 for ``chosen`` points: their point lines (all rollouts in two engine calls)."""
        by_id = {q["id"]: q for q in questions}
        plans = [(by_id[qid], pos, *self.measure(by_id[qid], pos)) for qid, pos in chosen]
        rolled = {}
        for greedy in (False, True):
            asks, where = [], []
            for k, (q, pos, _, sampled, greedy_asks) in enumerate(plans):
                reqs = [r for r in (greedy_asks if greedy else sampled) if r is not None]
                if reqs:
                    asks.append((q["token_ids"], reqs))
                    where.append(k)
            for k, res in zip(where, self.engine.rollouts_many(asks, self._params(greedy))):
                rolled[(k, greedy)] = res
        out = []
        for k, (q, pos, cands, sampled, _) in enumerate(plans):
            prefix = q["token_ids"][q["response_start"]:pos]
            got = iter(rolled.get((k, False), []))
            got_greedy = iter(rolled.get((k, True), []))
            for c, req in zip(cands, sampled):
                if req is None:  # an end-of-turn candidate ends the response here
                    ok = self._correct(prefix, [], q["gold"])
                    c.update(correct=self.cfg.rollouts if ok else 0, rollouts=self.cfg.rollouts, greedy_correct=ok)
                    continue
                rs = next(got)
                c["correct"] = sum(self._correct(prefix + [c["token"]], r.tokens, q["gold"], r.finish_reason)
                                   for r in rs)
                c["rollouts"] = len(rs)
                g = next(got_greedy)[0]
                c["greedy_correct"] = self._correct(prefix + [c["token"]], g.tokens, q["gold"], g.finish_reason)
            out.append({"type": "point", "id": f"{q['id']}@{pos}", "question": q["id"], "pos": pos,
                        "candidates": cands})
        return out

    def _correct(self, prefix: Sequence[int], tokens: Sequence[int], gold: str, finish: str = "eos") -> bool:
        if finish != "eos":
            return False
        resp = [int(t) for t in list(prefix) + list(tokens) if t not in self.end_ids]
        text = self._text(resp)
        return bool(text) and bool(self.check(text, gold, resp))


def build_decisions(cfg: BuildConfig, *, engine: RolloutEngine | None = None, tokenizer: Any = None,
                    check: Checker | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build (or resume) the benchmark file of ``cfg`` (module docstring).

    Args:
        cfg: the settings.
        engine: a ready engine (tests); default one from ``cfg.backend``.
        tokenizer: the LLM's tokenizer; default loaded from ``cfg.model``.
        check: answer checker; default GSM8K numeric equality.
        progress: called with one line per written chunk.

    Returns:
        A summary: questions, decision positions, points written, rollouts and seconds of this run.

    Raises:
        DecisionsError: bad settings, input, or an output that is not this benchmark.
    """
    out = Path(cfg.output)
    settings = cfg.settings()
    if out.exists() and out.stat().st_size:
        questions, done = _read_existing(out, settings)
    else:
        questions, done = [], set()
    rows = dev_questions(cfg.data, cfg.dev_size, cfg.questions)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if engine is None:
        engine = _load_engine(cfg)
    builder = DecisionBuilder(cfg, tokenizer, engine, check)
    t0 = time.perf_counter()
    rollouts0 = engine.stats.rollouts
    with JsonlAppender(out) as app:
        if app.path.stat().st_size == 0:
            app.write({"kind": KIND, "version": VERSION, "settings": settings})
        have = {q["id"] for q in questions}
        todo = [r for r in rows if r["id"] not in have]
        for lo in range(0, len(todo), 16):
            for q in builder.solve(todo[lo:lo + 16]):
                app.write(q)
                questions.append(q)
            if progress:
                progress(f"greedy solutions: {len(questions)}/{len(rows)}")
        order = {r["id"]: k for k, r in enumerate(rows)}
        questions.sort(key=lambda q: order.get(q["id"], len(order)))
        chosen = [p for p in sample_points(questions, cfg.points, cfg.seed) if f"{p[0]}@{p[1]}" not in done]
        for lo in range(0, len(chosen), cfg.chunk):
            by_place = {q["id"]: k for k, q in enumerate(questions)}
            part = sorted(chosen[lo:lo + cfg.chunk], key=lambda p: (by_place[p[0]], p[1]))  # shared prefixes together
            for point in builder.points(questions, part):
                app.write(point)
                done.add(point["id"])
            if progress:
                progress(f"points: {len(done)}/{min(cfg.points, sum(len(q['positions']) for q in questions))} "
                         f"({time.perf_counter() - t0:.0f} s)")
    return {
        "output": str(out), "questions": len(questions),
        "decision_positions": sum(len(q["positions"]) for q in questions),
        "points": len(done), "rollouts_this_run": engine.stats.rollouts - rollouts0,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }


def _load_engine(cfg: BuildConfig) -> RolloutEngine:
    """The rollout engine of ``cfg.backend``: vLLM (the optional ``vllm`` is imported only here) or transformers."""
    if cfg.backend == "vllm":
        from verifier_train.rollouts import VLLMRolloutEngine

        return VLLMRolloutEngine(cfg.model, dtype=cfg.dtype, seed=cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=resolve_dtype(cfg.dtype)).eval()
    return HFRolloutEngine(model)
