"""Reading lm-eval run directories: results files, logged samples, ``llm2`` traces, model args.

``lm_eval ... --output_path RUN_DIR --log_samples`` writes ``RUN_DIR/<model>/results_<timestamp>.json`` and
``samples_<task>_<timestamp>.jsonl``; the ``llm2`` model with ``trace=PATH.jsonl`` also writes one JSON line per
generated sequence (:mod:`llm2_eval.lm_eval_model`). JSON Lines go through the project's one reader
(:func:`llm2_eval.jsonl.iter_jsonl`); every error is a :class:`ReportError` naming the file (and the line).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llm2_eval.jsonl import iter_jsonl
from llm2_eval.trace import HEADER_KEY

_RESULTS_RE = re.compile(r"^results_(?P<ts>.+)\.json$")
_TRACE_REQUIRED = ("task", "doc_id", "llm_token_forwards", "verifier_token_forwards")
NULLS = ("", "none", "null")


class ReportError(ValueError):
    """A run directory or one of its files cannot be read (the message names the directory / file / line)."""


def read_json(path: str | Path) -> Any:
    """Parse one JSON file.

    Raises:
        ReportError: the file cannot be read or is not valid JSON (the message names the file and position).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"cannot read {path}: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"malformed JSON in {path} (line {err.lineno}, column {err.colno}): {err.msg}") from err


def read_jsonl(path: Path, parse: Callable[[dict], Any]) -> list:
    """``parse(obj)`` of every line of a JSON Lines file (:func:`llm2_eval.jsonl.iter_jsonl`).

    Raises:
        ReportError: the file cannot be read, or a line is not UTF-8, not a JSON object, or rejected by ``parse``
            (``ValueError``); the message names the file and the line (``FILE line N: reason``).
    """
    try:
        return [value for _, value in iter_jsonl(path, parse=parse, error=_bad_line)]
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err}") from err


def _bad_line(path: Path, lineno: int, reason: str) -> ReportError:
    return ReportError(f"{path} line {lineno}: {reason}")


def parse_model_args(model_args: Any) -> dict[str, str]:
    """lm-eval's ``config.model_args`` as a dict of strings.

    Accepts the CLI form ``"pretrained=DIR,verifier=VDIR,beta=0.25"``, a dict (the Python API), or None.

    Raises:
        ReportError: for any other type.
    """
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return {str(k): "" if v is None else str(v) for k, v in model_args.items()}
    if isinstance(model_args, str):
        out: dict[str, str] = {}
        for part in model_args.split(","):
            if "=" in part:
                key, value = part.split("=", 1)
                out[key.strip()] = value.strip()
        return out
    raise ReportError(f"model_args is neither a string nor a dict: {model_args!r}")


def find_results_files(run_dir: str | Path) -> list[Path]:
    """All ``results_*.json`` files of one lm-eval output directory (searched recursively), sorted.

    ``run_dir`` may also be a results file itself.

    Raises:
        ReportError: the directory does not exist or holds no results file (the message names it).
    """
    run_dir = Path(run_dir)
    if run_dir.is_file() and _RESULTS_RE.match(run_dir.name):
        return [run_dir]
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    files = sorted(p for p in run_dir.rglob("results_*.json") if p.is_file() and _RESULTS_RE.match(p.name))
    if not files:
        raise ReportError(
            f"no lm-eval results (results_*.json) found in {run_dir}: run lm_eval with --output_path {run_dir}"
        )
    return files


def results_timestamp(path: Path) -> str:
    """The ``<timestamp>`` of a ``results_<timestamp>.json`` file name ("" for another name)."""
    m = _RESULTS_RE.match(path.name)
    return m.group("ts") if m else ""


def resolve_trace(trace: str, run_dir: Path, results_dir: Path) -> Path | None:
    """The trace file a run's ``trace=`` model arg names: as given (absolute, or relative to the current
    directory, the run directory or the results directory), else its file name in either directory; None if
    none exists."""
    p = Path(trace).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, run_dir / p, results_dir / p]
    candidates += [run_dir / p.name, results_dir / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return None


def num(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass
class Sample:
    """One line of an lm-eval samples file: the document, its prompts and, per prompt, its generations; the
    filter it was scored under, its per-question metrics (``{"exact_match": 1.0}``) and lm-eval's ``doc_hash``."""

    doc_id: Any
    prompts: list[str]
    responses: list[list[str]]  # per prompt (lm-eval instance): its generations
    filter: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    doc_hash: str | None = None


_KNOWN_METRICS = ("exact_match", "maj_at_k", "pass_at_1", "acc")


def _sample(obj: dict) -> Sample:
    if "doc_id" not in obj:
        raise ValueError("no 'doc_id' (not an lm-eval samples file?)")
    args = obj.get("arguments", {})
    if isinstance(args, dict):
        args = [args[k] for k in sorted(args, key=lambda k: (len(k), k))]
    prompts = []
    for a in args:
        prompt = a.get("arg_0") if isinstance(a, dict) else (a[0] if isinstance(a, (list, tuple)) and a else a)
        prompts.append(prompt if isinstance(prompt, str) else "")
    resps = obj.get("resps", [])
    responses = [[r for r in (rs if isinstance(rs, list) else [rs]) if isinstance(r, str)] for rs in resps]
    names = obj.get("metrics") if isinstance(obj.get("metrics"), list) else _KNOWN_METRICS
    metrics = {str(m): v for m in names if isinstance(m, str) and (v := num(obj.get(m))) is not None}
    filt = obj.get("filter")
    doc_hash = obj.get("doc_hash")
    return Sample(obj["doc_id"], prompts, responses, filt if isinstance(filt, str) else None, metrics,
                  doc_hash if isinstance(doc_hash, str) else None)


def read_samples(path: Path) -> list[Sample]:
    """The documents of an lm-eval ``samples_<task>_<timestamp>.jsonl`` file.

    Raises:
        ReportError: an unreadable file or a line without ``doc_id`` (naming the file and the line).
    """
    return read_jsonl(path, _sample)


def scores_by_doc(samples: list[Sample], metric_key: str, path: Path) -> dict[str, float] | None:
    """Per-question values of a results metric (``"exact_match,none"``) from a run's logged samples.

    Only the samples scored under the key's filter (``none``) count; samples without a ``filter`` field (older
    lm-eval) all count. Keys are lm-eval's ``doc_id`` as strings.

    Returns:
        ``{doc_id: value}``, or None when no sample holds the metric.

    Raises:
        ReportError: a ``doc_id`` appears twice under one filter (naming the samples file ``path``).
    """
    name, _, filt = metric_key.partition(",")
    out: dict[str, float] = {}
    for s in samples:
        if filt and s.filter is not None and s.filter != filt:
            continue
        if name not in s.metrics:
            continue
        key = str(s.doc_id)
        if key in out:
            raise ReportError(f"{path}: doc_id {key} appears twice for filter {filt or '(none)'}")
        out[key] = s.metrics[name]
    return out or None


def _trace_line(obj: dict) -> dict:
    if HEADER_KEY in obj:
        if not isinstance(obj.get("run_id"), str) or not obj["run_id"]:
            raise ValueError("trace header has no run_id")
        return obj
    missing = [k for k in _TRACE_REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"trace line misses {missing}")
    for k in ("llm_token_forwards", "verifier_token_forwards"):
        if num(obj[k]) is None:
            raise ValueError(f"{k}={obj[k]!r} is not a number")
    return obj


@dataclass
class TraceFile:
    """An ``llm2`` trace: the stamps (header lines, :mod:`llm2_eval.trace`) of the runs that wrote it, in file
    order, and its sequence lines, each with the ``run_id`` of the run that wrote it (its own field, else that
    of the header above it; None in a trace written before traces were stamped)."""

    path: Path
    headers: list[dict]
    lines: list[dict]


def read_trace_file(path: Path) -> TraceFile:
    """Read an ``llm2`` trace (``trace=PATH.jsonl``): header lines (``{"llm2_trace": 1, "run_id": ...}``) and one
    line per sequence with ``task``, ``doc_id`` and numeric ``llm_token_forwards`` / ``verifier_token_forwards``.

    Raises:
        ReportError: an unreadable file, a header without run_id or a line missing those fields (naming the
            file and the line).
    """
    headers: list[dict] = []
    lines: list[dict] = []
    current = None
    for obj in read_jsonl(path, _trace_line):
        if HEADER_KEY in obj:
            headers.append(obj)
            current = obj["run_id"]
        else:
            obj.setdefault("run_id", current)
            lines.append(obj)
    return TraceFile(Path(path), headers, lines)


def _runs_of(trace: TraceFile) -> str:
    runs = [f"{h['run_id']} (started {h.get('start_time', '?')})" for h in trace.headers]
    return ", ".join(runs[-3:]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")


def _last_per_sequence(lines: list[dict]) -> list[dict]:
    """One line per (task, doc_id, repeat), the last one written: a run resumed with lm-eval's ``--use_cache``
    continues its trace (:mod:`llm2_eval.trace`), and a sequence decoded again after a crash must count once."""
    last = {(x.get("task"), x.get("doc_id"), x.get("repeat", 0)): x for x in lines}
    return list(last.values())


def trace_lines_of_run(trace: TraceFile, run_id: str | None) -> tuple[list[dict] | None, str | None]:
    """The lines of ``trace`` that the run with ``run_id`` (its results' ``config.llm2_run_id``) wrote.

    A run of ``lm_eval --model llm2 ... trace=PATH`` stamps its trace with a run id and writes the same id into
    its results (:mod:`llm2_eval.trace`), so a trace rewritten by a later run that shared the path is not
    mistaken for this run's. Results and trace from before stamping (neither has a run id) are used as they
    are, with a warning. A sequence traced twice (a resumed run decoded it again) counts once: its last line.

    Returns:
        ``(lines, note)``: lines None means the trace does not belong to the run (the note says why, for the
        report to warn and estimate the compute from the samples); a note with lines is a warning.
    """
    path = trace.path
    if run_id is not None:
        mine = [x for x in trace.lines if x.get("run_id") == run_id]
        if mine:
            others = len(trace.lines) - len(mine)
            mine = _last_per_sequence(mine)
            return mine, (f"trace {path}: {others} lines of other runs ignored" if others else None)
        if trace.headers:
            return None, (f"trace {path} belongs to run {_runs_of(trace)}, not to this run ({run_id}): "
                          "ignored, compute estimated from samples")
        return None, (f"trace {path} has no run stamp, so it is not this run's ({run_id}; an older llm2 or "
                      "another file?): ignored, compute estimated from samples")
    unstamped = [x for x in trace.lines if x.get("run_id") is None]
    if unstamped:
        return unstamped, (f"trace {path} and these results carry no run id (written before llm2 stamped "
                           "traces): cannot check that the trace belongs to this run")
    return None, (f"trace {path} was written by run {_runs_of(trace)}, but these results carry no run id "
                  "(an older run whose trace was rewritten?): ignored, compute estimated from samples")


def rank_trace_paths(trace: str, run_dir: Path, results_dir: Path) -> dict[int, Path]:
    """The per-rank files of a data-parallel run's ``trace=PATH`` (``STEM.rankR.SUFFIX``,
    :func:`llm2_eval.trace.trace_path_for_rank`), by rank, from the first place :func:`resolve_trace` looks that
    holds any; empty when there are none."""
    p = Path(trace).expanduser()
    dirs = [p.parent] if p.is_absolute() else [Path.cwd() / p.parent, run_dir / p.parent, results_dir / p.parent]
    pattern = re.compile(re.escape(p.stem) + r"\.rank(\d+)" + re.escape(p.suffix) + "$")
    for d in dirs + [run_dir, results_dir]:
        if not d.is_dir():
            continue
        found = {int(m.group(1)): f for f in d.iterdir() if (m := pattern.match(f.name)) and f.is_file()}
        if found:
            return dict(sorted(found.items()))
    return {}


def rank_trace_lines(traces: dict[int, TraceFile], run_id: str | None) -> tuple[list[dict] | None, str | None]:
    """The lines that the data-parallel run ``run_id`` wrote into its per-rank traces, all ranks together.

    Every rank stamps its file with its rank, the world size and the run id of rank 0 (the id in the results).
    Each file keeps the lines of that run (a sequence traced twice counts once, its last line); lines marked
    ``"padding": true`` (requests lm-eval sent again to even out the ranks; their results are dropped) are left
    out.

    Args:
        traces: ``{rank: TraceFile}`` (:func:`rank_trace_paths`, :func:`read_trace_file`).
        run_id: the results' ``config.llm2_run_id``.

    Returns:
        ``(lines, note)`` as :func:`trace_lines_of_run`: lines None when the results carry no run id, or when a
        rank of the run has no trace of it (a dropped rank file would undercount the compute): the note names the
        missing ranks, and the report estimates the compute from the samples.
    """
    if not traces:
        return None, "no per-rank trace found"
    first = next(iter(traces.values())).path
    pattern = first.name.replace(f".rank{next(iter(traces))}", ".rank*")
    if run_id is None:
        return None, (f"per-rank traces {first.parent / pattern}: these results carry no run id, so the traces "
                      "cannot be matched with them: ignored, compute estimated from samples")
    stamps = {r: [h for h in tf.headers if h.get("run_id") == run_id] for r, tf in traces.items()}
    worlds = {int(h.get("world_size") or 1) for hs in stamps.values() for h in hs}
    world = max(worlds) if worlds else len(traces)
    mine = {r for r, hs in stamps.items() if hs and all(int(h.get("rank", r)) == r for h in hs)}
    missing = sorted(set(range(world)) - mine)
    if missing:
        names = ", ".join(first.name.replace(f".rank{next(iter(traces))}", f".rank{r}") for r in missing[:4])
        return None, (f"per-rank traces {first.parent / pattern} of run {run_id}: rank(s) {missing[:8]} of {world} "
                      f"missing or of another run ({names}): ignored, compute estimated from samples")
    lines: list[dict] = []
    for r in range(world):
        own = [x for x in traces[r].lines if x.get("run_id") == run_id]
        lines += _last_per_sequence([x for x in own if not x.get("padding")])
    others = sum(len(tf.lines) for tf in traces.values()) - sum(
        len([x for x in traces[r].lines if x.get("run_id") == run_id]) for r in range(world))
    note = f"per-rank traces {first.parent / pattern}: {others} lines of other runs ignored" if others else None
    return lines, note

