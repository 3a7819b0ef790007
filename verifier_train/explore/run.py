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
from typing import TYPE_CHECKING, Any

from llm2_eval.jsonl import iter_jsonl
from llm2_eval.prompts import task_prompt
from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.inputs import (
    BadExample,
    ExploreInputError,
    end_token_ids,
    in_shard,
    iter_input,
    parse_example,
    shard_output_path,
    summary_path,
)
from verifier_train.explore.labels import Counters, Explorer, default_checker
from verifier_train.records import JsonlAppender, _is_json_object, check_chat_template, use_chat_template

if TYPE_CHECKING:  # pragma: no cover
    from verifier_train.rollouts import RolloutEngine


def _load_tokenizer(path: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    use_chat_template(tok, chat_template)
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(f"the tokenizer of {path} has no chat template; exploration tokenises chat messages")
    check_chat_template(tok, f"--chat-template {chat_template}" if chat_template else f"the chat template of {path}")
    return tok


def _device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def _load_hf(path: str, dtype: str, device: str, prepack: bool = False):
    from transformers import AutoModelForCausalLM

    from llm2_eval.verifier import resolve_dtype

    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype)).to(device).eval()
    if prepack:  # llm2_eval.cpu_kernels: raises ValueError off the CPU or for a dtype it cannot pack
        from llm2_eval.cpu_kernels import prepack_linears

        try:
            prepack_linears(model)
        except ValueError as err:
            raise ValueError(f"--cpu-prepack: {path}: {err}") from None
    return model


def _existing_settings(path: Path) -> dict | None:
    """The settings of the first line of an existing output that has them (None: a new output, or one that holds
    no more than a fragment cut by a crash).

    Raises:
        ValueError: the file holds complete lines but none is an exploration record (not an ``llm2 explore``
            output: it is never appended to).
    """
    if not path.exists():
        return None
    for _, obj in iter_jsonl(path, on_error="skip"):
        if isinstance(obj.get("settings"), dict):
            return obj["settings"]
    *complete, fragment = path.read_bytes().split(b"\n")
    # a complete line and no record, or an unterminated last line that is not the start of a record cut by a crash
    # (records begin with their id) or is a whole JSON object (kept, and appended to, on resume)
    start, head = fragment.lstrip(), b'{"id": '
    if any(line.strip() for line in complete) or (start and (
            not (start.startswith(head) or head.startswith(start)) or _is_json_object(fragment))):
        raise ValueError(f"--output {path}: the file exists and is not an llm2 explore output (no line has "
                         "'settings'); choose a new --output")
    return None


def _check_paths(cfg: ExploreConfig, out_path: Path, sum_path: Path) -> None:
    """Refuse a missing model path and an output (or summary) that is an input (before anything is written).

    Raises:
        FileNotFoundError / NotADirectoryError: a model path that does not exist / is a file.
        ValueError: the output or its summary is the data, a model or the chat template.
    """
    from llm2_eval.paths import check_model_path, check_not_an_input, check_parent_dirs

    check_parent_dirs(out_path, "--output")
    check_model_path(cfg.model, "--model")
    contrast = cfg.contrast_model if cfg.strategy == "sample" and cfg.mode == "contrast" else None
    if contrast:
        check_model_path(contrast, "--contrast-model")
    inputs = {"--data": cfg.data, "--model": cfg.model, "--contrast-model": cfg.contrast_model,
              "--chat-template": cfg.chat_template}
    check_not_an_input(out_path, inputs)
    check_not_an_input(sum_path, inputs, option="the summary")
    if sum_path.is_dir():
        raise ValueError(f"the summary {sum_path} of --output {out_path} is a directory; choose another --output")


def _check_unlocked(out_path: Path) -> None:
    """Refuse an existing output that another process is writing (it holds the lock), without changing it.

    Raises:
        llm2_eval.paths.FileLockedError: naming ``--output``.
    """
    from llm2_eval.paths import lock_for_writing

    if out_path.is_file():
        f = out_path.open("rb")
        lock_for_writing(f, f"--output {out_path}")
        f.close()


def _check_resume(out_path: Path, old: dict | None, new: dict, warnings: list[str]) -> None:
    """Refuse to resume an output written with other settings or from another input (by content); an output
    of an earlier version, without the input's identity, resumes with a warning appended to ``warnings``.

    Raises:
        ValueError: naming the settings that differ, or the two inputs.
    """
    from llm2_eval.paths import same_content

    if old is None:
        return
    old = dict(old)
    old_input, new_input = old.pop("input", None), new.get("input") or {}
    rest = {k: v for k, v in new.items() if k != "input"}
    if old != rest:
        diff = sorted(k for k in set(old) | set(rest) if old.get(k) != rest.get(k))
        raise ValueError(
            f"{out_path} was written with other settings ({', '.join(diff)}); resume with the same options or "
            "choose a new --output"
        )
    if old_input is None:
        warnings.append(f"{out_path} records no input identity (written by an earlier version): cannot check that "
                        "--data is the input it was explored from")
    elif not same_content(old_input, new_input):
        raise ValueError(
            f"{out_path} was explored from another input ({old_input.get('path')}: {old_input.get('size')} bytes, "
            f"sha256 {str(old_input.get('sha256'))[:12]}) than --data {new_input.get('path')} "
            f"({new_input.get('size')} bytes, sha256 {str(new_input.get('sha256'))[:12]}); choose a new --output"
        )


def _missing_paths(path: Path) -> list[Path]:
    """``path`` and its missing parent folders, innermost first (empty when ``path`` exists)."""
    out = []
    while not path.exists() and path.parent != path:
        out.append(path)
        path = path.parent
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no partial or empty temporary file is left behind
        raise


def _build_engines(cfg: ExploreConfig, tokenizer: Any, engine: "RolloutEngine | None") -> tuple[Any, Any, set[int]]:
    """``(engine, contrast engine or None, end-of-turn ids)``, loading the models the settings name."""
    device = _device(cfg.device)
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(int(cfg.threads))
    model_config = gen_config = None
    if engine is None:
        from verifier_train.rollouts import HFRolloutEngine, VLLMRolloutEngine

        if cfg.backend == "vllm":
            engine = VLLMRolloutEngine(
                cfg.model, dtype=cfg.dtype, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size,
                logprobs_k=cfg.vllm_logprobs, threads=cfg.threads, engine_kwargs=cfg.vllm_args,
            )
        else:
            model = _load_hf(cfg.model, cfg.dtype, device, cfg.cpu_prepack)
            model_config, gen_config = model.config, getattr(model, "generation_config", None)
            engine = HFRolloutEngine(model, batch_rows=cfg.batch_rows)
    else:
        model = getattr(engine, "model", None)
        model_config = getattr(model, "config", None)
        gen_config = getattr(model, "generation_config", None)
    contrast = None
    if cfg.strategy == "sample" and cfg.contrast_model:  # contrast / expert, or base / uniform restricted to both
        from llm2_eval.verifier import check_tokenizers_compatible
        from verifier_train.rollouts import HFRolloutEngine

        check_tokenizers_compatible(tokenizer, _load_tokenizer(cfg.contrast_model), llm_name="LLM",
                                    verifier_name="contrast model")
        contrast = HFRolloutEngine(_load_hf(cfg.contrast_model, cfg.dtype, device, cfg.cpu_prepack))
    # the engine's own EOS ids too: a vLLM engine holds no transformers model to read them from
    ends = end_token_ids(tokenizer, model_config, gen_config) | set(getattr(engine, "eos_token_ids", ()))
    return engine, contrast, ends


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
            from llm2_eval.splits import gsm8k_dev_questions

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

    def prepare(self, ex: Explorer, ln: int, raw: str) -> tuple:
        """Parse one input line: ``(ex_id, question, solution, gold, check)`` (``solution`` None for ``--gold self``).

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
        check = cfg.checker or default_checker(fmt)
        if cfg.prompt == "task":
            question = task_prompt(fmt, question)
        if cfg.gold == "self":
            ex.check_self_prompt(question)
            solution = None
        return ex_id, question, solution, gold, check

    def chunk(self, ex: Explorer, lines: list[tuple[int, str]]) -> list[tuple[int, dict | None]]:
        """Explore input lines ``(line number, text)``: per line explored, ``(line number, record or None)`` (None: a
        ``--gold self`` question without a correct sample). Bad lines fail or are skipped (:meth:`bad`); with
        ``--gold self`` the solutions of all lines are sampled together first, and all lines' rollouts go to the
        engine together (:meth:`Explorer.run_many`).

        Raises:
            ExploreInputError: a bad first line with ``on_error="fail"`` (a bad later line ends the chunk there and
                is kept in ``deferred_error``, raised by the caller once the lines before it are written).
        """
        ready = []
        for ln, raw in lines:
            try:
                ready.append((ln, self.prepare(ex, ln, raw)))
            except BadExample as err:
                if ready and self.cfg.on_error == "fail":  # the lines before it are explored and written first
                    self.deferred_error = (ln, str(err))
                    break
                self.bad(ln, str(err))
        if self.cfg.strategy == "outcome":
            from verifier_train.explore.outcome import outcome_records

            recs = outcome_records(ex, [(i, ln, q, g, c) for ln, (i, q, _, g, c) in ready]) if ready else []
            return [(ln, r) for (ln, _), r in zip(ready, recs)]
        if self.cfg.gold == "self" and ready:
            found = ex.self_solutions([(i, q, g, c) for _, (i, q, _, g, c) in ready])
            ready = [(ln, (i, q, sol, g, c)) for (ln, (i, q, _, g, c)), sol in zip(ready, found)]
        todo = [(ex_id, ln, q, sol, g, c) for ln, (ex_id, q, sol, g, c) in ready if sol is not None]
        explored = iter(ex.run_many(todo, stop_at_bad=self.cfg.on_error == "fail"))  # one batch of rollouts
        out = []
        for ln, (ex_id, _, solution, _, _) in ready:
            if solution is None:
                self.self_failed.append(ex_id)
                out.append((ln, None))
                continue
            got = next(explored)
            if isinstance(got, BadExample):
                if out and self.cfg.on_error == "fail":
                    self.deferred_error = (ln, str(got))  # an earlier line than any deferred in preparation
                    break
                self.bad(ln, str(got))
                continue
            out.append((ln, got))
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


def explore(config: ExploreConfig, *, engine: "RolloutEngine | None" = None) -> dict[str, Any]:
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
    out_path = shard_output_path(cfg.output, cfg.shard)
    sum_path = summary_path(out_path)
    _check_paths(cfg, out_path, sum_path)
    _check_unlocked(out_path)  # before the models load; JsonlAppender takes the lock for good
    run = _Run(cfg, out_path)
    _check_resume(out_path, _existing_settings(out_path), json.loads(json.dumps(cfg.settings())), run.warnings)
    if cfg.top_k and cfg.alpha is not None:
        run.warnings.append(f"alpha={cfg.alpha} and top_k={cfg.top_k} are both given: the candidates are the tokens "
                            "that pass both (llm2_eval.candidates)")
    if run.warnings:
        from rich.console import Console

        for w in run.warnings:
            Console(stderr=True).print(f"[yellow]{w}[/yellow]", highlight=False, soft_wrap=True)
    tokenizer = _load_tokenizer(cfg.model, cfg.chat_template)
    engine, contrast, ends = _build_engines(cfg, tokenizer, engine)
    ex = Explorer(cfg, tokenizer, engine, contrast, ends)
    created = _missing_paths(out_path)  # what this run creates: removed again if it fails before any record
    appender = JsonlAppender(out_path, key="id", name=f"--output {out_path}")
    run.dropped_bytes = appender.dropped_bytes
    run.resume(appender)
    try:
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
                    s = run.summary(ex.c, engine, False)
                    progress.example_done(s, record, len(run.todo))
                    _write_json_atomic(sum_path, s)
                if run.deferred_error is not None:
                    run.bad(*run.deferred_error)
    except BaseException:
        appender.close()
        if created and out_path.stat().st_size == 0:  # a refusal leaves no empty output behind
            out_path.unlink()
            for d in created[1:]:
                try:
                    d.rmdir()
                except OSError:  # something else was put there meanwhile: kept
                    break
        raise
    appender.close()
    final = run.summary(ex.c, engine, True)
    end = []
    if ex.c.examples and not ex.c.response_positions:
        end.append(f"the {ex.c.examples} records hold no response position (does the chat template render the "
                   "solutions?): nothing to train on")
    if cfg.gold == "self" and run.self_failed and not ex.c.examples and not run.resumed:
        end.append(f"--gold self: none of the {len(run.self_failed)} questions was solved in {cfg.self_samples} "
                   "samples, so no record was written")
    if end:
        from rich.console import Console

        final["warnings"] = run.warnings + end
        for w in end:
            Console(stderr=True).print(f"[yellow]{w}[/yellow]", highlight=False, soft_wrap=True)
    _write_json_atomic(sum_path, final)
    return final


class _Progress:
    """The rich progress bar of a run (rates per example), plus one log line per example when not on a terminal."""

    def __init__(self, enabled: bool, total: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

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
