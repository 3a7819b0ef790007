"""The verifier-training data format (docs/method.md section 5): read, validate, and write it resumably.

One JSON object per line, one solution per object::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}],
     "samples": [[pos, gold_id, neg_id], ...], ...extra keys...}

``pos`` indexes the token list that the LLM's chat template produces for ``messages`` (no generation prompt), and
``input_ids[pos] == gold_id`` must hold. Extra keys (example id, qualities, settings) are allowed and ignored by
readers. The same format is written by ``llm2 explore`` and read by ``llm2 train-verifier``; the authors' released
files use the same keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from llm2_eval.jsonl import JsonlError, OnError, iter_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


class RecordError(JsonlError):
    """A line of a JSON Lines file is not a valid record; the message names the file and the line
    (``file:line: reason``, see :class:`llm2_eval.jsonl.JsonlError`)."""


@dataclass
class Record:
    """One solution with its (position, gold token, negative token) triplets.

    Attributes:
        messages: chat messages (at least a user and a final assistant message).
        samples: ``[pos, gold_id, neg_id]`` triplets, positions into the chat-template token list.
        line: 1-based line number in the source file.
        extra: every other key of the JSON object.
    """

    messages: list[dict[str, str]]
    samples: list[tuple[int, int, int]]
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadStats:
    """Counts of one pass over a file: records read and lines skipped (with their reasons)."""

    records: int = 0
    skipped: list[str] = field(default_factory=list)


def _parse(obj: dict) -> tuple[dict, list[dict[str, str]], list[tuple[int, int, int]]]:
    """``(obj, messages, samples)`` of one JSON object; a ``ValueError`` names what is wrong."""
    for key in ("messages", "samples"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
    messages = obj["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("field 'messages' must be a list of at least two chat messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must have role 'assistant' (the solution)")
    samples = obj["samples"]
    if not isinstance(samples, list):
        raise ValueError("field 'samples' must be a list of [pos, gold_id, neg_id] triplets")
    out = []
    for i, s in enumerate(samples):
        if (
            not isinstance(s, (list, tuple))
            or len(s) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in s)
        ):
            raise ValueError(f"samples[{i}] = {s!r} is not a triplet of non-negative integers [pos, gold_id, neg_id]")
        out.append((s[0], s[1], s[2]))
    return obj, messages, out


def iter_records(
    path: str | os.PathLike, *, on_error: OnError = "fail", stats: ReadStats | None = None
) -> Iterator[Record]:
    """Read records from a JSON Lines file, checking their structure (not yet their tokens).

    Args:
        path: the file.
        on_error: ``"fail"`` raises at the first bad line; ``"skip"`` skips it and notes why in ``stats``.
        stats: optional :class:`ReadStats` filled while reading.

    Yields:
        :class:`Record` objects in file order (blank lines are ignored).

    Raises:
        FileNotFoundError: when the file does not exist.
        RecordError: (``on_error="fail"``) a line that is not JSON, lacks ``messages``/``samples``, or holds a
            malformed triplet; the message names the file and line.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    skipped = stats.skipped if stats is not None else None
    for lineno, (obj, messages, samples) in iter_jsonl(p, parse=_parse, on_error=on_error, skipped=skipped,
                                                       error=RecordError):
        extra = {k: v for k, v in obj.items() if k not in ("messages", "samples")}
        if stats is not None:
            stats.records += 1
        yield Record(messages=messages, samples=samples, line=lineno, extra=extra)


def chat_token_ids(tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template (no generation prompt unless asked).

    This is the token list that ``pos`` of a triplet indexes (docs/method.md section 5).
    """
    kwargs.setdefault("add_generation_prompt", False)
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    if isinstance(out, dict) or hasattr(out, "input_ids"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    return [int(t) for t in out]


def response_start(tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, str]]) -> int:
    """Index of the first token of the final assistant message in :func:`chat_token_ids` (the response start).

    Raises:
        ValueError: when the template's prompt part is not a prefix of the full token list.
    """
    full = chat_token_ids(tokenizer, messages)
    prompt = chat_token_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template's prompt tokens are not a prefix of the full conversation's tokens")
    return len(prompt)


def check_outcome_record(obj: dict) -> dict:
    """``obj`` if it is an outcome record (``llm2 explore --strategy outcome``, docs/method.md section 5): a non-empty
    ``messages`` list (the prompt) and a list ``outcomes`` of ``{"response": str, "correct": 0 or 1, ...}``.

    Raises:
        ValueError: what is wrong, worded for ``iter_jsonl(parse=...)`` (which adds the file and line).
    """
    outcomes = obj.get("outcomes")
    if not isinstance(outcomes, list):
        raise ValueError("not an outcome record: no list 'outcomes' (made by llm2 explore --strategy outcome?)")
    if not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise ValueError("field 'messages' must be a non-empty list of chat messages (the prompt)")
    for i, o in enumerate(outcomes):
        if not isinstance(o, dict) or not isinstance(o.get("response"), str) or o.get("correct") not in (0, 1):
            raise ValueError(f"outcomes[{i}] must be an object with a string 'response' and 'correct' 0 or 1")
    return obj


def check_samples(
    input_ids: list[int], samples: list[tuple[int, int, int]], vocab_size: int
) -> str | None:
    """Validate triplets against a tokenised solution; returns the first problem as text, or None if all good.

    Checks: ``0 <= pos < len(input_ids)``, ``input_ids[pos] == gold_id``, both ids inside the vocabulary, and
    ``neg_id != gold_id``.
    """
    n = len(input_ids)
    for i, (pos, gold, neg) in enumerate(samples):
        if pos >= n:
            return f"samples[{i}]: pos {pos} is outside the {n}-token sequence"
        if gold >= vocab_size or neg >= vocab_size:
            return f"samples[{i}]: token id {max(gold, neg)} is outside the vocabulary (size {vocab_size})"
        if input_ids[pos] != gold:
            return f"samples[{i}]: input_ids[{pos}] is {input_ids[pos]}, not gold_id {gold}"
        if neg == gold:
            return f"samples[{i}]: the negative token equals the gold token ({gold})"
    return None


def use_chat_template(tokenizer: "PreTrainedTokenizerBase", path: str | os.PathLike | None) -> dict | None:
    """Make ``tokenizer`` tokenise chats with the Jinja template in the file ``path`` (None: keep its own).

    Positions in the data (docs/method.md section 5) index the tokens of ONE chat template; data made with another
    template than the tokenizer's (e.g. the authors' Llama template, which has no default system block, read with a
    stock Llama-3.1/3.2-Instruct tokenizer, which adds one) needs that template back.

    Returns:
        ``{"path": str, "sha256": hex}`` to record in settings and training cards, or None for the tokenizer's own.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is empty.
    """
    if not path:
        return None
    import hashlib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--chat-template {path}: no such file (give a Jinja chat template file)")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"--chat-template {path}: the file is empty")
    tokenizer.chat_template = text
    return {"path": str(path), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def check_chat_template(tokenizer: "PreTrainedTokenizerBase", name: str) -> None:
    """Refuse a chat template that cannot render a user + assistant chat, or gives the assistant message no token
    after the prompt (one that ignores the messages: every example would be explored with 0 positions, every
    triplet would miss its token). ``name`` names the template in the message.

    Raises:
        ValueError: one line naming the template.
    """
    msgs = [{"role": "user", "content": "how many apples?"}, {"role": "assistant", "content": "3 + 4 = 7 apples"}]
    try:
        full = chat_token_ids(tokenizer, msgs)
        prompt = chat_token_ids(tokenizer, msgs[:1], add_generation_prompt=True)
    except Exception as err:  # noqa: BLE001 - a template that cannot render a chat at all
        detail = (str(err).splitlines() or [""])[0]
        raise ValueError(f"{name} cannot render a chat ({type(err).__name__}: {detail}); give a Jinja chat template "
                         "that renders user and assistant messages") from None
    if len(full) <= len(prompt):
        raise ValueError(f"{name} renders an assistant message as no token after the prompt (does it ignore the "
                         "messages?): no solution token could be explored or trained on")


def position_shift(input_ids: list[int], samples: list[tuple[int, int, int]], max_shift: int = 64) -> int | None:
    """The offset ``d`` (``0 < |d| <= max_shift``) for which every ``input_ids[pos + d] == gold_id``, if one exists:
    the sign of data tokenised with another chat template (a system block of ``d`` tokens more or less)."""
    if not samples:
        return None
    n = len(input_ids)
    for d in sorted(range(-max_shift, max_shift + 1), key=abs):
        if d and all(0 <= pos + d < n and input_ids[pos + d] == gold for pos, gold, _ in samples):
            return d
    return None


class JsonlAppender:
    """Append-only JSON Lines writer that makes long jobs resumable.

    On open it repairs the end of a file that a crash cut mid-write: a last line without its newline is kept (the
    newline added) when it holds a complete JSON object, and cut off otherwise (an invalid fragment; its size is
    :attr:`dropped_bytes`). It collects the value of ``key`` of every complete line so callers can skip finished
    work. Each :meth:`write` appends one line, flushes and fsyncs, so a killed run loses at most the item in
    progress. The file is locked (``flock``) from before the repair until :meth:`close`: a second writer is
    refused (:class:`llm2_eval.paths.FileLockedError`) and the file left as it was.

    Args:
        path: output file (created with its parent directory if missing).
        key: the field that identifies an item (e.g. ``"id"``); lines without it are kept but not indexed.
        name: how the file is named in a refusal (default: its path).

    Attributes:
        dropped_bytes: bytes of an invalid last-line fragment cut on open (0 when none).
        completed_last_line: whether a valid last line without newline was kept (its newline added) on open.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id", name: str | None = None):
        from llm2_eval.paths import lock_for_writing

        self.path = Path(path)
        self.key = key
        self.done: set[Any] = set()
        self.dropped_bytes = 0
        self.completed_last_line = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self._f = self.path.open("a", encoding="utf-8")
        lock_for_writing(self._f, name or str(self.path))  # before the repair: another process may be writing it
        if existed:
            self._repair_and_index()

    def _repair_and_index(self) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            if _is_json_object(data[cut:]):  # complete, only its newline is missing
                with self.path.open("ab") as f:
                    f.write(b"\n")
                self.completed_last_line = True
            else:
                self.dropped_bytes = len(data) - cut
                with self.path.open("r+b") as f:
                    f.truncate(cut)
        for _, obj in iter_jsonl(self.path, on_error="skip"):  # a line that is no JSON object is kept, unindexed
            if self.key in obj:
                self.done.add(_hashable(obj[self.key]))

    def __contains__(self, item_key: Any) -> bool:
        return _hashable(item_key) in self.done

    def write(self, obj: dict[str, Any]) -> None:
        """Append ``obj`` as one line, flushed and fsynced."""
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        if self.key in obj:
            self.done.add(_hashable(obj[self.key]))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError):
        return False


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
