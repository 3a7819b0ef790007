"""``llm2 report``: accuracy against compute over lm-eval output directories.

The last step of the data flow (docs/architecture.md): ``lm_eval ... --output_path RUN_DIR --log_samples`` writes
``RUN_DIR/<model>/results_<timestamp>.json`` and ``samples_<task>_<timestamp>.jsonl``; the ``llm2`` model with
``trace=PATH.jsonl`` also writes one JSON line per generated sequence. This module reads them and makes

- one row per (run, task): method (greedy, LLM2, maj@k, LLM2+maj@k), accuracy (``exact_match``; ``maj_at_k`` and
  ``pass_at_1`` for self-consistency tasks), LLM and verifier token forwards (totals and per question) and wall
  time;
- a 95% interval per accuracy (Wilson over questions; pass@1: bootstrap over questions) and, with
  ``--baseline RUN_DIR``, each run's paired difference in accuracy to the baseline on the same questions, its
  95% paired bootstrap interval and the questions won / lost / tied, and for self-consistency runs the same
  paired difference of pass@1 (:mod:`~llm2_eval.report.compare`);
- a rich table on the console, ``report.md`` (markdown table) and ``report.json`` in the output directory;
- ``accuracy_vs_compute.png``: accuracy against token forwards per question, one panel per task family
  (gsm8k, math500, ...), so that methods can be compared at equal compute (docs/method.md section 8).

Compute comes from the traces when there are any (exact counts). Without traces (``--model hf``, or ``llm2``
without ``trace=``) the LLM token forwards are *estimated* from the logged samples: prompt tokens (once per
question for ``llm2``, whose repeats share the prompt; once per sample for other models) plus the tokens of every
generation, counted with the run's tokenizer (the ``pretrained=`` model arg, loaded locally only) or, when that is
not available, as characters / 4. Estimated numbers are marked ``~`` in the tables and drawn hollow in the plot.

Only the standard library is imported at module level; rich, matplotlib and transformers are imported where used.

A trace counts only for the run that wrote it: ``llm2`` stamps each trace with a run id that lm-eval also saves
in the results (:mod:`llm2_eval.trace`); a trace rewritten by another run is ignored with a note.

Layout: :mod:`~llm2_eval.report.runs` reads the files of a run, :mod:`~llm2_eval.report.compute` counts its token
forwards, :mod:`~llm2_eval.report.rows` makes the rows (the row type: :mod:`~llm2_eval.report.row`),
:mod:`~llm2_eval.report.stats` and :mod:`~llm2_eval.report.compare` add their uncertainty,
:mod:`~llm2_eval.report.table` and :mod:`~llm2_eval.report.plot` show them; this module writes the report and holds the ``llm2 report`` command::

    llm2 report runs/gsm8k100_hf runs/gsm8k100_llm2 --output report/
    llm2 report runs/gsm8k300_llm2 --baseline runs/gsm8k300_greedy --output report/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from llm2_eval.report.compare import add_intervals, add_paired
from llm2_eval.report.compute import TokenCounter
from llm2_eval.report.plot import plot_accuracy_vs_compute
from llm2_eval.report.row import METHODS, ReportRow
from llm2_eval.report.rows import classify_method, collect_rows, task_family, uses_verifier
from llm2_eval.report.runs import ReportError, find_results_files, parse_model_args, read_json, read_samples
from llm2_eval.report.stats import RESAMPLES, SEED, Interval, PairedDifference
from llm2_eval.report.table import markdown_table, rich_table, row_cells

__all__ = [
    "METHODS", "Interval", "PairedDifference", "Report", "ReportError", "ReportRow", "TokenCounter",
    "add_intervals", "add_paired", "classify_method", "collect_rows",
    "find_results_files", "markdown_table", "parse_model_args", "plot_accuracy_vs_compute", "read_json",
    "read_samples", "report_command", "rich_table", "row_cells", "task_family", "uses_verifier",
    "write_report",
]


@dataclass
class Report:
    """What :func:`write_report` produced."""

    rows: list[ReportRow]
    markdown: Path
    json: Path
    plot: Path


def write_report(
    run_dirs: Sequence[str | Path], output: str | Path, *, tokenizer: str | None = None, console: Any = None,
    baseline: str | Path | None = None, resamples: int = RESAMPLES, seed: int = SEED,
) -> Report:
    """Read the runs, print the table (to ``console``, a ``rich.console.Console``; none = no printing) and write
    ``report.md``, ``report.json`` and ``accuracy_vs_compute.png`` into ``output`` (created if missing).

    Every accuracy gets its 95% interval (:func:`~llm2_eval.report.compare.add_intervals`); with ``baseline``
    (a run directory, added to the runs when not among them) every other run of one of its tasks gets the
    paired difference to it (:func:`~llm2_eval.report.compare.add_paired`). Bootstraps draw ``resamples``
    resamples of the questions from numpy's generator seeded with ``seed``.

    Raises:
        ReportError: see :func:`collect_rows` and :func:`~llm2_eval.report.compare.add_paired`; also when
            ``run_dirs`` is empty or ``output`` is not a directory. Nothing is written then.
    """
    if not run_dirs:
        raise ReportError("no run directories given")
    run_dirs = list(run_dirs)
    if baseline is not None and not Path(baseline).exists():
        raise ReportError(f"--baseline {baseline} does not exist")
    if baseline is not None and not any(Path(d).resolve() == Path(baseline).resolve() for d in run_dirs):
        run_dirs.append(baseline)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--output {out} exists and is not a directory")
    rows = collect_rows(run_dirs, tokenizer=tokenizer)
    add_intervals(rows, resamples=resamples, seed=seed)
    if baseline is not None:
        add_paired(rows, baseline, resamples=resamples, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    if console is not None:
        console.print(rich_table(rows))
        for r in rows:
            for note in r.notes:
                console.print(f"[dim]note[/dim] {r.run} / {r.task}: {note}", markup=True, highlight=False)
    md = out / "report.md"
    md.write_text(markdown_table(rows), encoding="utf-8")
    js = out / "report.json"
    payload = {
        "runs": [str(Path(d)) for d in run_dirs], "baseline": None if baseline is None else str(Path(baseline)),
        "confidence": 0.95, "resamples": resamples, "seed": seed, "rows": [r.to_dict() for r in rows],
    }
    js.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    png = plot_accuracy_vs_compute(rows, out / "accuracy_vs_compute.png")
    return Report(rows=rows, markdown=md, json=js, plot=png)


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.md, report.json and accuracy_vs_compute.png (created if missing).")
@click.option("--tokenizer", default=None,
              help="Tokenizer (local path) to count tokens of runs without trace; default: each run's pretrained=.")
@click.option("--baseline", default=None, type=click.Path(path_type=Path),
              help="Run directory to compare the others with: paired difference in accuracy on the same "
                   "questions (needs --log_samples), 95% bootstrap interval, questions won/lost/tied; "
                   "for maj@k runs also the paired difference of pass@1.")
@click.option("--resamples", default=RESAMPLES, show_default=True, type=click.IntRange(min=100),
              help="Bootstrap resamples of the questions (pass@1 intervals, paired differences).")
@click.option("--seed", default=SEED, show_default=True, type=int, help="Seed of the bootstrap.")
def report_command(run_dirs: tuple[Path, ...], output: Path, tokenizer: str | None, baseline: Path | None,
                   resamples: int, seed: int) -> None:
    """Accuracy vs compute over lm-eval output directories (RUN_DIRS: what lm_eval --output_path wrote).

    Prints one row per (run, task): method (greedy, LLM2, maj@k, LLM2+maj@k), accuracy with its 95% interval,
    LLM and verifier token forwards (from the llm2 model's trace=; estimated from the logged samples otherwise,
    marked ~) and wall time; with --baseline, each run's paired difference in accuracy to the baseline on the
    same questions (and of pass@1, for maj@k runs). Writes report.md, report.json and accuracy_vs_compute.png
    into --output.
    """
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=220)
    try:
        rep = write_report(run_dirs, output, tokenizer=tokenizer, console=console, baseline=baseline,
                           resamples=resamples, seed=seed)
    except ReportError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {rep.markdown}, {rep.json} and {rep.plot}")
