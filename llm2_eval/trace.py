"""The stamp of an ``llm2`` trace: which run wrote it, so that ``llm2 report`` never credits one run's compute
to another (two runs that share a ``trace=`` path rewrite the same file).

A run of ``lm_eval --model llm2 --model_args ...,trace=PATH.jsonl`` draws a run id at start-up and

- writes a header as the trace's first line::

      {"llm2_trace": 1, "run_id": "3f2a...", "start_time": "2025-01-02T03:04:05+00:00",
       "model_args": {"pretrained": "...", "beta": 0.25, ...}, "tasks": ["gsm8k_llm2"], "argv": [...],
       "rank": 0, "world_size": 1}

  (``tasks`` from the command line's ``--tasks``, None when not run from lm-eval's CLI);
- puts ``"run_id"`` on every sequence line;
- writes ``llm2_run_id`` and ``llm2_trace`` into the config of lm-eval's results file (the model's
  ``get_model_info``).

:func:`llm2_eval.report.runs.trace_lines_of_run` keeps the lines whose run id is the results' one.

A run resumed with lm-eval's response cache (``lm_eval ... --use_cache DB``: the requests answered before come
from the cache and never reach the model) continues the trace of the run it resumes: when the file's header has
the same model args, tasks, rank and world size and a cache is in use, new lines are appended under the old run
id (:func:`same_settings`, :func:`continue_trace`), so the trace covers every request of the resumed run.
Standard library only (the report imports this module without torch).
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

HEADER_KEY = "llm2_trace"  # its value is the trace format version
FORMAT_VERSION = 1


def tasks_from_argv(argv: Sequence[str]) -> list[str] | None:
    """The task names of an ``lm_eval ... --tasks a,b`` command line (``--tasks=a,b`` too), None without one."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--tasks" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--tasks="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return [t.strip() for t in value.split(",") if t.strip()]
    return None


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def new_stamp(model_args: Mapping[str, Any], *, rank: int = 0, world_size: int = 1,
              argv: Sequence[str] | None = None) -> dict:
    """The header of a new trace: format version, a fresh run id (uuid4, 32 hex digits), the UTC start time,
    the model args (values that are not JSON scalars as strings), the tasks and command line, rank and world
    size."""
    argv = list(sys.argv if argv is None else argv)
    return {
        HEADER_KEY: FORMAT_VERSION,
        "run_id": uuid.uuid4().hex,
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_args": {str(k): _jsonable(v) for k, v in model_args.items()},
        "tasks": tasks_from_argv(argv),
        "argv": [str(a) for a in argv],
        "rank": int(rank),
        "world_size": int(world_size),
    }


def trace_path_for_rank(path: str | Path, rank: int, world_size: int) -> Path:
    """The file of one data-parallel rank: ``PATH`` with one process, ``STEM.rankR.SUFFIX`` with several."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}") if world_size > 1 else path


def open_trace(path: str | Path, stamp: Mapping[str, Any]) -> IO[str]:
    """Create (or rewrite) the trace file ``path`` (and its parent directories), write ``stamp`` as its first
    line and return the open file (text, UTF-8, line-buffered by the caller's flushes).

    Raises:
        OSError: the file cannot be created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", encoding="utf-8")
    f.write(json.dumps(dict(stamp)) + "\n")
    f.flush()
    return f


_SETTINGS = ("model_args", "tasks", "rank", "world_size")


def read_header(path: str | Path) -> dict | None:
    """The header (first line) of the trace at ``path``; None when there is no file or its first line is not a
    trace header."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return first if isinstance(first, dict) and HEADER_KEY in first and "run_id" in first else None


def same_settings(header: Mapping[str, Any], stamp: Mapping[str, Any]) -> bool:
    """Whether an existing trace's ``header`` was written by a run with the settings of ``stamp`` (model args,
    tasks, rank, world size): the condition for a resumed run to continue it."""
    return all(header.get(k) == stamp.get(k) for k in _SETTINGS)


def continue_trace(path: str | Path) -> IO[str]:
    """Open the existing trace ``path`` for appending; a last line cut by a crash (no newline) is dropped first.

    Raises:
        OSError: the file cannot be opened.
    """
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")
