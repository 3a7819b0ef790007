"""One report row per (run, task): what a run did (method, accuracy) and what it cost (token forwards, time).

The method comes from the run's model args and the task's config (:func:`classify_method`); compute from the
run's ``llm2`` trace when there is one, else estimated from its logged samples (:mod:`llm2_eval.report.compute`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llm2_eval.report.compute import TokenCounter, compute_from_trace, estimate_from_samples
from llm2_eval.report.runs import (
    NULLS,
    ReportError,
    find_results_files,
    num,
    parse_model_args,
    TraceFile,
    read_json,
    read_samples,
    rank_trace_lines,
    rank_trace_paths,
    read_trace_file,
    resolve_trace,
    results_timestamp,
    scores_by_doc,
    trace_lines_of_run,
)
from llm2_eval.report.stats import Interval, PairedDifference

# the four methods the report compares, plus single-sample sampling runs (k = 1 with do_sample)
METHODS = ("greedy", "LLM2", "maj@k", "LLM2+maj@k", "sample", "LLM2+sample")


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
    """``(method, label)`` of a run: method is one of :data:`METHODS`, label puts k into it (``maj@8``).

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


@dataclass
class ReportRow:
    """One (run, task) of the report. Accuracies are fractions in [0, 1]; compute is in token forwards
    (tokens fed through a model: prompt prefill + generated tokens + verifier candidates); times in seconds."""

    run: str
    task: str
    family: str
    model: str
    method: str  # one of METHODS
    label: str  # method with k filled in, e.g. "maj@8"
    k: int
    n_questions: int | None
    accuracy: float | None
    accuracy_metric: str | None
    accuracy_stderr: float | None
    pass_at_1: float | None
    llm_token_forwards: float | None
    verifier_token_forwards: float | None
    compute_source: str  # "trace", "tokenizer", "chars/4" or "none"
    estimated: bool
    wall_seconds: float | None  # total_evaluation_time_seconds of the results file
    wall_shared_by: int  # number of tasks in that results file (the wall time covers all of them)
    decode_seconds: float | None  # sum of the trace's per-sequence seconds (None without trace)
    results_file: str
    samples_file: str | None = None
    trace_file: str | None = None
    notes: list[str] = field(default_factory=list)
    run_dir: str | None = None  # the directory (or results file) given to the report
    # uncertainty (llm2_eval.report.compare): 95% intervals, and the paired difference to a --baseline run
    accuracy_ci: Interval | None = None
    pass_at_1_ci: Interval | None = None
    paired: PairedDifference | None = None
    is_baseline: bool = False
    # per question (keyed by lm-eval's doc_id) from the logged samples; not written to report.json
    scores_by_doc: dict[str, float] | None = field(default=None, repr=False)
    pass_at_1_by_doc: dict[str, float] | None = field(default=None, repr=False)
    doc_hashes: dict[str, str] | None = field(default=None, repr=False)

    @property
    def total_token_forwards(self) -> float | None:
        """LLM + verifier token forwards (None when either is unknown)."""
        if self.llm_token_forwards is None or self.verifier_token_forwards is None:
            return None
        return self.llm_token_forwards + self.verifier_token_forwards

    def per_question(self, value: float | None) -> float | None:
        """``value`` divided by the number of questions (None when unknown)."""
        if value is None or not self.n_questions:
            return None
        return value / self.n_questions

    def to_dict(self) -> dict:
        """JSON-ready dict with the derived totals and per-question averages."""
        d = asdict(self)
        for key in _PER_QUESTION:
            d.pop(key)
        d["total_token_forwards"] = self.total_token_forwards
        d["llm_token_forwards_per_question"] = self.per_question(self.llm_token_forwards)
        d["verifier_token_forwards_per_question"] = self.per_question(self.verifier_token_forwards)
        d["total_token_forwards_per_question"] = self.per_question(self.total_token_forwards)
        return d


_PER_QUESTION = ("scores_by_doc", "pass_at_1_by_doc", "doc_hashes")


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
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise ReportError(f"{path} is not an lm-eval results file (no 'results' object)")
        config = data.get("config") or {}
        model = str(config.get("model") or "")
        model_args = parse_model_args(config.get("model_args"))
        configs = data.get("configs") or {}
        groups = {g for g, subs in (data.get("group_subtasks") or {}).items() if subs}
        tasks = [t for t in data["results"] if t not in groups]
        n_samples = data.get("n-samples") or {}
        wall = num(data.get("total_evaluation_time_seconds"))
        verifier = uses_verifier(model, model_args)
        ts = results_timestamp(path)

        trace_path = None
        trace_note = None
        trace_lines: list[dict] | None = None
        if model_args.get("trace", "").strip().lower() not in NULLS:
            trace_path = resolve_trace(model_args["trace"], run_dir, path.parent)
            run_id = config.get("llm2_run_id")
            run_id = run_id if isinstance(run_id, str) and run_id else None
            if trace_path is not None:  # keep only the lines this run wrote (llm2_eval.trace stamps them)
                trace_lines, trace_note = trace_lines_of_run(self.trace(trace_path), run_id)
            ranks = rank_trace_paths(model_args["trace"], run_dir, path.parent) if trace_lines is None else {}
            if ranks:  # a data-parallel run: one trace per rank, merged
                trace_lines, trace_note = rank_trace_lines({r: self.trace(p) for r, p in ranks.items()}, run_id)
                first = next(iter(ranks.values()))
                trace_path = first.with_name(first.name.replace(f".rank{next(iter(ranks))}", ".rank*"))
            elif trace_path is None:
                trace_note = f"trace {model_args['trace']} not found: compute estimated from samples"

        rows = []
        for task in tasks:
            res = data["results"][task] or {}
            tcfg = configs.get(task) or {}
            try:
                k = max(1, int(tcfg.get("repeats") or 1))
            except (TypeError, ValueError):
                k = 1
            method, label = classify_method(verifier, k, _do_sample(tcfg.get("generation_kwargs") or {}))
            acc, acc_se, acc_key = _metric(res, "maj_at_k")
            if acc_key is None:
                for name in ("exact_match", "acc"):
                    acc, acc_se, acc_key = _metric(res, name)
                    if acc_key is not None:
                        break
            pass1 = _metric(res, "pass_at_1")[0]

            samples_path = path.parent / f"samples_{task}_{ts}.jsonl"
            samples = read_samples(samples_path) if samples_path.is_file() else None
            n_q = len({str(s.doc_id) for s in samples}) if samples is not None else None
            if n_q is None:
                eff = (n_samples.get(task) or {}).get("effective") if isinstance(n_samples, dict) else None
                n_q = int(eff) if num(eff) is not None else None

            row = ReportRow(
                run=run, task=task, family=task_family(task), model=model, method=method, label=label, k=k,
                n_questions=n_q, accuracy=acc, accuracy_metric=acc_key, accuracy_stderr=acc_se, pass_at_1=pass1,
                llm_token_forwards=None, verifier_token_forwards=None, compute_source="none", estimated=False,
                wall_seconds=wall, wall_shared_by=len(tasks), decode_seconds=None, results_file=str(path),
                samples_file=str(samples_path) if samples is not None else None,
            )
            if samples is None:
                row.notes.append(f"no logged samples ({samples_path.name}); run lm_eval with --log_samples")
            if trace_note:
                row.notes.append(trace_note)
            if samples is not None:
                row.scores_by_doc = scores_by_doc(samples, acc_key, samples_path) if acc_key else None
                if pass1 is not None:
                    pass1_key = _metric(res, "pass_at_1")[2] or "pass_at_1,none"
                    row.pass_at_1_by_doc = scores_by_doc(samples, pass1_key, samples_path)
                row.doc_hashes = {str(s.doc_id): s.doc_hash for s in samples if s.doc_hash is not None} or None
                if acc_key and row.scores_by_doc is None:
                    row.notes.append(f"{samples_path.name} has no per-question {acc_key.split(',')[0]}")
            if trace_lines is not None:
                compute_from_trace(row, trace_path, trace_lines, samples)
            if row.compute_source == "none" and samples is not None:
                estimate_from_samples(row, _one_per_doc(samples), self.counter, model, model_args, verifier)
            rows.append(row)
        return rows


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
