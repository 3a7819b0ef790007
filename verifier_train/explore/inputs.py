"""Exploration inputs: questions and gold solutions in, token positions to explore out (docs/method.md section 4).

1. The assistant message is the gold solution (GSM8K: ``<<...>>`` calculator annotations stripped, ``#### N``
   turned into the closing sentence ``The answer is N.``, :func:`gsm8k_solution_text`; MATH: the ``solution`` as
   is), see :func:`parse_example`.
2. ``[user: question, assistant: solution]`` is tokenised with the LLM's chat template
   (:func:`verifier_train.records.chat_token_ids`). Response positions are the assistant-content tokens, from
   :func:`~verifier_train.records.response_start` up to (excluding) the first end-of-turn token (an EOS id of the
   tokenizer or the generation config, :func:`end_token_ids`); ``--include-eot`` adds that end-of-turn position
   (:func:`response_positions`). It is excluded by default: its alternatives mean "keep writing after the final
   answer", which rollouts judge poorly.
3. ``--positions all|stride:K|sample:P`` subsamples the positions that have at least one plausible non-gold
   candidate (the others cannot yield a triplet, so sampling among them would only waste the budget); see
   :func:`select_positions`.

Examples are the non-blank lines of the input (:func:`iter_input`); their id is the input's ``id`` field when
present, else the 1-based line number. ``--shard i/N`` keeps the examples ``j`` (0-based index among the non-blank
lines; ``--start`` and ``--limit`` first select a range of ``j``) with ``j % N == i`` and writes to a per-shard
output ``OUT.shard{i}-of-{N}.jsonl``; ``cat out.shard*-of-N.jsonl > out.jsonl`` merges them (the N shards cover
every example exactly once). Seeds derive from ``(--seed, example id, ...)`` (:func:`derive_seed`), so results do
not depend on which examples ran before.
"""

from __future__ import annotations

import functools
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from llm2_eval.answers import gsm8k_gold, math_gold
from llm2_eval.candidates import derive_seed
from llm2_eval.loading import eos_token_ids
from llm2_eval.paths import file_identity


class ExploreInputError(ValueError):
    """A bad input line with ``--on-error fail``; the message names ``file:line`` and the reason."""


class BadExample(ValueError):
    """The current example cannot be explored (reason in the message); the run loop fails or skips it."""


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
    """Subsample response positions (docs/method.md section 4).

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
    ``The answer is N.`` (docs/method.md section 4).

    Raises:
        ValueError: no ``#### N`` (from :func:`llm2_eval.answers.gsm8k_gold`).
    """
    gold = gsm8k_gold(answer)
    body = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    body = "\n".join(line.rstrip() for line in body.splitlines())
    return (body + "\n" if body else "") + f"The answer is {gold}."



def parse_example(obj: Any, data_format: str, need_solution: bool) -> tuple[str, str, str | None, str]:
    """``(format, question, solution or None, gold answer)`` of one input object.

    Raises:
        BadExample: not an object, a missing/non-string field, or no parseable gold answer.
    """
    if not isinstance(obj, dict):
        raise BadExample(f"expected a JSON object, got {type(obj).__name__}")
    fmt = data_format
    if fmt == "auto":
        if "question" in obj:
            fmt = "gsm8k"
        elif "problem" in obj:
            fmt = "math"
        else:
            raise BadExample("missing field 'question' (GSM8K) or 'problem' (MATH)")
    keys = ("question", "answer") if fmt == "gsm8k" else ("problem",) + (("solution",) if need_solution else ())
    for k in keys:
        if not isinstance(obj.get(k), str) or not obj[k].strip():
            raise BadExample(f"missing field {k!r} ({fmt} format)")
    try:
        if fmt == "gsm8k":
            gold = gsm8k_gold(obj["answer"])
            solution = gsm8k_solution_text(obj["answer"]) if need_solution else None
            return fmt, obj["question"], solution, gold
        gold = math_gold(obj)
    except ValueError as err:
        raise BadExample(f"no parseable gold answer: {err}") from None
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


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The identity of an input file, recorded in the settings so a resume on another input is refused:
    ``{"path": resolved path, "size": bytes, "sha256": digest of the whole file}`` (all its examples, so
    ``--start``, ``--limit`` and ``--shard`` may change between runs on the same file). Hashed once per file
    version (cached by path, size and modification time); size and digest are None for a missing file."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        return _identity(str(p), -1, -1)
    return _identity(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _identity(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    return file_identity(path)


def end_token_ids(tokenizer: Any, model_config: Any = None, generation_config: Any = None) -> set[int]:
    """End-of-turn ids as a set: the tokenizer's EOS and the configs' ``eos_token_id`` (int or list)
    (:func:`llm2_eval.loading.eos_token_ids`)."""
    return set(eos_token_ids(tokenizer, generation_config, model_config))


def response_positions(
    token_ids: Sequence[int], start: int, end_ids: set[int], include_eot: bool = False
) -> list[int]:
    """Assistant-content positions: ``start`` up to (excluding) the first end-of-turn id at or after it (the
    end-of-turn position itself too with ``include_eot``)."""
    end = next((i for i in range(start, len(token_ids)) if token_ids[i] in end_ids), len(token_ids))
    return list(range(start, end + (1 if include_eot and end < len(token_ids) else 0)))

