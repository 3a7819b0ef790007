"""``llm2 report``: accuracy against compute over lm-eval output directories.

The last step of the data flow (ARCHITECTURE.md): ``lm_eval ... --output_path RUN_DIR --log_samples`` writes
``RUN_DIR/<model>/results_<timestamp>.json`` and ``samples_<task>_<timestamp>.jsonl``; the ``llm2`` model with
``trace=PATH.jsonl`` also writes one JSON line per generated sequence. This module reads them and makes

- one row per (run, task): method (greedy, LLM2, maj@k, LLM2+maj@k), accuracy (``exact_match``; ``maj_at_k`` and
  ``pass_at_1`` for self-consistency tasks), LLM and verifier token forwards (totals and per question) and wall
  time;
- a rich table on the console, ``report.md`` (markdown table) and ``report.json`` in the output directory;
- ``accuracy_vs_compute.png``: accuracy against token forwards per question, one panel per task family
  (gsm8k, math500, ...), so that methods can be compared at equal compute (LLM2.md section 8).

Compute comes from the traces when there are any (exact counts). Without traces (``--model hf``, or ``llm2``
without ``trace=``) the LLM token forwards are *estimated* from the logged samples: prompt tokens (once per
question for ``llm2``, whose repeats share the prompt; once per sample for other models) plus the tokens of every
generation, counted with the run's tokenizer (the ``pretrained=`` model arg, loaded locally only) or, when that is
not available, as characters / 4. Estimated numbers are marked ``~`` in the tables and drawn hollow in the plot.

Only the standard library is imported at module level; rich, matplotlib and transformers are imported where used.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import click

# the four methods the report compares, plus single-sample sampling runs (k = 1 with do_sample)
METHODS = ("greedy", "LLM2", "maj@k", "LLM2+maj@k", "sample", "LLM2+sample")

_RESULTS_RE = re.compile(r"^results_(?P<ts>.+)\.json$")
_TRACE_REQUIRED = ("task", "doc_id", "llm_token_forwards", "verifier_token_forwards")
_NULLS = ("", "none", "null")


class ReportError(ValueError):
    """A run directory or one of its files cannot be read (the message names the directory / file / line)."""


# --------------------------------------------------------------------------------------------------- reading


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


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for every non-blank line of a JSON Lines file (line numbers from 1).

    Raises:
        ReportError: the file cannot be read, a line is not valid JSON, or a line is not a JSON object (the
            message names the file and the line).
    """
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err}") from err
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ReportError(f"malformed JSON in {path} line {lineno}: {err.msg}") from err
                if not isinstance(obj, dict):
                    raise ReportError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except UnicodeDecodeError as err:
            raise ReportError(f"cannot read {path}: {err}") from err


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


# ----------------------------------------------------------------------------------------- classification


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
    if verifier is None or verifier.strip().lower() in _NULLS:
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
    return _num(value), _num(stderr), key


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# -------------------------------------------------------------------------------------------------- compute


class TokenCounter:
    """Counts tokens of logged prompts / generations for runs without traces.

    Uses ``transformers.AutoTokenizer`` on a local path (or a hub id already in the local cache; nothing is
    downloaded); falls back to ``ceil(characters / 4)`` per text when no tokenizer can be loaded.
    """

    def __init__(self, override: str | None = None) -> None:
        self.override = override
        self._cache: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def tokenizer_for(self, pretrained: str | None) -> Any | None:
        """The tokenizer for ``pretrained`` (or the override given at construction), or None if unavailable.

        Raises:
            ReportError: the override tokenizer cannot be loaded (a run's own ``pretrained`` falls back instead).
        """
        name = self.override or pretrained
        if not name:
            return None
        if name not in self._cache:
            tok = None
            path_like = name.startswith(("/", "./", "../", "~")) or Path(name).drive != ""
            if path_like and not Path(name).expanduser().exists():
                self.errors[name] = "not found on this machine"
            else:
                try:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if path_like else name,
                                                        local_files_only=True)
                except Exception as err:  # noqa: BLE001 - any failure: fall back to the labelled estimate
                    self.errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            if tok is None and self.override:
                raise ReportError(f"cannot load the tokenizer --tokenizer {name}: {self.errors[name]}")
            self._cache[name] = tok
        return self._cache[name]

    @staticmethod
    def count(texts: Sequence[str], tokenizer: Any | None) -> list[int]:
        """Token counts of ``texts`` (no special tokens added), or ``ceil(len / 4)`` without a tokenizer."""
        if not texts:
            return []
        if tokenizer is None:
            return [math.ceil(len(t) / 4) for t in texts]
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]


@dataclass
class _Sample:
    doc_id: Any
    prompts: list[str]
    responses: list[list[str]]  # per prompt (lm-eval instance): its generations


def _read_samples(path: Path) -> list[_Sample]:
    out = []
    for lineno, obj in iter_jsonl(path):
        if "doc_id" not in obj:
            raise ReportError(f"{path} line {lineno}: no 'doc_id' (not an lm-eval samples file?)")
        args = obj.get("arguments", {})
        if isinstance(args, dict):
            args = [args[k] for k in sorted(args, key=lambda k: (len(k), k))]
        prompts = []
        for a in args:
            prompt = a.get("arg_0") if isinstance(a, dict) else (a[0] if isinstance(a, (list, tuple)) and a else a)
            prompts.append(prompt if isinstance(prompt, str) else "")
        resps = obj.get("resps", [])
        responses = [[r for r in (rs if isinstance(rs, list) else [rs]) if isinstance(r, str)] for rs in resps]
        out.append(_Sample(obj["doc_id"], prompts, responses))
    return out


def _read_trace(path: Path) -> list[dict]:
    lines = []
    for lineno, obj in iter_jsonl(path):
        missing = [k for k in _TRACE_REQUIRED if k not in obj]
        if missing:
            raise ReportError(f"{path} line {lineno}: trace line misses {missing}")
        for k in ("llm_token_forwards", "verifier_token_forwards"):
            if _num(obj[k]) is None:
                raise ReportError(f"{path} line {lineno}: {k}={obj[k]!r} is not a number")
        lines.append(obj)
    return lines


# ----------------------------------------------------------------------------------------------------- rows


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
        d["total_token_forwards"] = self.total_token_forwards
        d["llm_token_forwards_per_question"] = self.per_question(self.llm_token_forwards)
        d["verifier_token_forwards_per_question"] = self.per_question(self.verifier_token_forwards)
        d["total_token_forwards_per_question"] = self.per_question(self.total_token_forwards)
        return d


def _resolve_trace(trace: str, run_dir: Path, results_dir: Path) -> Path | None:
    p = Path(trace).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, run_dir / p, results_dir / p]
    candidates += [run_dir / p.name, results_dir / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return None


def _results_timestamp(path: Path) -> str:
    m = _RESULTS_RE.match(path.name)
    return m.group("ts") if m else ""


class _Reader:
    """Reads run directories into :class:`ReportRow` s, caching traces and tokenizers across runs."""

    def __init__(self, tokenizer: str | None = None) -> None:
        self.counter = TokenCounter(tokenizer)
        self._traces: dict[Path, list[dict]] = {}

    def trace(self, path: Path) -> list[dict]:
        key = path.resolve()
        if key not in self._traces:
            self._traces[key] = _read_trace(path)
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
        wall = _num(data.get("total_evaluation_time_seconds"))
        verifier = uses_verifier(model, model_args)
        ts = _results_timestamp(path)

        trace_path = None
        trace_note = None
        if model_args.get("trace", "").strip().lower() not in _NULLS:
            trace_path = _resolve_trace(model_args["trace"], run_dir, path.parent)
            if trace_path is None:
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
            samples = _read_samples(samples_path) if samples_path.is_file() else None
            n_q = len({str(s.doc_id) for s in samples}) if samples is not None else None
            if n_q is None:
                eff = (n_samples.get(task) or {}).get("effective") if isinstance(n_samples, dict) else None
                n_q = int(eff) if _num(eff) is not None else None

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
            if trace_path is not None:
                self._compute_from_trace(row, trace_path, samples)
            if row.compute_source == "none" and samples is not None:
                self._estimate_from_samples(row, samples, model, model_args, verifier)
            rows.append(row)
        return rows

    def _compute_from_trace(self, row: ReportRow, trace_path: Path, samples: list[_Sample] | None) -> None:
        doc_ids = {str(s.doc_id) for s in samples} if samples is not None else None
        by_key: dict[tuple[str, int], dict] = {}
        duplicates = 0
        for line in self.trace(trace_path):
            if line["task"] != row.task or (doc_ids is not None and str(line["doc_id"]) not in doc_ids):
                continue
            key = (str(line["doc_id"]), int(_num(line.get("repeat", 0)) or 0))
            duplicates += key in by_key
            by_key[key] = line  # a trace appended to by several runs: the last line wins
        if not by_key:
            row.notes.append(f"trace {trace_path} has no lines for task {row.task}")
            return
        lines = list(by_key.values())
        row.trace_file = str(trace_path)
        row.compute_source = "trace"
        row.llm_token_forwards = float(sum(_num(x["llm_token_forwards"]) for x in lines))
        row.verifier_token_forwards = float(sum(_num(x["verifier_token_forwards"]) for x in lines))
        secs = [_num(x.get("seconds")) for x in lines]
        row.decode_seconds = float(sum(s for s in secs if s is not None)) if any(s is not None for s in secs) else None
        if row.n_questions is None:
            row.n_questions = len({k[0] for k in by_key})
        if duplicates:
            row.notes.append(f"{duplicates} duplicate trace lines (trace appended by several runs?); last kept")
        expected = row.n_questions * row.k if row.n_questions else None
        if expected is not None and len(lines) < expected:
            row.notes.append(f"trace covers {len(lines)} of {expected} sequences: compute is a lower bound")

    def _estimate_from_samples(
        self, row: ReportRow, samples: list[_Sample], model: str, model_args: dict[str, str], verifier: bool
    ) -> None:
        tokenizer = self.counter.tokenizer_for(model_args.get("pretrained"))
        shared_prompt = model.lower() == "llm2"  # llm2 prefills a prompt once for all its repeats
        prompts: list[str] = []
        prompt_mult: list[int] = []
        gens: list[str] = []
        for s in samples:
            for i, prompt in enumerate(s.prompts):
                resps = s.responses[i] if i < len(s.responses) else []
                prompts.append(prompt)
                prompt_mult.append(1 if shared_prompt else max(1, len(resps)))
            for resps in s.responses:
                gens.extend(resps)
        n_prompt = sum(c * m for c, m in zip(self.counter.count(prompts, tokenizer), prompt_mult))
        n_gen = sum(self.counter.count(gens, tokenizer))
        row.llm_token_forwards = float(n_prompt + n_gen)
        row.estimated = True
        if tokenizer is not None:
            row.compute_source = "tokenizer"
        else:
            row.compute_source = "chars/4"
            name = self.counter.override or model_args.get("pretrained")
            why = f" ({self.counter.errors[name]})" if name in self.counter.errors else ""
            row.notes.append(f"no tokenizer for {name or 'this run'}{why}: token counts are characters / 4")
        if verifier:
            row.notes.append("LLM2 run without trace: verifier token forwards unknown (pass trace= to llm2)")
        else:
            row.verifier_token_forwards = 0.0


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
                key = (row.run, row.task)
                ts = _results_timestamp(f)
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


# ---------------------------------------------------------------------------------------------------- output

_COLUMNS = (
    "run", "task", "method", "model", "n", "accuracy %", "pass@1 %",
    "LLM fwd", "verifier fwd", "total fwd", "LLM fwd/q", "verifier fwd/q", "total fwd/q",
    "wall s", "decode s", "compute",
)


def _fmt_count(value: float | None, estimated: bool) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.1f}"
    return f"~{text}" if estimated and value else text


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def row_cells(row: ReportRow) -> list[str]:
    """The table cells of one row, in the order of the report's columns (``~`` marks an estimate)."""
    est = row.estimated
    wall = "n/a" if row.wall_seconds is None else f"{row.wall_seconds:.1f}"
    if row.wall_seconds is not None and row.wall_shared_by > 1:
        wall += f" (all {row.wall_shared_by} tasks)"
    return [
        row.run, row.task, row.label, row.model, "n/a" if row.n_questions is None else str(row.n_questions),
        _fmt_pct(row.accuracy), _fmt_pct(row.pass_at_1),
        _fmt_count(row.llm_token_forwards, est), _fmt_count(row.verifier_token_forwards, False),
        _fmt_count(row.total_token_forwards, est),
        _fmt_count(row.per_question(row.llm_token_forwards), est),
        _fmt_count(row.per_question(row.verifier_token_forwards), False),
        _fmt_count(row.per_question(row.total_token_forwards), est),
        wall, "n/a" if row.decode_seconds is None else f"{row.decode_seconds:.1f}",
        row.compute_source + (" (estimated)" if est else ""),
    ]


def rich_table(rows: Sequence[ReportRow]):
    """The report as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title="LLM2 report: accuracy vs compute (fwd = token forwards, /q = per question, ~ = estimated)")
    for name in _COLUMNS:
        numeric = name not in ("run", "task", "method", "model", "compute")
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*row_cells(row))
    return table


def markdown_table(rows: Sequence[ReportRow]) -> str:
    """The report as a markdown table followed by the rows' notes."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---" if c in ("run", "task", "method", "model", "compute") else "---:" for c in _COLUMNS]
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(esc(c) for c in row_cells(row)) + " |")
    lines += ["", "fwd = token forwards (tokens fed through the model), /q = per question, ~ = estimated from the "
              "logged samples (no trace). Wall time is lm-eval's total_evaluation_time_seconds of the results file; "
              "decode time is the sum of the trace's per-sequence seconds."]
    notes = [(r, n) for r in rows for n in r.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {r.run} / {r.task}: {n}" for r, n in notes]
    return "\n".join(lines) + "\n"


_STYLE = {
    "greedy": ("o", "tab:blue"),
    "LLM2": ("s", "tab:orange"),
    "maj@k": ("^", "tab:green"),
    "LLM2+maj@k": ("D", "tab:red"),
    "sample": ("v", "tab:purple"),
    "LLM2+sample": ("P", "tab:brown"),
}


def plot_accuracy_vs_compute(rows: Sequence[ReportRow], path: str | Path) -> Path:
    """Save a PNG of accuracy (%) against token forwards per question (LLM + verifier), one panel per task
    family, one marker/colour per method, each point labelled with its run name. Estimated compute is drawn
    hollow; an LLM2 run without trace (verifier forwards unknown) is drawn at its LLM forwards, marked ">=".
    The x axis is logarithmic when the largest value is more than 20 times the smallest.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    path = Path(path)
    families = sorted({r.family for r in rows}) or ["(no runs)"]
    fig, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), 4.8), squeeze=False)
    used: set[str] = set()
    any_estimated = False
    for ax, family in zip(axes[0], families):
        points = []  # (x, accuracy %, row, lower_bound)
        for r in (r for r in rows if r.family == family):
            total = r.total_token_forwards
            x = r.per_question(total if total is not None else r.llm_token_forwards)
            if x is None or r.accuracy is None or x <= 0:
                continue
            points.append((x, 100 * r.accuracy, r, total is None))
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        log_x = bool(xs) and max(xs) / min(xs) > 20
        if log_x:
            ax.set_xscale("log")
        # stagger the labels of points that (nearly) coincide, so that none hides another
        def pos(x: float) -> float:
            return math.log(x) if log_x else x

        x_span = (pos(max(xs)) - pos(min(xs))) if xs else 0.0
        y_span = (max(ys) - min(ys)) if ys else 0.0
        placed: list[tuple[float, float]] = []
        for x, y, r, lower_bound in points:
            near = sum(abs(pos(x) - px) <= 0.04 * (x_span or 1.0) and abs(y - py) <= 0.04 * (y_span or 1.0)
                       for px, py in placed)
            placed.append((pos(x), y))
            marker, color = _STYLE.get(r.method, ("x", "black"))
            any_estimated |= r.estimated
            ax.scatter([x], [y], marker=marker, s=64, linewidths=1.6, edgecolors=color,
                       facecolors="none" if r.estimated else color, zorder=3)
            text = f"{r.run} ({r.label})" + (" >=" if lower_bound else "")
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 5 - 11 * near), fontsize=8)
            used.add(r.method)
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if xs:
            lo, hi = min(xs), max(xs)
            if log_x:
                ax.set_xlim(lo / 1.6, hi * 2.5)
            else:
                span = (hi - lo) or hi
                ax.set_xlim(max(0.0, lo - 0.15 * span), hi + 0.45 * span)
        else:
            ax.text(0.5, 0.5, "no run with accuracy and compute", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(family)
        ax.set_xlabel("token forwards per question (LLM + verifier)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], marker=_STYLE[m][0], color=_STYLE[m][1], linestyle="", label=m)
               for m in METHODS if m in used]
    if any_estimated:
        handles.append(Line2D([], [], marker="o", color="gray", markerfacecolor="none", linestyle="",
                              label="estimated compute"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Accuracy vs compute")
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


@dataclass
class Report:
    """What :func:`write_report` produced."""

    rows: list[ReportRow]
    markdown: Path
    json: Path
    plot: Path


def write_report(
    run_dirs: Sequence[str | Path], output: str | Path, *, tokenizer: str | None = None, console: Any = None
) -> Report:
    """Read the runs, print the table (to ``console``, a ``rich.console.Console``; none = no printing) and write
    ``report.md``, ``report.json`` and ``accuracy_vs_compute.png`` into ``output`` (created if missing).

    Raises:
        ReportError: see :func:`collect_rows`; also when ``run_dirs`` is empty or ``output`` is not a directory.
    """
    if not run_dirs:
        raise ReportError("no run directories given")
    rows = collect_rows(run_dirs, tokenizer=tokenizer)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if console is not None:
        console.print(rich_table(rows))
        for r in rows:
            for note in r.notes:
                console.print(f"[dim]note[/dim] {r.run} / {r.task}: {note}", markup=True, highlight=False)
    md = out / "report.md"
    md.write_text(markdown_table(rows), encoding="utf-8")
    js = out / "report.json"
    payload = {"runs": [str(Path(d)) for d in run_dirs], "rows": [r.to_dict() for r in rows]}
    js.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    png = plot_accuracy_vs_compute(rows, out / "accuracy_vs_compute.png")
    return Report(rows=rows, markdown=md, json=js, plot=png)


# -------------------------------------------------------------------------------------------------------- CLI


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.md, report.json and accuracy_vs_compute.png (created if missing).")
@click.option("--tokenizer", default=None,
              help="Tokenizer (local path) to count tokens of runs without trace; default: each run's pretrained=.")
def report_command(run_dirs: tuple[Path, ...], output: Path, tokenizer: str | None) -> None:
    """Accuracy vs compute over lm-eval output directories (RUN_DIRS: what lm_eval --output_path wrote).

    Prints one row per (run, task): method (greedy, LLM2, maj@k, LLM2+maj@k), accuracy, LLM and verifier token
    forwards (from the llm2 model's trace=; estimated from the logged samples otherwise, marked ~) and wall
    time; writes report.md, report.json and accuracy_vs_compute.png into --output.
    """
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=220)
    try:
        rep = write_report(run_dirs, output, tokenizer=tokenizer, console=console)
    except ReportError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {rep.markdown}, {rep.json} and {rep.plot}")
