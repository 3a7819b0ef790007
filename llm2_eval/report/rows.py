"""Reading runs into report rows (:class:`~llm2_eval.report.row.ReportRow`), one per (run, task).

The method comes from the run's model args and the task's config (:func:`classify_method`); compute from the
run's ``llm2`` trace when there is one, else estimated from its logged samples (:mod:`llm2_eval.report.compute`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from llm2_eval.report.compute import Compute, TokenCounter, compute_from_trace, estimate_from_samples
from llm2_eval.report.row import ReportRow
from llm2_eval.report.runs import (
    NULLS,
    ReportError,
    Sample,
    TraceFile,
    find_results_files,
    num,
    parse_model_args,
    rank_trace_lines,
    rank_trace_paths,
    read_json,
    read_samples,
    read_trace_file,
    resolve_trace,
    results_timestamp,
    scores_by_doc,
    trace_lines_of_run,
)

def task_family(task: str) -> str:
    """The benchmark a task belongs to (one plot panel each): ``gsm8k``, ``math500``, ``math`` or the task's
    first ``_``-separated word."""
    name = task.lower()
    for family in ("gsm8k", "math500", "math"):
        if family in name:
            return family
    return name.split("_")[0]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value)


def uses_verifier(model: str | None, model_args: dict[str, str]) -> bool:
    """Whether a run decoded with a verifier: ``--model llm2`` with a ``verifier=`` and ``beta`` > 0
    (``beta`` defaults to 0.25, as in :class:`llm2_eval.lm_eval_model.LLM2LM`)."""
    if (model or "").lower() != "llm2":
        return False
    verifier = model_args.get("verifier")
    if verifier is None or verifier.strip().lower() in NULLS:
        return False
    try:
        beta = float(model_args.get("beta", 0.25))
    except ValueError:
        return True  # unparsable: the run itself would have failed; assume the verifier was on
    return beta > 0


def classify_method(verifier: bool, repeats: int, do_sample: bool) -> tuple[str, str]:
    """``(method, label)`` of a run: method is one of :data:`~llm2_eval.report.row.METHODS`, label puts k into
    it (``maj@8``).

    ``repeats`` > 1 is self-consistency (maj@k); k = 1 is greedy unless the task sampled (``sample``).
    """
    if repeats > 1:
        method = "LLM2+maj@k" if verifier else "maj@k"
        return method, method.replace("@k", f"@{repeats}")
    if do_sample:
        method = "LLM2+sample" if verifier else "sample"
    else:
        method = "LLM2" if verifier else "greedy"
    return method, method


def _do_sample(gen_kwargs: dict) -> bool:
    value = gen_kwargs.get("do_sample")
    if value is None:
        try:
            return float(gen_kwargs.get("temperature") or 0.0) > 0
        except (TypeError, ValueError):
            return False
    return _truthy(value)


def _metric(task_results: dict, name: str) -> tuple[float | None, float | None, str | None]:
    """``(value, stderr, key)`` of a metric, preferring the ``none`` filter."""
    keys = [k for k in task_results if k.split(",")[0] == name]
    if not keys:
        return None, None, None
    key = f"{name},none" if f"{name},none" in keys else sorted(keys)[0]
    filt = key.split(",", 1)[1] if "," in key else ""
    stderr = task_results.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
    value = task_results.get(key)
    return num(value), num(stderr), key


class _Reader:
    """Reads run directories into :class:`ReportRow` s, caching traces and tokenizers across runs."""

    def __init__(self, tokenizer: str | None = None) -> None:
        self.counter = TokenCounter(tokenizer)
        self._traces: dict[Path, TraceFile] = {}

    def trace(self, path: Path) -> TraceFile:
        key = path.resolve()
        if key not in self._traces:
            self._traces[key] = read_trace_file(path)
        return self._traces[key]

    def rows_of_results(self, run: str, run_dir: Path, path: Path) -> list[ReportRow]:
        """The rows of one lm-eval results file (one per task that is not a group).

        Raises:
            ReportError: the file is not an lm-eval results file, or one of its files is unreadable.
        """
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise ReportError(f"{path} is not an lm-eval results file (no 'results' object)")
        run_info = _RunInfo.of(data, run, path)
        trace = self.trace_of_run(run_info, run_dir, path) if run_info.traced else _RunTrace()
        groups = {g for g, subs in (data.get("group_subtasks") or {}).items() if subs}
        tasks = [t for t in data["results"] if t not in groups]
        return [self.row_of_task(run_info, task, data, len(tasks), trace) for task in tasks]

    def trace_of_run(self, run: "_RunInfo", run_dir: Path, path: Path) -> "_RunTrace":
        """The trace lines this run wrote (llm2_eval.trace stamps them with its run id), from its ``trace=`` file
        or, for a data-parallel run, merged from one file per rank; with a note when none is found."""
        spec = run.model_args["trace"]
        trace_path = resolve_trace(spec, run_dir, path.parent)
        lines, note = None, None
        if trace_path is not None:
            lines, note = trace_lines_of_run(self.trace(trace_path), run.run_id)
        ranks = rank_trace_paths(spec, run_dir, path.parent) if lines is None else {}
        if ranks:  # a data-parallel run: one trace per rank, merged
            lines, note = rank_trace_lines({r: self.trace(p) for r, p in ranks.items()}, run.run_id)
            first = next(iter(ranks.values()))
            trace_path = first.with_name(first.name.replace(f".rank{next(iter(ranks))}", ".rank*"))
        elif trace_path is None:
            note = f"trace {spec} not found: compute estimated from samples"
        return _RunTrace(trace_path, lines, note)

    def row_of_task(self, run: "_RunInfo", task: str, data: dict, n_tasks: int, trace: "_RunTrace") -> ReportRow:
        """The row of one task of a results file: method, accuracy (and per question from the logged samples),
        compute from the trace or the samples, and notes."""
        res = data["results"][task] or {}
        tcfg = (data.get("configs") or {}).get(task) or {}
        try:
            k = max(1, int(tcfg.get("repeats") or 1))
        except (TypeError, ValueError):
            k = 1
        method, label = classify_method(run.verifier, k, _do_sample(tcfg.get("generation_kwargs") or {}))
        acc, acc_se, acc_key = _accuracy(res)
        pass1 = _metric(res, "pass_at_1")[0]
        samples_path = run.path.parent / f"samples_{task}_{run.timestamp}.jsonl"
        samples = read_samples(samples_path) if samples_path.is_file() else None
        n_q = len({str(s.doc_id) for s in samples}) if samples is not None else _effective(data, task)
        compute = self.compute_of(run, task, k, n_q, trace, samples)
        row = ReportRow(
            run=run.name, task=task, family=task_family(task), model=run.model, method=method, label=label, k=k,
            n_questions=n_q if n_q is not None else compute.questions, accuracy=acc, accuracy_metric=acc_key,
            accuracy_stderr=acc_se, pass_at_1=pass1, llm_token_forwards=compute.llm_token_forwards,
            verifier_token_forwards=compute.verifier_token_forwards, compute_source=compute.source,
            estimated=compute.estimated, wall_seconds=run.wall_seconds, wall_shared_by=n_tasks,
            decode_seconds=compute.decode_seconds, results_file=str(run.path),
            samples_file=str(samples_path) if samples is not None else None, trace_file=compute.trace_file,
            flips=compute.flips,
        )
        if samples is None:
            row.notes.append(f"no logged samples ({samples_path.name}); run lm_eval with --log_samples")
        if trace.note:
            row.notes.append(trace.note)
        if samples is not None:
            _add_per_question(row, res, samples, samples_path)
        row.notes.extend(compute.notes)
        return row

    def compute_of(self, run: "_RunInfo", task: str, k: int, n_questions: int | None, trace: "_RunTrace",
                   samples: list[Sample] | None) -> Compute:
        """The task's compute: from the run's trace when it has lines of the task, else estimated from the logged
        samples (one per document), else unknown; the notes of both attempts are kept."""
        found = Compute()
        if trace.lines is not None:
            found = compute_from_trace(task, k, n_questions, trace.path, trace.lines, samples)
        if found.source == "none" and samples is not None:
            estimate = estimate_from_samples(_one_per_doc(samples), self.counter, run.model, run.model_args,
                                             run.verifier)
            estimate.notes[:0] = found.notes
            return estimate
        return found


@dataclass
class _RunInfo:
    """What every row of one results file shares: run name, model, model args, verifier use, wall time."""

    name: str
    path: Path
    model: str
    model_args: dict[str, str]
    verifier: bool
    wall_seconds: float | None
    timestamp: str
    run_id: str | None

    @classmethod
    def of(cls, data: dict, run: str, path: Path) -> "_RunInfo":
        config = data.get("config") or {}
        model = str(config.get("model") or "")
        model_args = parse_model_args(config.get("model_args"))
        run_id = config.get("llm2_run_id")
        return cls(name=run, path=path, model=model, model_args=model_args,
                   verifier=uses_verifier(model, model_args), wall_seconds=num(data.get("total_evaluation_time_seconds")),
                   timestamp=results_timestamp(path), run_id=run_id if isinstance(run_id, str) and run_id else None)

    @property
    def traced(self) -> bool:
        """Whether the run was asked to write a trace (``trace=`` model arg)."""
        return self.model_args.get("trace", "").strip().lower() not in NULLS


@dataclass
class _RunTrace:
    """The trace of one run: its path, the lines this run wrote (None: no trace read), a note for the rows."""

    path: Path | None = None
    lines: list[dict] | None = None
    note: str | None = None


def _accuracy(res: dict) -> tuple[float | None, float | None, str | None]:
    """``(value, stderr, key)`` of a task's accuracy: ``maj_at_k``, else ``exact_match``, else ``acc``."""
    for name in ("maj_at_k", "exact_match", "acc"):
        found = _metric(res, name)
        if found[2] is not None:
            return found
    return None, None, None


def _effective(data: dict, task: str) -> int | None:
    """The number of documents lm-eval evaluated for ``task`` (``n-samples``' ``effective``), or None."""
    n_samples = data.get("n-samples") or {}
    eff = (n_samples.get(task) or {}).get("effective") if isinstance(n_samples, dict) else None
    return int(eff) if num(eff) is not None else None


def _add_per_question(row: ReportRow, res: dict, samples: list[Sample], samples_path: Path) -> None:
    """Fill ``row``'s per-question scores (accuracy and pass@1) and document hashes from its logged samples."""
    acc_key = row.accuracy_metric
    row.scores_by_doc = scores_by_doc(samples, acc_key, samples_path) if acc_key else None
    if row.pass_at_1 is not None:
        pass1_key = _metric(res, "pass_at_1")[2] or "pass_at_1,none"
        row.pass_at_1_by_doc = scores_by_doc(samples, pass1_key, samples_path)
    row.doc_hashes = {str(s.doc_id): s.doc_hash for s in samples if s.doc_hash is not None} or None
    if acc_key and row.scores_by_doc is None:
        row.notes.append(f"{samples_path.name} has no per-question {acc_key.split(',')[0]}")


def _one_per_doc(samples: list) -> list:
    """The first sample line of each document (lm-eval logs a document once per filter of its task)."""
    seen: set[str] = set()
    out = []
    for s in samples:
        if str(s.doc_id) not in seen:
            seen.add(str(s.doc_id))
            out.append(s)
    return out


def collect_rows(run_dirs: Iterable[str | Path], *, tokenizer: str | None = None) -> list[ReportRow]:
    """Read every run directory into report rows, one per (run, task), sorted by family, task and compute.

    The run name is the directory's name (``name/subdir`` when one directory holds results of several models;
    ``name#2`` for a repeated name). When a task appears in several results files of a run, the newest
    (by the timestamp in the file name) is used.

    Args:
        run_dirs: lm-eval ``--output_path`` directories (or results files).
        tokenizer: tokenizer path used for every run without trace, instead of its ``pretrained=`` model arg.

    Raises:
        ReportError: a directory without results files, an unreadable / malformed results, samples or trace
            file (naming the file, and the line for JSON Lines).
    """
    reader = _Reader(tokenizer)
    rows: list[ReportRow] = []
    seen: Counter[str] = Counter()
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        files = find_results_files(run_dir)
        root = run_dir if run_dir.is_dir() else run_dir.parent
        base = root.resolve().name or str(root)
        seen[base] += 1
        if seen[base] > 1:
            base = f"{base}#{seen[base]}"
        parents = {f.parent for f in files}
        latest: dict[tuple[str, str], tuple[str, ReportRow]] = {}
        for f in files:
            run = base
            if len(parents) > 1:
                rel = f.parent.relative_to(root) if f.parent != root else Path(".")
                run = f"{base}/{rel.as_posix()}"
            for row in reader.rows_of_results(run, root, f):
                row.run_dir = str(run_dir)
                key = (row.run, row.task)
                ts = results_timestamp(f)
                if key in latest:
                    old_ts, old = latest[key]
                    if old_ts > ts:
                        old.notes.append(f"older results for this task ignored: {f.name}")
                        continue
                    row.notes.append(f"older results for this task ignored: {Path(old.results_file).name}")
                latest[key] = (ts, row)
        rows.extend(r for _, r in latest.values())

    def order(r: ReportRow) -> tuple:
        x = r.per_question(r.total_token_forwards if r.total_token_forwards is not None else r.llm_token_forwards)
        return (r.family, r.task, x if x is not None else math.inf, r.run)

    return sorted(rows, key=order)
