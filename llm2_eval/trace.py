"""The stamp of an ``llm2`` trace: which run wrote it, so that ``llm2 report`` never credits one run's compute
to another (two runs that share a ``trace=`` path rewrite the same file).

A run of ``lm_eval --model llm2 --model_args ...,trace=PATH.jsonl`` draws a run id at start-up and

- writes a header as the trace's first line::

      {"llm2_trace": 1, "run_id": "3f2a...", "start_time": "2025-01-02T03:04:05+00:00",
       "model_args": {"pretrained": "...", "beta": 0.25, ...}, "tasks": ["gsm8k_llm2"], "argv": [...],
       "rank": 0, "world_size": 1}

  (``tasks`` from the command line's ``--tasks``, None when not run from lm-eval's CLI);
- puts ``"run_id"`` on every sequence line (:func:`sequence_line`);
- writes ``llm2_run_id`` and ``llm2_trace`` into the config of lm-eval's results file (the model's
  ``get_model_info``).

:func:`llm2_eval.report.runs.trace_lines_of_run` keeps the lines whose run id is the results' one.

A run resumed with lm-eval's response cache (``lm_eval ... --use_cache DB``: the requests answered before come
from the cache and never reach the model) continues the trace of the run it resumes: when the file's header has
the same model args, tasks, request options (``--gen_kwargs``, ``--limit``, ... :data:`REQUEST_OPTIONS`), rank and
world size and a cache is in use, new lines are appended under the old run id (:func:`same_settings`,
:func:`continue_trace`), so the trace covers every request of the resumed run.

:class:`TraceWriter` is the one object through which the ``llm2`` model opens, continues, writes and closes its
trace.

A trace never destroys a file llm2 did not write (:func:`check_trace_path`): an existing file that is not an llm2
trace, and a path inside the LLM, the verifier or lm-eval's cache, are refused before anything is written. The
trace is locked while written (:func:`llm2_eval.paths.lock_for_writing`): two processes never share one.
Standard library only (the report imports this module without torch).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from llm2_eval.paths import lock_for_writing, resolved, same_path

log = logging.getLogger(__name__)

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


#: lm-eval command-line options that change the requests (or their answers), with their short forms: a run
#: continues a trace only when they are the same (:func:`request_options`)
REQUEST_OPTIONS = {"--gen_kwargs": None, "--limit": "-L", "--samples": "-E", "--num_fewshot": "-f",
                   "--apply_chat_template": None, "--fewshot_as_multiturn": None, "--system_instruction": None,
                   "--include_path": None, "--seed": None, "--metadata": None}


def option_from_argv(argv: Sequence[str], name: str, short: str | None = None) -> str | bool | None:
    """The value of the option ``name`` (or its ``short`` form) on a command line: the words after it up to the
    next option, joined by spaces (``--opt=value`` too); True for a flag given without value; None when absent."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name or (short is not None and arg == short):
            words = []
            for w in argv[i + 1:]:
                if w.startswith("-") and not _is_number(w):
                    break
                words.append(w)
            return " ".join(words) if words else True
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def from_lm_eval(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is lm-eval's command line (``lm_eval``, ``python -m lm_eval``, ``llm2 eval``), whose options
    llm2 may read; another program's (a test runner's ``-o``) is not."""
    return bool(argv) and ("lm_eval" in str(argv[0]) or "lm-eval" in str(argv[0]))


def request_options(argv: Sequence[str]) -> dict[str, Any]:
    """The :data:`REQUEST_OPTIONS` given on an ``lm_eval`` command line, ``{option: value}`` (empty for another
    program's command line)."""
    if not from_lm_eval(argv):
        return {}
    found = {name: option_from_argv(argv, name, short) for name, short in REQUEST_OPTIONS.items()}
    return {k: v for k, v in found.items() if v is not None}


def cache_files_from_argv(argv: Sequence[str]) -> list[str]:
    """The response-cache databases of ``lm_eval ... --use_cache DB`` (lm-eval writes ``DB_rank{R}.db``)."""
    db = option_from_argv(argv, "--use_cache", "-c") if from_lm_eval(argv) else None
    if not isinstance(db, str) or not db:
        return []
    return sorted(set(glob.glob(glob.escape(db) + "_rank*.db")) | {db + "_rank0.db"})


def check_trace_path(path: str | Path, inputs: Mapping[str, Any]) -> None:
    """Refuse a ``trace=`` path that would destroy a file llm2 did not write, before anything is written.

    Args:
        path: the trace file.
        inputs: ``{name: path or list of paths}`` of what the trace must never be or be inside (the LLM, the
            verifier, lm-eval's cache files); None entries and objects that are not paths are ignored.

    Raises:
        ValueError: one line naming ``trace=`` and the reason: the path is (inside) one of ``inputs``, a
            directory, or an existing non-empty file whose first line is not an llm2 trace header.
    """
    p = Path(path).expanduser()
    for name, value in inputs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, os.PathLike)) or not str(v) or not Path(v).expanduser().exists():
                continue
            if same_path(p, v):
                raise ValueError(f"trace={path} is the {name} ({v}): choose a trace path outside it")
            if Path(v).expanduser().is_dir() and resolved(p).is_relative_to(resolved(v)):
                raise ValueError(f"trace={path} is inside the {name} directory ({v}): choose a trace path outside it")
    if p.is_dir():
        raise ValueError(f"trace={path}: is a directory; give the path of a trace file")
    if p.is_file() and p.stat().st_size > 0 and read_header(p) is None:
        raise ValueError(f"trace={path}: the file exists and is not an llm2 trace (its first line is no "
                         f"{HEADER_KEY} header): choose another trace path")


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def new_stamp(model_args: Mapping[str, Any], *, rank: int = 0, world_size: int = 1,
              argv: Sequence[str] | None = None) -> dict:
    """The header of a new trace: format version, a fresh run id (uuid4, 32 hex digits), the UTC start time,
    the model args (values that are not JSON scalars as strings), the tasks, the request options
    (:func:`request_options`) and command line, rank and world size."""
    argv = list(sys.argv if argv is None else argv)
    return {
        HEADER_KEY: FORMAT_VERSION,
        "run_id": uuid.uuid4().hex,
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_args": {str(k): _jsonable(v) for k, v in model_args.items()},
        "tasks": tasks_from_argv(argv),
        "requests": request_options(argv),
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
        OSError: the file cannot be created; :class:`llm2_eval.paths.FileLockedError` when another process
            writes it (the file is left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = _open_locked(path)  # before a byte changes: another process may be writing it
    f.truncate(0)
    f.write(json.dumps(dict(stamp)) + "\n")
    f.flush()
    return f


_HELD: dict[str, IO[str]] = {}  # the traces this process writes, by resolved path


def _open_locked(path: Path) -> IO[str]:
    """``path`` opened for appending under an exclusive lock. A trace this process already writes (an earlier
    ``llm2`` model object of the same Python session) is closed first: the newer run takes it over."""
    key = str(resolved(path))
    old = _HELD.pop(key, None)
    if old is not None and not old.closed:
        old.close()
    f = open(path, "a", encoding="utf-8")
    lock_for_writing(f, f"trace={path}")
    _HELD[key] = f
    return f


_SETTINGS = ("model_args", "tasks", "requests", "rank", "world_size")


def read_header(path: str | Path) -> dict | None:
    """The header (first line) of the trace at ``path``; None when there is no file or its first line is not a
    trace header."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline(1 << 20))
    except (OSError, ValueError):
        return None
    return first if isinstance(first, dict) and HEADER_KEY in first and "run_id" in first else None


def same_settings(header: Mapping[str, Any], stamp: Mapping[str, Any]) -> bool:
    """Whether an existing trace's ``header`` was written by a run with the settings of ``stamp`` (model args,
    tasks, request options, rank, world size): the condition for a resumed run to continue it."""
    return all(header.get(k) == stamp.get(k) for k in _SETTINGS)


def continue_trace(path: str | Path) -> IO[str]:
    """Open the existing trace ``path`` for appending (locked); a last line cut by a crash (no newline) is dropped
    first.

    Raises:
        OSError: the file cannot be opened; :class:`llm2_eval.paths.FileLockedError` when another process writes it.
    """
    path = Path(path)
    f = _open_locked(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)
    return f


CACHE_KEY = "llm2_model_args"  # the key under which llm2 stores its model args in lm-eval's response cache


def check_cache_args(db: Any, model_args: Mapping[str, Any]) -> str | None:
    """Compare the model args stored in lm-eval's response cache ``db`` (a ``SqliteDict``) with ``model_args``:
    a new cache gets them, a cache written with others is refused (it would answer with that configuration).

    Returns:
        A warning for a cache that holds answers but no model args (written by ``--model hf`` or an earlier
        version: not checked, left as it is), else None.

    Raises:
        ValueError: one line naming the cache and the model args that differ.
    """
    name = getattr(db, "filename", "the response cache")
    want = json.loads(json.dumps({str(k): _jsonable(v) for k, v in model_args.items()}))
    old = db[CACHE_KEY] if CACHE_KEY in db else None
    if old is None:
        if len(db):
            return (f"--use_cache {name} holds answers but no llm2 model args (another model or an earlier version): "
                    "cannot check that they come from these model args")
        db[CACHE_KEY] = want
        return None
    if old != want:
        diff = sorted(k for k in set(old) | set(want) if old.get(k) != want.get(k))
        shown = "; ".join(f"{k}: cache {old.get(k)!r}, now {want.get(k)!r}" for k in diff[:4])
        raise ValueError(f"--use_cache {name} holds the answers of other model args ({shown}): its answers are not "
                         "this configuration's; use another --use_cache path, or the same model args")
    return None



def sequence_line(run_id: str, task: str, doc_id: int, repeat: int, stats: Any, finish_reason: str,
                  seconds: float, padding: bool = False) -> dict:
    """The trace line of one generated sequence (a JSON object; non-finite floats as None).

    Args:
        run_id: the run id of the trace's header.
        task, doc_id, repeat: the request (lm-eval's task name and document id) and the copy index among its
            ``repeats``.
        stats: the sequence's counters (:class:`llm2_eval.decoding.RowStats`: steps, candidates, scored steps, flips,
            score margins, LLM and verifier token forwards).
        finish_reason: why the sequence ended (``"eos"``, ``"stop"``, ``"length"``).
        seconds: the batch's decoding time divided by its rows.
        padding: decoded, but lm-eval drops its result (data-parallel padding): ``llm2 report`` skips such a line.
    """
    st = stats
    line = {
        "run_id": run_id, "task": task, "doc_id": doc_id, "repeat": repeat,
        "steps": st.steps,
        "mean_candidates": st.candidates / st.steps if st.steps else 0.0,
        "scored_steps": st.scored_steps, "flips": st.flips,
        "mean_score_margin": st.margin_sum / st.scored_steps if st.scored_steps else 0.0,
        "llm_token_forwards": st.llm_tokens, "verifier_token_forwards": st.verifier_tokens,
        "finish_reason": finish_reason, "seconds": round(seconds, 4),
    }
    if padding:
        line["padding"] = True
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}


class TraceWriter:
    """The trace of one ``llm2`` model object, from start-up to its last line.

    Created at start-up, after the models load: the path is checked (:func:`check_trace_path`); an existing trace
    written with the same settings (:func:`same_settings`) is left pending, because whether this run resumes it is
    known only when the run starts (lm-eval attaches its response cache after building the model): :meth:`start`
    then continues it (:func:`continue_trace`) or rewrites it. Any other file is rewritten at once with ``stamp`` as
    its header (:func:`open_trace`). Each :meth:`write` appends one sequence line and flushes it.

    Args:
        path: this rank's trace file (:func:`trace_path_for_rank`).
        stamp: this run's header (:func:`new_stamp`), with the run id every rank shares.
        inputs: what the trace must never be or be inside (:func:`check_trace_path`).

    Attributes:
        stamp: the header of the trace being written: this run's, or that of the run a resumed run continues.

    Raises:
        ValueError: a refused path (:func:`check_trace_path`).
        OSError: the file cannot be created; :class:`llm2_eval.paths.FileLockedError` when another process writes it.
    """

    def __init__(self, path: str | Path, stamp: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        check_trace_path(path, inputs)
        self.path = Path(path)
        self.stamp = dict(stamp)
        old = read_header(self.path)
        self._pending = old if old is not None and same_settings(old, self.stamp) else None
        self._file = None if self._pending is not None else open_trace(self.path, self.stamp)

    def start(self, resumed: bool) -> None:
        """Settle a pending trace when the run starts: continue it under its run id when the run is ``resumed``
        (its finished requests are cached), else rewrite it with this run's header. Later calls do nothing."""
        if self._pending is None:
            return
        old, self._pending = self._pending, None
        if resumed:
            self._file, self.stamp = continue_trace(self.path), old
            log.info("llm2: continuing trace %s of run %s (a resumed run: its finished requests are cached)",
                     self.path, old["run_id"])
        else:
            self._file = open_trace(self.path, self.stamp)

    @property
    def name(self) -> str:
        """The trace file's path, as opened."""
        return self._file.name if self._file is not None else str(self.path)

    def run_info(self) -> dict[str, str]:
        """``{"llm2_run_id", "llm2_trace"}``: what lm-eval's results record, so ``llm2 report`` pairs them."""
        return {"llm2_run_id": self.stamp["run_id"], "llm2_trace": self.name}

    def write(self, task: str, doc_id: int, repeat: int, stats: Any, finish_reason: str, seconds: float,
              padding: bool = False) -> None:
        """Append the :func:`sequence_line` of one generated sequence under the trace's run id, flushed."""
        line = sequence_line(self.stamp["run_id"], task, doc_id, repeat, stats, finish_reason, seconds, padding)
        self._file.write(json.dumps(line, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (and release its lock)."""
        if self._file is not None:
            self._file.close()
