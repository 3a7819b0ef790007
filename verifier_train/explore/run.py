"""The exploration run: read the input, explore each example, append its record, keep a summary (``llm2 explore``).

Output (docs/method.md section 5), one line per example, appended and fsynced as each chunk of examples finishes (one
example, or the ``--self-batch`` questions of ``--gold self``, whose rollouts are batched)::

    {"id", "line", "messages", "samples": [[t, gold_id, v], ...], "gold_answer", "response_start", "positions",
     "response_positions", "candidate_positions",
     "qualities": [{"pos", "gold_id", "token", "text", "q", "correct", "rollouts", "truncated", "negative"}, ...],
     "gold_qualities": [...], "rollouts", "generated_tokens", "seconds", "settings": {...}}

(``--label relative`` and ``significant`` add ``"unjudged_positions"``; ``significant`` adds each candidate's
one-sided p-value ``"p_worse"`` to its quality entry.)

(``seconds``: the chunk's wall time shared evenly among its records.)

(``--strategy sample`` writes ``"draws": [{"pos", "gold_id", "tokens", "set_size"}, ...]`` instead of qualities.)

Re-running the same command resumes (examples already in the output are skipped; a truncated last line is
repaired by :class:`~verifier_train.records.JsonlAppender`), so a killed run loses at most the chunk in
progress; an output written with other settings or from another input (its path, size and sha256 are in the
settings) is refused, and so is an output that is an input or a file that is not an exploration output; the
output is locked while written (a second process on it is refused). A
``--gold self`` question without a correct sample is not written, so a resumed run samples it again. A summary
(``OUT.summary.json``, e.g. ``out.jsonl`` -> ``out.summary.json``) is rewritten after every example and at the
end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llm2_eval.prompts import task_prompt
from llm2_eval.splits import gsm8k_dev_questions
from verifier_train.explore.batch import explore_batch
from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.explorer import Counters, Example, Explorer
from verifier_train.explore.inputs import (
    BadExample,
    ExploreInputError,
    in_shard,
    iter_input,
    parse_example,
    shard_output_path,
    summary_path,
)
from verifier_train.explore.labels import default_checker
from verifier_train.explore.models import build_engines, load_tokenizer
from verifier_train.explore.output import (
    check_paths,
    check_resume,
    check_unlocked,
    existing_settings,
    missing_paths,
    remove_created,
)
from verifier_train.records import JsonlAppender
from verifier_train.rollouts import RolloutEngine


class _Run:
    """The bookkeeping of one :func:`explore` call: selected and resumed lines, skipped ones, the summary."""

    def __init__(self, cfg: ExploreConfig, out_path: Path):
        self.cfg, self.out_path, self.t_start = cfg, out_path, time.perf_counter()
        examples = list(iter_input(cfg.data))
        if not examples:
            raise ExploreInputError(f"{cfg.data}: no examples (the file has no non-blank line)")
        if cfg.start >= len(examples):
            raise ExploreInputError(f"{cfg.data}: --start {cfg.start} is past its {len(examples)} examples")
        self.selected = [
            (j, ln, raw)
            for j, ln, raw in examples
            if j >= cfg.start and (cfg.limit is None or j < cfg.start + cfg.limit) and in_shard(j, cfg.shard)
        ]
        self.excluded_dev = 0
        if cfg.exclude_dev:
            dev = gsm8k_dev_questions()
            kept = [x for x in self.selected if _question(x[2]) not in dev]
            self.excluded_dev = len(self.selected) - len(kept)
            self.selected = kept
        self.todo: list[tuple[int, int, str]] = []
        self.resumed = 0
        self.skipped: list[str] = []
        self.self_failed: list[Any] = []
        self.seen_ids: set[str] = set()
        self.warnings: list[str] = []
        self.dropped_bytes = 0
        self.deferred_error: tuple[int, str] | None = None

    def resume(self, appender: JsonlAppender) -> None:
        """Leave out the selected examples the output already holds."""
        self.todo = [(j, ln, raw) for j, ln, raw in self.selected if _example_id(raw, ln) not in appender]
        self.resumed = len(self.selected) - len(self.todo)

    def bad(self, ln: int, reason: str) -> None:
        """A bad input line: raise (``on_error="fail"``) or note it as skipped."""
        msg = f"{self.cfg.data}:{ln}: {reason}"
        if self.cfg.on_error == "fail":
            raise ExploreInputError(msg)
        self.skipped.append(msg)

    def summary(self, c: Counters, engine: Any, done: bool) -> dict[str, Any]:
        """The summary of the run so far (see :func:`explore`)."""
        cfg = self.cfg
        wall = time.perf_counter() - self.t_start
        return {
            "output": str(self.out_path), "input": str(cfg.data), "finished": done,
            "selected": len(self.selected), "excluded_dev": self.excluded_dev, "examples": c.examples,
            "resumed": self.resumed, "dropped_bytes": self.dropped_bytes, "warnings": self.warnings,
            "skipped": len(self.skipped), "skipped_lines": self.skipped,
            "self_gold_failed": len(self.self_failed), "self_gold_failed_ids": self.self_failed,
            "self_samples": c.self_samples,
            "outcome_right": c.outcome_right if cfg.strategy == "outcome" else None,
            "outcome_mix": dict(c.outcome_mix) if cfg.strategy == "outcome" else None,
            "response_positions": c.response_positions, "candidate_positions": c.candidate_positions,
            "positions": c.positions, "candidates": c.candidates, "negatives": c.negatives,
            "negative_rate": c.negatives / c.candidates if c.candidates else None,
            "mean_q": c.q_sum / c.candidates if c.candidates and cfg.strategy == "rollout" else None,
            "mean_gold_q": c.gold_q_sum / c.gold_q_n if c.gold_q_n else None,
            "unjudged_positions": c.unjudged_positions,
            "rollouts": c.rollouts, "truncated_rollouts": c.truncated, "generated_tokens": c.generated_tokens,
            "wall_seconds": round(wall, 2),
            "examples_per_s": c.examples / wall if wall else None,
            "rollouts_per_s": c.rollouts / wall if wall else None,
            "tokens_per_s": c.generated_tokens / wall if wall else None,
            "engine": asdict(engine.stats) if hasattr(engine, "stats") else None,
            "shard": f"{cfg.shard[0]}/{cfg.shard[1]}", "start": cfg.start, "limit": cfg.limit,
            "settings": cfg.settings(),
        }

    def prepare(self, ex: Explorer, ln: int, raw: str) -> Example:
        """Parse one input line (``solution`` None for ``--gold self``).

        Raises:
            BadExample: the line cannot be explored (the caller fails or skips it).
        """
        cfg = self.cfg
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise BadExample(f"not valid JSON ({err.msg} at column {err.colno})") from None
        fmt, question, solution, gold = parse_example(obj, cfg.data_format, cfg.gold == "dataset")
        ex_id = obj.get("id", ln)
        key = json.dumps(ex_id, sort_keys=True)
        if key in self.seen_ids:
            raise BadExample(f"duplicate example id {ex_id!r}")
        self.seen_ids.add(key)
        if cfg.prompt == "task":
            question = task_prompt(fmt, question)
        if cfg.gold == "self":
            ex.check_self_prompt(question)
            solution = None
        return Example(ex_id, ln, question, solution, gold, cfg.checker or default_checker(fmt))

    def chunk(self, ex: Explorer, lines: list[tuple[int, str]]) -> list[tuple[int, dict | None]]:
        """Explore input lines ``(line number, text)`` as one batch
        (:func:`~verifier_train.explore.batch.explore_batch`): per line explored, ``(line number, record or None)``
        (None: a ``--gold self`` question without a correct sample). Bad lines fail or are skipped (:meth:`bad`);
        with ``--gold self`` the solutions of all lines are sampled first, together.

        Raises:
            ExploreInputError: a bad first line with ``on_error="fail"`` (a bad later line ends the chunk there and
                is kept in ``deferred_error``, raised by the caller once the lines before it are written).
        """
        ready: list[Example] = []
        for ln, raw in lines:
            try:
                ready.append(self.prepare(ex, ln, raw))
            except BadExample as err:
                if ready and self.cfg.on_error == "fail":  # the lines before it are explored and written first
                    self.deferred_error = (ln, str(err))
                    break
                self.bad(ln, str(err))
        outcome = self.cfg.strategy == "outcome"  # explores the questions themselves, with no solution
        if self.cfg.gold == "self" and not outcome and ready:
            for e, solution in zip(ready, ex.self_solutions(ready)):
                e.solution = solution
        todo = [e for e in ready if e.solution is not None or outcome]
        explored = iter(explore_batch(ex, todo, stop_at_bad=self.cfg.on_error == "fail") if todo else [])
        out: list[tuple[int, dict | None]] = []
        for e in ready:
            if e.solution is None and not outcome:  # --gold self: no correct sample
                self.self_failed.append(e.id)
                out.append((e.line, None))
                continue
            got = next(explored)
            if isinstance(got, BadExample):
                if out and self.cfg.on_error == "fail":
                    self.deferred_error = (e.line, str(got))  # an earlier line than any deferred in preparation
                    break
                self.bad(e.line, str(got))
                continue
            out.append((e.line, got))
        return out


def _question(raw: str) -> str | None:
    """The stripped ``question`` (GSM8K) or ``problem`` (MATH) of an input line, or None."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    text = obj.get("question", obj.get("problem")) if isinstance(obj, dict) else None
    return text.strip() if isinstance(text, str) else None


def _example_id(raw: str, ln: int) -> Any:
    """The id of an input line: its ``id`` field, else its line number (also for a line that is not JSON)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        obj = None
    return obj.get("id", ln) if isinstance(obj, dict) else ln


def _write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no partial or empty temporary file is left behind
        raise


def explore(config: ExploreConfig, *, engine: RolloutEngine | None = None) -> dict[str, Any]:
    """Run token quality exploration over ``config.data`` (docs/method.md section 4; paper Eq. 5-6).

    Args:
        config: the settings (:class:`ExploreConfig`).
        engine: an already built rollout engine (else one is built from ``config.model``/``backend``).

    Returns:
        The summary dict also written to ``OUT.summary.json``: ``selected`` (examples in range),
        ``excluded_dev`` (left out by ``exclude_dev``), ``examples`` (written by this run), ``resumed``
        (already in the output), ``dropped_bytes`` (an invalid last-line fragment cut from the output on resume),
        ``warnings`` (e.g. a resumed output without the input's identity), ``skipped`` and ``skipped_lines``
        (``file:line: reason``), ``self_gold_failed``,
        ``response_positions`` (assistant tokens), ``candidate_positions`` (those with a plausible non-gold
        token), ``positions`` (explored), ``candidates`` (tried), ``negatives`` (kept), ``negative_rate``, ``mean_q``,
        ``mean_gold_q``, ``unjudged_positions`` (relative and significant rules: q(gold) below ``min_gold_quality``;
        significant: also no candidate outcome could pass the test), ``rollouts``,
        ``truncated_rollouts`` (hit ``max_rollout_tokens``: no final answer, so
        they count as failures), ``generated_tokens``, ``wall_seconds``, ``examples_per_s``,
        ``rollouts_per_s``, ``tokens_per_s``, ``output``, ``settings``.

    Raises:
        ExploreInputError: a bad input line with ``on_error="fail"`` (message ``file:line: reason``).
        ExploreInputError: an input without examples, or ``start`` past its end.
        ValueError: an output written with other settings or from another input (by content; use a new
            ``--output``), an output that is an input (data, model, contrast model, chat template) or a file that is
            not an exploration output, a contrast model with another vocabulary, a tokenizer without chat template.
            All checked before the output is touched.
        ImportError: ``backend="vllm"`` without vLLM installed.
        FileNotFoundError: a missing input file or model directory.
    """
    cfg = config
    run = _start(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    engine, contrast, ends = build_engines(cfg, tokenizer, engine)
    ex = Explorer(cfg, tokenizer, engine, contrast, ends)
    created = missing_paths(run.out_path)  # what this run creates: removed again if it fails before any record
    appender = JsonlAppender(run.out_path, key="id", name=f"--output {run.out_path}")
    run.dropped_bytes = appender.dropped_bytes
    run.resume(appender)
    try:
        _write_records(run, ex, appender)
    except BaseException:
        appender.close()
        remove_created(run.out_path, created)  # a refusal leaves no empty output behind
        raise
    appender.close()
    return _finish(run, ex)


def _start(cfg: ExploreConfig) -> _Run:
    """The checks of a run before any model loads (paths, lock, resume) and its selected lines; prints warnings.

    Raises:
        as :func:`explore` (all but the model-loading errors).
    """
    out_path = shard_output_path(cfg.output, cfg.shard)
    sum_path = summary_path(out_path)
    check_paths(cfg, out_path, sum_path)
    check_unlocked(out_path)  # before the models load; JsonlAppender takes the lock for good
    run = _Run(cfg, out_path)
    check_resume(out_path, existing_settings(out_path), json.loads(json.dumps(cfg.settings())), run.warnings)
    if cfg.top_k and cfg.alpha is not None:
        run.warnings.append(f"alpha={cfg.alpha} and top_k={cfg.top_k} are both given: the candidates are the tokens "
                            "that pass both (llm2_eval.candidates)")
    _warn(run.warnings)
    return run


def _write_records(run: _Run, ex: Explorer, appender: JsonlAppender) -> None:
    """Explore the lines still to do, chunk by chunk, appending each record and rewriting the summary after it."""
    cfg, sum_path = run.cfg, summary_path(run.out_path)
    with _Progress(cfg.progress, len(run.todo)) as progress:
        step = cfg.self_batch if cfg.gold == "self" else 1
        for at in range(0, len(run.todo), step):
            lines = [(ln, raw) for _, ln, raw in run.todo[at : at + step]]
            done = run.chunk(ex, lines)
            for _ in range(len(lines) - len(done)):  # bad lines, skipped
                progress.advance()
            for _, record in done:
                if record is None:
                    progress.advance()
                    continue
                appender.write(record)
                s = run.summary(ex.counters, ex.engine, False)
                progress.example_done(s, record, len(run.todo))
                _write_json_atomic(sum_path, s)
            if run.deferred_error is not None:
                run.bad(*run.deferred_error)


def _finish(run: _Run, ex: Explorer) -> dict[str, Any]:
    """The final summary, with the warnings of a run that wrote nothing to train on; written and returned."""
    cfg, c = run.cfg, ex.counters
    final = run.summary(c, ex.engine, True)
    end = []
    if c.examples and not c.response_positions:
        end.append(f"the {c.examples} records hold no response position (does the chat template render the "
                   "solutions?): nothing to train on")
    if cfg.gold == "self" and run.self_failed and not c.examples and not run.resumed:
        end.append(f"--gold self: none of the {len(run.self_failed)} questions was solved in {cfg.self_samples} "
                   "samples, so no record was written")
    if end:
        final["warnings"] = run.warnings + end
        _warn(end)
    _write_json_atomic(summary_path(run.out_path), final)
    return final


def _warn(lines: list[str]) -> None:
    for w in lines:
        Console(stderr=True).print(f"[yellow]{w}[/yellow]", highlight=False, soft_wrap=True)


class _Progress:
    """The rich progress bar of a run (rates per example), plus one log line per example when not on a terminal."""

    def __init__(self, enabled: bool, total: int):
        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]explore"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rates]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, disable=not enabled,
        )
        self.log_lines = enabled and not self.console.is_terminal
        self.total = total

    def __enter__(self) -> "_Progress":
        self.bar.__enter__()
        self.task = self.bar.add_task("explore", total=self.total, rates="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self) -> None:
        self.bar.advance(self.task)

    def example_done(self, s: dict[str, Any], record: dict, todo: int) -> None:
        rates = (
            f"{s['examples_per_s'] or 0:.3f} ex/s  {s['rollouts_per_s'] or 0:.1f} rollouts/s  "
            f"{s['tokens_per_s'] or 0:.1f} tok/s"
        )
        self.bar.update(self.task, advance=1, rates=rates)
        if self.log_lines:
            self.console.print(
                f"[{s['examples']}/{todo}] id={record['id']} " + (
                    f"right={record['right']}/{len(record['outcomes'])} " if "outcomes" in record else
                    f"positions={len(record['positions'])} negatives={len(record['samples'])} ")
                + f"rollouts={record['rollouts']} "
                f"{record['seconds']:.1f}s | {rates}",
                highlight=False,
                soft_wrap=True,
            )
