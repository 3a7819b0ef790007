"""Token quality exploration: verifier training data from questions with gold solutions (``llm2 explore``).

LLM2.md section 4 (paper Sec. 2.3, Eq. 5-6). For every input question:

1. The assistant message is the gold solution (GSM8K: ``<<...>>`` calculator annotations stripped, ``#### N``
   turned into the closing sentence ``The answer is N.``; MATH: the ``solution`` as is), or with ``--gold self``
   the first of ``--self-samples`` sampled solutions that ends (EOS) with the right answer (the question is then
   skipped and counted in the summary; it is not written, so a resumed run samples it again).
2. ``[user: question, assistant: solution]`` is tokenised with the LLM's chat template
   (:func:`verifier_train.records.chat_token_ids`). Response positions are the assistant-content tokens, from
   :func:`~verifier_train.records.response_start` up to (excluding) the first end-of-turn token (an EOS id of the
   tokenizer or the generation config); ``--include-eot`` adds that end-of-turn position. It is excluded by default:
   its alternatives mean "keep writing after the final answer", which rollouts judge poorly.
3. One teacher-forced forward gives ``p_t`` at every response position; the candidates of position ``t`` are the
   plausible set (:func:`llm2_eval.decoding.plausible_candidates`, alpha / top-k, the same function decoding
   uses) without the gold token.
4. ``--positions all|stride:K|sample:P`` subsamples the positions that have at least one candidate (the others
   cannot yield a triplet, so sampling among them would only waste the budget); see :func:`select_positions`.

``--strategy rollout`` (the paper): draw up to ``--candidates`` n candidates per position from ``p_t`` restricted to
that set (without replacement, seeded), run ``--rollouts`` m continuations of ``x_<t + v`` each (sampling at
``--temperature``, default 0.7, top-p, ``--max-rollout-tokens``, stop at EOS), and set

    q(v) = (1/m) * #{rollouts whose extracted answer equals the gold answer}      (Eq. 5)
    v is a negative  <=>  q(v) < tau  (tau = 0.5 by default)                       (Eq. 6)

writing ``[t, gold_id, v]`` for negatives. ``--gold-rollouts`` also measures ``q(gold)`` (recorded, never a label).
The answer is extracted from the whole response: gold prefix ``x_{start..t-1}`` + ``v`` + the rollout.
A candidate that is itself an end-of-turn token ends the response at once: its quality is that of the truncated
response, without rollouts.

``--strategy sample`` (the authors' released code, no rollouts): every sampled plausible non-gold token is a
negative; ``--num-samples`` draws per position, with replacement, from ``softmax(scores / temperature)`` over the
plausible set, where ``scores`` are the LLM's log-probabilities (``base``), constants (``uniform``) or the contrast
``l1 + gamma * (l1 - l2)`` of the LLM ``l1`` and ``--contrast-model`` ``l2`` (``contrast``; the set is then also
restricted to tokens plausible under the contrast model). Duplicate draws are written once.

Output (LLM2.md section 5), one line per example, appended and fsynced as each example finishes::

    {"id", "line", "messages", "samples": [[t, gold_id, v], ...], "gold_answer", "response_start", "positions",
     "response_positions", "candidate_positions",
     "qualities": [{"pos", "gold_id", "token", "text", "q", "correct", "rollouts", "truncated", "negative"}, ...],
     "gold_qualities": [...], "rollouts", "generated_tokens", "seconds", "settings": {...}}

(``--strategy sample`` writes ``"draws": [{"pos", "gold_id", "tokens", "set_size"}, ...]`` instead of qualities.)

Re-running the same command resumes (examples already in the output are skipped; a truncated last line is
repaired by :class:`~verifier_train.records.JsonlAppender`), so a killed run loses at most the example in
progress. Seeds derive from ``(--seed, example id, position, token, rollout)``, so results do not depend on which
examples ran before. A summary (``OUT.summary.json``, e.g. ``out.jsonl`` -> ``out.summary.json``) is rewritten
after every example and at the end.

``--shard i/N`` keeps the examples ``j`` (0-based index among the non-blank lines of the input; ``--start`` and
``--limit`` first select a range of ``j``) with ``j % N == i`` and writes to a per-shard output ``OUT.shard{i}-of-{N}.jsonl``;
``cat out.shard*-of-N.jsonl > out.jsonl`` merges them (the N shards cover every example exactly once).

Example ids: the input's ``id`` field when present, else the 1-based line number in the input file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import click

from llm2_eval.answers import gsm8k_gold, gsm8k_is_correct, math_gold, math_is_correct
from verifier_train.records import JsonlAppender, chat_token_ids, check_samples, response_start

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from verifier_train.rollouts import RolloutEngine

#: ``checker(response_text, gold_answer, rollout_tokens) -> bool``: whether a response reaches the gold answer.
#: ``response_text`` is the decoded assistant response (gold prefix + candidate + rollout, special tokens skipped),
#: ``rollout_tokens`` the ids the rollout generated after the candidate (empty for a response ended by the
#: candidate; the sampled solution for ``--gold self``).
Checker = Callable[[str, str, Sequence[int]], bool]

STRATEGIES = ("rollout", "sample")
BACKENDS = ("hf", "vllm")
SAMPLE_MODES = ("base", "uniform", "contrast")
FORMATS = ("auto", "gsm8k", "math")
GOLD_SOURCES = ("dataset", "self")

# Settings that change the output; a resumed run must use the same ones (see ExploreConfig.settings()).
_RESULT_KEYS = (
    "model", "strategy", "backend", "dtype", "data_format", "gold", "self_samples", "self_max_tokens", "positions",
    "include_eot", "alpha", "top_k", "candidates", "rollouts", "tau", "gold_rollouts", "temperature", "top_p",
    "max_rollout_tokens", "mode", "contrast_model", "gamma", "num_samples", "seed",
)


@dataclass
class ExploreConfig:
    """All settings of ``llm2 explore`` with their defaults (the CLI options map 1:1 onto these fields).

    Attributes:
        model: LLM directory or hub id (its chat template tokenises the solutions).
        data: input JSON Lines file (GSM8K ``question``/``answer``; MATH ``problem``/``solution``[/``answer``]).
        output: output JSON Lines file (per-shard name with ``shard``, see the module docstring).
        strategy: ``"rollout"`` (paper, Eq. 5-6) or ``"sample"`` (released code, no rollouts).
        backend: ``"hf"`` (transformers) or ``"vllm"``.
        data_format: ``"auto"`` (by the keys of each line), ``"gsm8k"`` or ``"math"``.
        gold: ``"dataset"`` (the file's solution) or ``"self"`` (the LLM's first correct sampled solution).
        self_samples: k, solutions sampled per question with ``gold="self"``.
        self_max_tokens: token budget of each self-sampled solution.
        positions: ``"all"``, ``"stride:K"`` or ``"sample:P"`` (P >= 1 integer: that many positions; 0 < P < 1:
            that fraction, at least one), applied to the response positions that have a plausible non-gold
            candidate; see :func:`select_positions`.
        include_eot: also explore the end-of-turn token position.
        alpha: plausibility threshold (candidates have ``p >= alpha * p_max``), LLM2.md section 3 step 2.
        top_k: when > 0, the plausible set is the top-k tokens instead.
        candidates: n, candidates drawn per position (rollout strategy).
        rollouts: m, rollouts per candidate (Eq. 5).
        tau: quality threshold of Eq. 6 (negative iff ``q < tau``).
        gold_rollouts: also measure ``q(gold)`` with m rollouts per explored position.
        temperature: rollout (and self-sampling) temperature, default 0.7 (the paper is silent; a common
            self-consistency setting); for ``strategy="sample"`` the temperature of the negative-sampling
            distribution, default 1.0. ``None`` = that strategy's default.
        top_p: nucleus threshold of rollouts.
        max_rollout_tokens: token budget per rollout (512, the released decoding budget).
        mode: sample strategy: ``"base"``, ``"uniform"`` or ``"contrast"``.
        contrast_model: the second model of ``mode="contrast"`` (same tokenizer vocabulary; loaded with
            transformers on ``device`` whatever the backend).
        gamma: contrast weight in ``l1 + gamma * (l1 - l2)``.
        num_samples: draws per position (sample strategy, with replacement, deduplicated).
        seed: global seed; every random choice derives from it and the example id (:func:`derive_seed`).
        start: skip the first ``start`` examples (non-blank lines) of the input.
        limit: then take at most ``limit`` examples (None = all).
        shard: ``(i, N)``: keep examples ``j`` with ``j % N == i``.
        on_error: ``"fail"`` (stop at a bad input line, naming ``file:line``) or ``"skip"`` (count it in the summary).
        dtype: ``"auto"``, ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        batch_rows: hf backend: maximum rollouts decoded together (16-32 suits a CPU; larger on GPUs).
        threads: CPU threads for torch (``torch.set_num_threads``, process-wide); 0 = torch's default. On a CPU
            shared with other jobs, 1 thread avoids OpenMP oversubscription stalls.
        tensor_parallel_size: vLLM tensor parallelism.
        vllm_args: further ``vllm.LLM`` keyword arguments.
        vllm_logprobs: vLLM: top-k prompt logprobs used for candidate sets.
        max_context: context limit in tokens (None = the model's ``max_position_embeddings``).
        progress: show the rich progress bar.
        checker: answer checker (default by format: GSM8K numbers / MATH math-verify); tests inject stubs.
    """

    model: str
    data: str
    output: str
    strategy: str = "rollout"
    backend: str = "hf"
    data_format: str = "auto"
    gold: str = "dataset"
    self_samples: int = 4
    self_max_tokens: int = 512
    positions: str = "all"
    include_eot: bool = False
    alpha: float = 0.1
    top_k: int = 0
    candidates: int = 2
    rollouts: int = 4
    tau: float = 0.5
    gold_rollouts: bool = False
    temperature: float | None = None
    top_p: float = 1.0
    max_rollout_tokens: int = 512
    mode: str = "base"
    contrast_model: str | None = None
    gamma: float = 1.0
    num_samples: int = 2
    seed: int = 0
    start: int = 0
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    on_error: str = "fail"
    dtype: str = "auto"
    device: str = "auto"
    batch_rows: int = 32
    threads: int = 0
    tensor_parallel_size: int = 1
    vllm_args: dict[str, Any] = field(default_factory=dict)
    vllm_logprobs: int = 20
    max_context: int | None = None
    progress: bool = True
    checker: Checker | None = None

    ROLLOUT_TEMPERATURE = 0.7
    SAMPLE_TEMPERATURE = 1.0

    def __post_init__(self) -> None:
        choices = {
            "strategy": STRATEGIES, "backend": BACKENDS, "mode": SAMPLE_MODES, "data_format": FORMATS,
            "gold": GOLD_SOURCES, "on_error": ("fail", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        if not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(f"alpha={self.alpha!r}: must be in (0, 1]")
        if int(self.threads) < 0:
            raise ValueError(f"threads={self.threads!r}: must be >= 0")
        for name in ("candidates", "rollouts", "num_samples", "self_samples", "self_max_tokens",
                     "max_rollout_tokens", "batch_rows", "tensor_parallel_size", "vllm_logprobs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if int(self.top_k) < 0 or int(self.start) < 0 or (self.limit is not None and int(self.limit) < 0):
            raise ValueError("top_k, start and limit must be >= 0")
        if not 0.0 <= float(self.tau) <= 1.0:
            raise ValueError(f"tau={self.tau!r}: must be in [0, 1]")
        if self.temperature is not None and not float(self.temperature) > 0:
            raise ValueError(f"temperature={self.temperature!r}: must be > 0")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        i, n = (int(v) for v in self.shard)
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard={self.shard!r}: need 0 <= i < N")
        self.shard = (i, n)
        if self.strategy == "sample" and self.mode == "contrast" and not self.contrast_model:
            raise ValueError("mode 'contrast' needs a contrast model (--contrast-model)")
        parse_positions(self.positions)

    @property
    def resolved_temperature(self) -> float:
        """The temperature in effect (the field, or the strategy's default)."""
        if self.temperature is not None:
            return float(self.temperature)
        return self.ROLLOUT_TEMPERATURE if self.strategy == "rollout" else self.SAMPLE_TEMPERATURE

    def settings(self) -> dict[str, Any]:
        """The settings that determine the output (written on every line; a resumed run must match them)."""
        d = {k: getattr(self, k) for k in _RESULT_KEYS}
        d["temperature"] = self.resolved_temperature
        if self.strategy == "rollout":
            for k in ("mode", "contrast_model", "gamma", "num_samples"):
                d.pop(k)
        else:
            for k in ("candidates", "rollouts", "tau", "gold_rollouts", "top_p", "max_rollout_tokens"):
                d.pop(k)
            if self.mode != "contrast":
                d.pop("contrast_model")
                d.pop("gamma")
        if self.gold == "dataset":
            d.pop("self_samples")
            d.pop("self_max_tokens")
        return d


class ExploreInputError(ValueError):
    """A bad input line with ``--on-error fail``; the message names ``file:line`` and the reason."""


class _BadInput(ValueError):
    """Internal: the current example cannot be explored (reason in the message)."""


# ------------------------------------------------------------------------------------------- small pure helpers


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-serialisable parts (stable across runs, machines and Python versions)."""
    data = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def rollout_seed(seed: int, example_id: Any, pos: int, token: int, rollout: int) -> int:
    """Seed of rollout number ``rollout`` of candidate ``token`` at position ``pos`` of an example."""
    return derive_seed(seed, example_id, pos, token, rollout)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``.

    Raises:
        ValueError: on any other form.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    """Whether the example of 0-based ``index`` belongs to ``shard = (i, N)``: ``index % N == i``."""
    return index % shard[1] == shard[0]


def shard_output_path(output: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """The output file of a shard: ``OUT`` itself for ``N == 1``, else ``OUT.stem + .shard{i}-of-{N} + suffix``."""
    p = Path(output)
    if shard[1] == 1:
        return p
    return p.with_name(f"{p.stem}.shard{shard[0]}-of-{shard[1]}{p.suffix}")


def summary_path(output: str | os.PathLike) -> Path:
    """``out.jsonl`` -> ``out.summary.json`` (next to the output)."""
    p = Path(output)
    return p.with_name(f"{p.stem if p.suffix else p.name}.summary.json")


def parse_positions(spec: str) -> tuple[str, float]:
    """Parse ``all`` / ``stride:K`` / ``sample:P``; returns ``(kind, value)``.

    Raises:
        ValueError: an unknown form, ``K < 1``, or ``P <= 0``.
    """
    s = (spec or "").strip().lower()
    if s == "all":
        return "all", 0.0
    m = re.fullmatch(r"(stride|sample):\s*([0-9]*\.?[0-9]+)", s)
    if m:
        kind, val = m.group(1), float(m.group(2))
        if kind == "stride" and (val < 1 or val != int(val)):
            raise ValueError(f"positions {spec!r}: stride K must be an integer >= 1")
        if kind == "sample" and (val <= 0 or (val >= 1 and val != int(val))):
            raise ValueError(f"positions {spec!r}: sample P must be an integer >= 1 or a fraction in (0, 1)")
        return kind, val
    raise ValueError(f"positions {spec!r}: expected all, stride:K or sample:P")


def select_positions(spec: str, positions: Sequence[int], seed: int) -> list[int]:
    """Subsample response positions (LLM2.md section 4).

    ``all``: every position. ``stride:K``: every K-th, starting at the first. ``sample:P``: a seeded random subset
    in ascending order: ``P`` positions when ``P`` is an integer >= 1 (all when fewer), the fraction ``P``
    (rounded, at least one) when ``0 < P < 1``.
    """
    kind, val = parse_positions(spec)
    pos = list(positions)
    if kind == "all" or not pos:
        return pos
    if kind == "stride":
        return pos[:: int(val)]
    k = int(val) if val >= 1 else max(1, round(val * len(pos)))
    if k >= len(pos):
        return pos
    return sorted(random.Random(seed).sample(pos, k))


def gsm8k_solution_text(answer: str) -> str:
    """A GSM8K ``answer`` as an assistant message: ``<<...>>`` annotations removed, ``#### N`` replaced by
    ``The answer is N.`` (LLM2.md section 4).

    Raises:
        ValueError: no ``#### N`` (from :func:`llm2_eval.answers.gsm8k_gold`).
    """
    gold = gsm8k_gold(answer)
    body = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    body = "\n".join(line.rstrip() for line in body.splitlines())
    return (body + "\n" if body else "") + f"The answer is {gold}."


def default_checker(data_format: str) -> Checker:
    """The answer checker of a format: GSM8K numeric equality or MATH math-verify (LLM2.md section 7)."""
    fn = gsm8k_is_correct if data_format == "gsm8k" else math_is_correct
    return lambda text, gold, tokens: fn(text, gold)


def parse_example(obj: Any, data_format: str, need_solution: bool) -> tuple[str, str, str | None, str]:
    """``(format, question, solution or None, gold answer)`` of one input object.

    Raises:
        _BadInput: not an object, a missing/non-string field, or no parseable gold answer.
    """
    if not isinstance(obj, dict):
        raise _BadInput(f"expected a JSON object, got {type(obj).__name__}")
    fmt = data_format
    if fmt == "auto":
        if "question" in obj:
            fmt = "gsm8k"
        elif "problem" in obj:
            fmt = "math"
        else:
            raise _BadInput("missing field 'question' (GSM8K) or 'problem' (MATH)")
    keys = ("question", "answer") if fmt == "gsm8k" else ("problem",) + (("solution",) if need_solution else ())
    for k in keys:
        if not isinstance(obj.get(k), str) or not obj[k].strip():
            raise _BadInput(f"missing field {k!r} ({fmt} format)")
    try:
        if fmt == "gsm8k":
            gold = gsm8k_gold(obj["answer"])
            solution = gsm8k_solution_text(obj["answer"]) if need_solution else None
            return fmt, obj["question"], solution, gold
        gold = math_gold(obj)
    except ValueError as err:
        raise _BadInput(f"no parseable gold answer: {err}") from None
    return fmt, obj["problem"], (obj["solution"].strip() if need_solution else None), gold


def iter_input(path: str | os.PathLike) -> Iterator[tuple[int, int, str]]:
    """``(index, line_number, raw)`` of every non-blank line: ``index`` 0-based among them, line number 1-based.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input file not found: {p}")
    index = 0
    with p.open("r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield index, lineno, raw
                index += 1


def end_token_ids(tokenizer: Any, model_config: Any = None, generation_config: Any = None) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS and the generation config's ``eos_token_id`` (int or list)."""
    ids: set[int] = set()
    for src in (tokenizer, generation_config, model_config):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def response_positions(
    token_ids: Sequence[int], start: int, end_ids: set[int], include_eot: bool = False
) -> list[int]:
    """Assistant-content positions: ``start`` up to (excluding) the first end-of-turn id at or after it (the
    end-of-turn position itself too with ``include_eot``)."""
    end = next((i for i in range(start, len(token_ids)) if token_ids[i] in end_ids), len(token_ids))
    return list(range(start, end + (1 if include_eot and end < len(token_ids) else 0)))


def candidate_draws(
    logits: "torch.Tensor", cand_ids: "torch.Tensor", n: int, seed: int
) -> list[int]:
    """Draw ``min(n, K)`` distinct candidates from ``p_t`` restricted to the candidate set (LLM2.md section 4 step 3).

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
    """Scores of the sample strategy's distribution, ``[P, vocab]`` (released code's ``--sample`` modes).

    ``base``: the LLM's log-probabilities ``l1``; ``uniform``: zeros; ``contrast``: ``l1 + gamma * (l1 - l2)`` with
    ``l2`` the contrast model's log-probabilities. Callers mask the non-candidates with ``-inf`` and apply
    ``softmax(scores / temperature)``.

    Raises:
        ValueError: an unknown mode, or ``contrast`` without contrast logits.
    """
    import torch

    l1 = torch.log_softmax(logits.float(), dim=-1)
    if mode == "base":
        return l1
    if mode == "uniform":
        return torch.zeros_like(l1)
    if mode == "contrast":
        if contrast_logits is None:
            raise ValueError("contrast mode needs the contrast model's logits")
        l2 = torch.log_softmax(contrast_logits.float(), dim=-1)
        out = l1 + float(gamma) * (l1 - l2)
        return out.nan_to_num(nan=-float("inf"))
    raise ValueError(f"unknown sample mode {mode!r}")


def candidate_mask(logits: "torch.Tensor", gold_ids: "torch.Tensor", alpha: float, top_k: int) -> "torch.Tensor":
    """Dense ``[P, vocab]`` bool mask of the plausible set without the gold token, via
    :func:`llm2_eval.decoding.plausible_candidates` (the one candidate-set function)."""
    import torch

    from llm2_eval.decoding import plausible_candidates

    ids, mask = plausible_candidates(logits, alpha=alpha, top_k=top_k, exclude=gold_ids)
    dense = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    return dense.scatter(1, ids, mask)


# --------------------------------------------------------------------------------------------------- the explorer


@dataclass
class _Counters:
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
    self_samples: int = 0


class _Explorer:
    """The per-example work of :func:`explore` (models loaded once)."""

    def __init__(self, cfg: ExploreConfig, tokenizer: Any, engine: "RolloutEngine", contrast: Any, end_ids: set[int]):
        self.cfg, self.tok, self.engine, self.contrast, self.end_ids = cfg, tokenizer, engine, contrast, end_ids
        self.vocab = min(len(tokenizer), engine.vocab_size)
        self.ctx = cfg.max_context or engine.max_context
        self.settings = cfg.settings()
        self.c = _Counters()

    def _params(self, max_new: int):
        from verifier_train.rollouts import RolloutParams

        return RolloutParams(
            temperature=self.cfg.resolved_temperature if self.cfg.strategy == "rollout" else ExploreConfig.ROLLOUT_TEMPERATURE,
            top_p=self.cfg.top_p,
            max_new_tokens=max_new,
            eos_token_ids=tuple(sorted(self.end_ids)),
        )

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def self_solution(self, ex_id: Any, question: str, gold: str, check: Checker) -> str | None:
        """``--gold self``: the first of k sampled solutions that reaches the gold answer, or None."""
        from verifier_train.rollouts import RolloutRequest

        prompt = chat_token_ids(self.tok, [{"role": "user", "content": question}], add_generation_prompt=True)
        if self.ctx and len(prompt) + self.cfg.self_max_tokens > self.ctx:
            raise _BadInput(
                f"prompt of {len(prompt)} tokens + --self-max-tokens {self.cfg.self_max_tokens} exceeds the "
                f"model context ({self.ctx})"
            )
        seeds = [derive_seed(self.cfg.seed, ex_id, "self", j) for j in range(self.cfg.self_samples)]
        req = RolloutRequest(prefix_len=len(prompt), continuation=[], seeds=seeds)
        outs = self.engine.rollouts(prompt, [req], self._params(self.cfg.self_max_tokens))[0]
        self.c.self_samples += len(outs)
        self.c.rollouts += len(outs)
        self.c.generated_tokens += sum(len(r.tokens) for r in outs)
        for r in outs:
            text = self._decode(r.tokens).strip()
            if text and r.finish_reason == "eos" and check(text, gold, r.tokens):
                return text
        return None

    def run(self, ex_id: Any, lineno: int, question: str, solution: str, gold: str, check: Checker) -> dict:
        import torch

        t0 = time.perf_counter()
        c0 = (self.c.rollouts, self.c.generated_tokens)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
        ids = chat_token_ids(self.tok, messages)
        rs = response_start(self.tok, messages)
        budget = self.cfg.max_rollout_tokens if self.cfg.strategy == "rollout" else 0
        if self.ctx and len(ids) + budget > self.ctx:
            extra = f" + --max-rollout-tokens {budget}" if budget else ""
            raise _BadInput(f"the conversation's {len(ids)} tokens{extra} exceed the model context ({self.ctx})")
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
                    self._rollout(*args, rs=rs, gold=gold, check=check)
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
        record["rollouts"] = self.c.rollouts - c0[0]
        record["generated_tokens"] = self.c.generated_tokens - c0[1]
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["settings"] = self.settings
        return record

    def _rollout(self, record, ids, positions, logits, allowed, ex_id, *, rs, gold, check) -> None:
        from verifier_train.rollouts import RolloutRequest

        cfg = self.cfg
        jobs: list[tuple[int, int, bool]] = []  # (pos, token, is_gold)
        for i, t in enumerate(positions):
            cset = allowed[i].nonzero().flatten().cpu()
            for v in candidate_draws(logits[i].cpu(), cset, cfg.candidates, derive_seed(cfg.seed, ex_id, t, "cand")):
                jobs.append((t, v, False))
            if cfg.gold_rollouts:
                jobs.append((t, int(ids[t]), True))
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
            results = self.engine.rollouts(ids, requests, self._params(cfg.max_rollout_tokens))
            for job, group in zip(req_jobs, results):
                t, v, _ = job
                head = list(ids[rs:t]) + [v]
                correct = sum(bool(check(self._decode(head + r.tokens), gold, r.tokens)) for r in group)
                truncated = sum(r.finish_reason == "length" for r in group)
                outcomes[job] = (correct / len(group), correct, len(group), truncated)
                self.c.truncated += truncated
                self.c.rollouts += len(group)
                self.c.generated_tokens += sum(len(r.tokens) for r in group)
        qualities, gold_q = [], []
        for job in jobs:
            t, v, is_gold = job
            q, correct, n_roll, truncated = outcomes[job]
            entry = {"pos": t, "gold_id": int(ids[t]), "token": v, "text": self.tok.decode([v]), "q": q,
                     "correct": correct, "rollouts": n_roll, "truncated": truncated}
            if is_gold:
                gold_q.append(entry)
                self.c.gold_q_sum += q
                self.c.gold_q_n += 1
                continue
            entry["negative"] = q < cfg.tau  # Eq. 6
            qualities.append(entry)
            self.c.candidates += 1
            self.c.q_sum += q
            if entry["negative"]:
                record["samples"].append([t, int(ids[t]), v])
        record["qualities"] = qualities
        if cfg.gold_rollouts:
            record["gold_qualities"] = gold_q

    def _sample(self, record, ids, positions, logits, allowed, ex_id) -> None:
        import torch

        cfg = self.cfg
        l2 = None
        if cfg.mode == "contrast":
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
            seen = set()
            for v in torch.multinomial(probs, cfg.num_samples, replacement=True, generator=g).tolist():
                if v not in seen and bool(allowed[i, v]):
                    seen.add(v)
                    record["samples"].append([t, int(ids[t]), int(v)])
            drawn.append({"pos": t, "gold_id": int(ids[t]), "tokens": sorted(seen), "set_size": int(allowed[i].sum())})
            self.c.candidates += len(seen)
        record["draws"] = drawn


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(f"the tokenizer of {path} has no chat template; exploration tokenises chat messages")
    return tok


def _device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def _load_hf(path: str, dtype: str, device: str):
    from transformers import AutoModelForCausalLM

    from llm2_eval.verifier import resolve_dtype

    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    return model.to(device).eval()


def _existing_settings(path: Path) -> dict | None:
    if not path.exists():
        return None
    with path.open("r", encoding="utf-8") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("settings"), dict):
                return obj["settings"]
    return None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def explore(config: ExploreConfig, *, engine: "RolloutEngine | None" = None) -> dict[str, Any]:
    """Run token quality exploration over ``config.data`` (LLM2.md section 4; paper Eq. 5-6).

    Args:
        config: the settings (:class:`ExploreConfig`).
        engine: an already built rollout engine (else one is built from ``config.model``/``backend``).

    Returns:
        The summary dict also written to ``OUT.summary.json``: ``examples`` (written by this run), ``resumed``
        (already in the output), ``skipped`` and ``skipped_lines`` (``file:line: reason``), ``self_gold_failed``,
        ``response_positions`` (assistant tokens), ``candidate_positions`` (those with a plausible non-gold
        token), ``positions`` (explored), ``candidates`` (tried), ``negatives`` (kept), ``negative_rate``, ``mean_q``,
        ``mean_gold_q``, ``rollouts``, ``truncated_rollouts`` (hit ``max_rollout_tokens``: no final answer, so
        they count as failures), ``generated_tokens``, ``wall_seconds``, ``examples_per_s``,
        ``rollouts_per_s``, ``tokens_per_s``, ``output``, ``settings``.

    Raises:
        ExploreInputError: a bad input line with ``on_error="fail"`` (message ``file:line: reason``).
        ValueError: an output written with other settings (use a new ``--output``), a contrast model with another
            vocabulary, a tokenizer without chat template.
        ImportError: ``backend="vllm"`` without vLLM installed.
        FileNotFoundError: a missing input file.
    """
    cfg = config
    t_start = time.perf_counter()
    out_path = shard_output_path(cfg.output, cfg.shard)
    sum_path = summary_path(out_path)
    selected = [
        (j, ln, raw)
        for j, ln, raw in iter_input(cfg.data)
        if j >= cfg.start and (cfg.limit is None or j < cfg.start + cfg.limit) and in_shard(j, cfg.shard)
    ]
    old = _existing_settings(out_path)
    if old is not None and old != json.loads(json.dumps(cfg.settings())):
        diff = sorted(k for k in set(old) | set(cfg.settings()) if old.get(k) != cfg.settings().get(k))
        raise ValueError(
            f"{out_path} was written with other settings ({', '.join(diff)}); resume with the same options or "
            "choose a new --output"
        )

    tokenizer = _load_tokenizer(cfg.model)
    device = _device(cfg.device)
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(int(cfg.threads))
    model_config = gen_config = None
    if engine is None:
        from verifier_train.rollouts import HFRolloutEngine, VLLMRolloutEngine

        if cfg.backend == "vllm":
            engine = VLLMRolloutEngine(
                cfg.model, dtype=cfg.dtype, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size,
                logprobs_k=cfg.vllm_logprobs, engine_kwargs=cfg.vllm_args,
            )
        else:
            model = _load_hf(cfg.model, cfg.dtype, device)
            model_config, gen_config = model.config, getattr(model, "generation_config", None)
            engine = HFRolloutEngine(model, batch_rows=cfg.batch_rows)
    else:
        model = getattr(engine, "model", None)
        model_config = getattr(model, "config", None)
        gen_config = getattr(model, "generation_config", None)
    contrast = None
    if cfg.strategy == "sample" and cfg.mode == "contrast":
        from llm2_eval.verifier import check_tokenizers_compatible
        from verifier_train.rollouts import HFRolloutEngine

        check_tokenizers_compatible(tokenizer, _load_tokenizer(cfg.contrast_model), llm_name="LLM",
                                    verifier_name="contrast model")
        contrast = HFRolloutEngine(_load_hf(cfg.contrast_model, cfg.dtype, device))
    ends = end_token_ids(tokenizer, model_config, gen_config)
    ex = _Explorer(cfg, tokenizer, engine, contrast, ends)

    skipped: list[str] = []
    self_failed: list[Any] = []
    resumed = 0
    seen_ids: set[str] = set()
    appender = JsonlAppender(out_path, key="id")
    todo = []
    for j, ln, raw in selected:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        ex_id = obj.get("id", ln) if isinstance(obj, dict) else ln
        if ex_id in appender:
            resumed += 1
        else:
            todo.append((j, ln, raw))

    def summary(done: bool) -> dict[str, Any]:
        c = ex.c
        wall = time.perf_counter() - t_start
        return {
            "output": str(out_path), "input": str(cfg.data), "finished": done,
            "selected": len(selected), "examples": c.examples, "resumed": resumed,
            "skipped": len(skipped), "skipped_lines": skipped,
            "self_gold_failed": len(self_failed), "self_gold_failed_ids": self_failed,
            "self_samples": c.self_samples,
            "response_positions": c.response_positions, "candidate_positions": c.candidate_positions,
            "positions": c.positions, "candidates": c.candidates, "negatives": c.negatives,
            "negative_rate": c.negatives / c.candidates if c.candidates else None,
            "mean_q": c.q_sum / c.candidates if c.candidates and cfg.strategy == "rollout" else None,
            "mean_gold_q": c.gold_q_sum / c.gold_q_n if c.gold_q_n else None,
            "rollouts": c.rollouts, "truncated_rollouts": c.truncated, "generated_tokens": c.generated_tokens,
            "wall_seconds": round(wall, 2),
            "examples_per_s": c.examples / wall if wall else None,
            "rollouts_per_s": c.rollouts / wall if wall else None,
            "tokens_per_s": c.generated_tokens / wall if wall else None,
            "engine": asdict(engine.stats) if hasattr(engine, "stats") else None,
            "shard": f"{cfg.shard[0]}/{cfg.shard[1]}", "start": cfg.start, "limit": cfg.limit,
            "settings": cfg.settings(),
        }

    def bad(ln: int, reason: str) -> None:
        msg = f"{cfg.data}:{ln}: {reason}"
        if cfg.on_error == "fail":
            raise ExploreInputError(msg)
        skipped.append(msg)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]explore"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rates]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not cfg.progress,
    )
    log_lines = cfg.progress and not console.is_terminal
    try:
        with progress:
            task = progress.add_task("explore", total=len(todo), rates="")
            for j, ln, raw in todo:
                try:
                    try:
                        obj = json.loads(raw)
                    except json.JSONDecodeError as err:
                        raise _BadInput(f"not valid JSON ({err.msg} at column {err.colno})") from None
                    fmt, question, solution, gold = parse_example(obj, cfg.data_format, cfg.gold == "dataset")
                    ex_id = obj.get("id", ln)
                    key = json.dumps(ex_id, sort_keys=True)
                    if key in seen_ids:
                        raise _BadInput(f"duplicate example id {ex_id!r}")
                    seen_ids.add(key)
                    check = cfg.checker or default_checker(fmt)
                    if cfg.gold == "self":
                        solution = ex.self_solution(ex_id, question, gold, check)
                        if solution is None:
                            self_failed.append(ex_id)
                            progress.advance(task)
                            continue
                    record = ex.run(ex_id, ln, question, solution, gold, check)
                except _BadInput as err:
                    bad(ln, str(err))
                    progress.advance(task)
                    continue
                appender.write(record)
                s = summary(False)
                rates = (
                    f"{s['examples_per_s'] or 0:.3f} ex/s  {s['rollouts_per_s'] or 0:.1f} rollouts/s  "
                    f"{s['tokens_per_s'] or 0:.1f} tok/s"
                )
                progress.update(task, advance=1, rates=rates)
                if log_lines:
                    console.print(
                        f"[{s['examples']}/{len(todo)}] id={ex_id} positions={len(record['positions'])} "
                        f"negatives={len(record['samples'])} rollouts={record['rollouts']} "
                        f"{record['seconds']:.1f}s | {rates}",
                        highlight=False,
                        soft_wrap=True,
                    )
                _write_json_atomic(sum_path, s)
    finally:
        appender.close()
    final = summary(True)
    _write_json_atomic(sum_path, final)
    return final


# ------------------------------------------------------------------------------------------------------- the CLI


def _parse_vllm_args(values: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--vllm-arg")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


_D = ExploreConfig.__dataclass_fields__


def _default(name: str) -> Any:
    return _D[name].default


@click.command("explore")
@click.option("--model", required=True, help="LLM directory or hub id (System 1).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Input JSON Lines (GSM8K or MATH format).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Output JSON Lines (appended; resumable).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=_default("strategy"), show_default=True,
              help="rollout: paper Eq. 5-6; sample: released code, no rollouts.")
@click.option("--backend", type=click.Choice(BACKENDS), default=_default("backend"), show_default=True)
@click.option("--format", "data_format", type=click.Choice(FORMATS), default=_default("data_format"), show_default=True)
@click.option("--gold", type=click.Choice(GOLD_SOURCES), default=_default("gold"), show_default=True,
              help="dataset: the file's solution; self: the LLM's first correct sampled solution.")
@click.option("--self-samples", type=int, default=_default("self_samples"), show_default=True)
@click.option("--self-max-tokens", type=int, default=_default("self_max_tokens"), show_default=True)
@click.option("--positions", default=_default("positions"), show_default=True, help="all | stride:K | sample:P")
@click.option("--include-eot/--no-include-eot", default=_default("include_eot"), show_default=True,
              help="Also explore the end-of-turn token position.")
@click.option("--alpha", type=float, default=_default("alpha"), show_default=True)
@click.option("--top-k", type=int, default=_default("top_k"), show_default=True)
@click.option("--candidates", type=int, default=_default("candidates"), show_default=True, help="n per position.")
@click.option("--rollouts", type=int, default=_default("rollouts"), show_default=True, help="m per candidate.")
@click.option("--tau", type=float, default=_default("tau"), show_default=True, help="Negative iff q < tau (Eq. 6).")
@click.option("--gold-rollouts/--no-gold-rollouts", default=_default("gold_rollouts"), show_default=True)
@click.option("--temperature", type=float, default=None,
              help="Rollout temperature (default 0.7) / sample-strategy temperature (default 1.0).")
@click.option("--top-p", type=float, default=_default("top_p"), show_default=True)
@click.option("--max-rollout-tokens", type=int, default=_default("max_rollout_tokens"), show_default=True)
@click.option("--mode", type=click.Choice(SAMPLE_MODES), default=_default("mode"), show_default=True)
@click.option("--contrast-model", default=None, help="Second model of --mode contrast (same vocabulary).")
@click.option("--gamma", type=float, default=_default("gamma"), show_default=True)
@click.option("--num-samples", type=int, default=_default("num_samples"), show_default=True)
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option("--start", type=int, default=_default("start"), show_default=True, help="Skip the first N examples.")
@click.option("--limit", type=int, default=None, help="Explore at most N examples (after --start).")
@click.option("--shard", default="0/1", show_default=True, help="i/N: examples j with j mod N == i, per-shard output.")
@click.option("--on-error", type=click.Choice(("fail", "skip")), default=_default("on_error"), show_default=True)
@click.option("--dtype", default=_default("dtype"), show_default=True)
@click.option("--device", default=_default("device"), show_default=True)
@click.option("--batch-rows", type=int, default=_default("batch_rows"), show_default=True,
              help="hf: rollouts decoded together.")
@click.option("--threads", type=int, default=_default("threads"), show_default=True,
              help="CPU threads for torch (0 = default; 1 on a busy shared CPU).")
@click.option("--tensor-parallel-size", type=int, default=_default("tensor_parallel_size"), show_default=True)
@click.option("--vllm-arg", "vllm_args", multiple=True, help="KEY=VALUE passed to vllm.LLM (repeatable).")
@click.option("--vllm-logprobs", type=int, default=_default("vllm_logprobs"), show_default=True)
@click.option("--max-context", type=int, default=None, help="Context limit (default: the model's).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def explore_command(**kwargs: Any) -> None:
    """Token quality exploration (LLM2 paper Sec. 2.3, Eq. 5-6): write verifier training triplets.

    Example: llm2 explore --model DIR --data gsm8k/train.jsonl --output out.jsonl --positions stride:8
    """
    try:
        kwargs["shard"] = parse_shard(kwargs["shard"])
        kwargs["vllm_args"] = _parse_vllm_args(kwargs["vllm_args"])
        cfg = ExploreConfig(**kwargs)
        s = explore(cfg)
    except (ExploreInputError, ValueError, ImportError, OSError) as err:
        raise click.ClickException(str(err)) from err
    keys = ("examples", "resumed", "skipped", "self_gold_failed", "positions", "candidates", "negatives",
            "rollouts", "generated_tokens", "wall_seconds", "rollouts_per_s", "tokens_per_s")
    click.echo(json.dumps({k: s[k] for k in keys}), file=sys.stdout)
    click.echo(f"wrote {s['output']} (summary: {summary_path(s['output'])})", err=True)
