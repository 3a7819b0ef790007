"""Reading JSON Lines files: the one reader behind the training records, the lm-eval task data and the report.

Every reader of the project goes through :func:`iter_jsonl`, so a bad line is found and named the same way
everywhere: by its file and 1-based line number. Blank lines are skipped; every other line must hold one JSON
object. A caller adds its own checks as a ``parse`` function (a ``ValueError`` it raises becomes a bad line too)
and chooses what a bad line does: raise (``on_error="fail"``) or be skipped and listed (``on_error="skip"``).

Standard library only: ``llm2_eval`` stays import-light, and ``tasks/utils.py`` (loaded by lm-eval from its file
path) and ``verifier_train`` import this module too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Literal

OnError = Literal["fail", "skip"]


class JsonlError(ValueError):
    """A line of a JSON Lines file that cannot be used; the message is ``file:line: reason``.

    Attributes:
        path: the file, as given.
        line: 1-based line number.
        reason: what is wrong with the line.
    """

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path, self.line, self.reason = str(path), int(line), reason
        super().__init__(f"{path}:{line}: {reason}")


def iter_jsonl(
    path: str | os.PathLike,
    *,
    parse: Callable[[dict], Any] | None = None,
    on_error: OnError = "fail",
    skipped: list[str] | None = None,
    error: Callable[[str | os.PathLike, int, str], Exception] = JsonlError,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for every non-blank line of a JSON Lines file, in file order.

    A line is bad when it is not UTF-8 text, not valid JSON, not a JSON object, or when ``parse`` rejects it.

    Args:
        path: the file.
        parse: optional ``parse(obj) -> value`` applied to each object (the value is yielded instead of the
            object); it raises ``ValueError(reason)`` for an object it cannot use.
        on_error: ``"fail"``: raise ``error(path, line, reason)`` at the first bad line; ``"skip"``: go on,
            appending ``"file:line: reason"`` to ``skipped`` (when given).
        skipped: list that collects the skipped lines.
        error: builds the exception for ``on_error="fail"`` from ``(path, line, reason)`` (default
            :class:`JsonlError`, worded ``file:line: reason``; callers with their own error type pass theirs).

    Raises:
        OSError: the file cannot be opened (``FileNotFoundError`` when it does not exist).
        Exception: ``error(path, line, reason)`` for a bad line with ``on_error="fail"``.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}: use 'fail' or 'skip'")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                value = _parse_line(raw, parse)
            except ValueError as err:
                if on_error == "fail":
                    raise error(path, lineno, str(err)) from None
                if skipped is not None:
                    skipped.append(f"{path}:{lineno}: {err}")
                continue
            yield lineno, value


def _parse_line(raw: bytes, parse: Callable[[dict], Any] | None) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return parse(obj) if parse is not None else obj
