"""Training data: triplet files (docs/method.md section 5) read, validated against their tokens, packed and split.

Every triplet is checked against the chat-template tokens of its solution; all negatives of a solution are packed
into one sequence (:func:`verifier_train.packing.pack_solution`); a deterministic share of the questions (with all
their solutions) is held out for evaluation (:func:`split_groups`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from llm2_eval.paths import file_identity, same_path
from verifier_train.packing import PackedExample, pack_solution
from verifier_train.records import (
    ReadStats,
    RecordError,
    chat_token_ids,
    check_samples,
    iter_records,
    position_shift,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


@dataclass
class FileStats:
    """What reading one data file gave.

    Attributes:
        path: the file.
        records: records read and validated (skipped ones excluded).
        skipped: ``"file:line: reason"`` for every skipped record (``on_error="skip"``).
        pairs: triplets in the valid records.
        kept_pairs: pairs that fit the ``max_length`` budget.
        dropped_pairs: pairs dropped by truncation (``pairs - kept_pairs``).
        empty_records: valid records left without any pair (no triplets, or all truncated); not trained on.
        duplicates: valid records with the same messages and samples as an earlier one (of any file); trained on
            again, with a warning (e.g. two processes that appended to one output).
    """

    path: str
    records: int = 0
    skipped: list[str] = field(default_factory=list)
    pairs: int = 0
    kept_pairs: int = 0
    dropped_pairs: int = 0
    empty_records: int = 0
    duplicates: int = 0

    def summary(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["skipped_records"] = len(self.skipped)
        out["skipped"] = self.skipped[:20]
        return out


@dataclass
class PairData:
    """Packed solutions split into training and held-out sets.

    Attributes:
        train: packed solutions to train on.
        eval: held-out packed solutions (empty when ``eval_fraction == 0``).
        files: per-file statistics.
        warnings: what the caller should show: a data file given twice, records that repeat earlier ones.
    """

    train: list[PackedExample]
    eval: list[PackedExample]
    files: list[FileStats]
    warnings: list[str] = field(default_factory=list)

    @property
    def train_pairs(self) -> int:
        return sum(e.num_pairs for e in self.train)

    @property
    def eval_pairs(self) -> int:
        return sum(e.num_pairs for e in self.eval)


def load_pair_data(
    paths: Sequence[str | os.PathLike],
    tokenizer: "PreTrainedTokenizerBase",
    *,
    vocab_size: int | None = None,
    max_length: int | None = 2048,
    on_error: str = "fail",
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> PairData:
    """Read, validate, pack and split triplet files (docs/method.md sections 5-6).

    Every triplet is checked against the chat-template tokens of its record
    (:func:`verifier_train.records.chat_token_ids`): ``pos`` inside the sequence, ``input_ids[pos] == gold_id``,
    ids inside the vocabulary, ``neg_id != gold_id``. The held-out split is by question, deterministic in ``seed``:
    records with the same prompt (every message before the last) are held out together, so no question has pairs on
    both sides (``llm2 divergence-pairs`` writes one record per right sample of a question).

    Args:
        paths: JSON Lines files.
        tokenizer: the LLM's tokenizer (its chat template defines what ``pos`` indexes).
        vocab_size: upper bound for token ids (the model's embedding rows); default ``len(tokenizer)``.
        max_length: packed-length budget (see :func:`verifier_train.packing.pack_solution`).
        on_error: ``"fail"`` raises at the first bad record; ``"skip"`` counts it in :attr:`FileStats.skipped`.
        eval_fraction: fraction of the questions (distinct prompts) of the non-empty records held out (at least one
            when > 0 and there are >= 2).
        seed: seed of the split.

    Returns:
        :class:`PairData`.

    Raises:
        FileNotFoundError: a missing file.
        RecordError: (``on_error="fail"``) a malformed record or a triplet that does not match its tokens; the
            message names the file and line.
        ValueError: no trainable pair at all in the files.
    """
    limit = int(vocab_size) if vocab_size else len(tokenizer)
    packed: list[PackedExample] = []
    files: list[FileStats] = []
    warnings = _repeated_files(paths)
    seen: set[bytes] = set()
    groups: list[str] = []
    for path in paths:
        fs = FileStats(path=str(path))
        packed += _read_file(path, tokenizer, limit, max_length, on_error, fs, seen, groups)
        files.append(fs)
    warnings += [
        f"--data {f.path}: {f.duplicates} of its {f.records} records repeat an earlier record (same messages and "
        "samples) and are trained on again (two writers on one output?)" for f in files if f.duplicates]
    if not packed:
        detail = "; ".join(
            f"{f.path}: {f.records} valid records, {len(f.skipped)} skipped"
            + (f", all {f.dropped_pairs} pairs of {f.empty_records} records dropped by --max-length {max_length}"
               if f.dropped_pairs and f.kept_pairs == 0 else "")
            for f in files)
        raise ValueError(f"no trainable pair in the data ({detail})")
    train, held_out = _split(packed, groups, eval_fraction, seed)
    return PairData(train=train, eval=held_out, files=files, warnings=warnings)


def _record_problem(ids: list[int], samples: list, limit: int) -> str | None:
    """What is wrong with a record's triplets against its tokens ``ids`` (:func:`check_samples`), None when
    nothing; when every triplet matches a fixed number of tokens away, the message names the chat template."""
    problem = check_samples(ids, samples, limit)
    misplaced = problem is not None and any(p >= len(ids) or ids[p] != g for p, g, _ in samples)
    shift = position_shift(ids, samples) if misplaced else None  # not for an out-of-vocabulary id
    if shift is not None:
        problem += (
            f" (every triplet matches {abs(shift)} tokens {'later' if shift > 0 else 'earlier'}: the data "
            "was tokenised with another chat template; pass that template with --chat-template FILE)"
        )
    return problem


def _read_file(path: str | os.PathLike, tokenizer: "PreTrainedTokenizerBase", limit: int, max_length: int | None,
               on_error: str, fs: FileStats, seen: set[bytes], groups: list[str]) -> list[PackedExample]:
    """The packed solutions of one data file with at least one pair, validated record by record; counts go to
    ``fs``, each record's key (messages and samples) to ``seen`` (repeats of earlier records are counted), and the
    question of each returned solution (:func:`question_key`) to ``groups``.

    Raises:
        RecordError: (``on_error="fail"``) the first bad record, naming the file and line.
    """
    packed: list[PackedExample] = []
    rs = ReadStats()
    for rec in iter_records(path, on_error=on_error, stats=rs):  # type: ignore[arg-type]
        try:
            ids = chat_token_ids(tokenizer, rec.messages)
            problem = _record_problem(ids, rec.samples, limit)
        except Exception as err:  # a chat template that rejects the messages
            problem = f"cannot apply the chat template: {err}"
        if problem is not None:
            if on_error == "skip":
                rs.skipped.append(f"{path}:{rec.line}: {problem}")
                continue
            raise RecordError(path, rec.line, problem)
        fs.records += 1
        fs.pairs += len(rec.samples)
        key = hashlib.sha256(json.dumps([rec.messages, rec.samples], sort_keys=True).encode()).digest()
        fs.duplicates += key in seen
        seen.add(key)
        ex = pack_solution(ids, rec.samples, max_length)
        fs.kept_pairs += ex.num_pairs
        fs.dropped_pairs += ex.dropped_pairs
        if ex.num_pairs == 0:
            fs.empty_records += 1
            continue
        packed.append(ex)
        groups.append(question_key(rec.messages))
    fs.skipped = list(rs.skipped)
    return packed


def question_key(messages: Sequence[dict[str, Any]]) -> str:
    """The question of a record: a hash of its prompt, every message before the last (the solution)."""
    return hashlib.sha256(json.dumps(list(messages[:-1]), sort_keys=True).encode()).hexdigest()


def split_groups(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The held-out groups (questions) of every training objective: a seeded share ``fraction`` of the distinct
    ``groups``, at least one when ``fraction > 0`` and there are two or more, never all."""
    uniq = sorted(set(groups))
    if fraction <= 0 or len(uniq) < 2:
        return set()
    random.Random(seed).shuffle(uniq)
    return set(uniq[: min(max(1, round(fraction * len(uniq))), len(uniq) - 1)])


def _split(packed: list[PackedExample], groups: Sequence[str], eval_fraction: float,
           seed: int) -> tuple[list[PackedExample], list[PackedExample]]:
    """``(train, held out)``: the solutions of the questions :func:`split_groups` holds out go to the held-out side."""
    held = split_groups(groups, eval_fraction, seed)
    train = [e for e, g in zip(packed, groups) if g not in held]
    held_out = [e for e, g in zip(packed, groups) if g in held]
    return train, held_out


def _repeated_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A warning for each data file given again (the same file, or the same content under another name): its
    records would count twice."""
    out, ids = [], [file_identity(p) for p in paths]
    for i, p in enumerate(paths):
        for j in range(i):
            same = same_path(p, paths[j]) or (ids[i]["sha256"] is not None and ids[i]["sha256"] == ids[j]["sha256"])
            if same:
                out.append(f"--data {p} is given twice (also as {paths[j]}): its records are trained on twice")
                break
    return out


class PackedDataset(torch.utils.data.Dataset):
    """A list of :class:`PackedExample` as a map-style dataset (the collator makes tensors)."""

    def __init__(self, examples: Sequence[PackedExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> PackedExample:
        return self.examples[i]
