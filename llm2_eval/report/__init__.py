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

Layout: :mod:`~llm2_eval.report.runs` reads the files of a run, :mod:`~llm2_eval.report.compute` counts its token
forwards, :mod:`~llm2_eval.report.rows` makes the rows, :mod:`~llm2_eval.report.table` and
:mod:`~llm2_eval.report.plot` show them; this module writes the report and holds the ``llm2 report`` command::

    llm2 report runs/gsm8k100_hf runs/gsm8k100_llm2 --output report/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from llm2_eval.report.compute import TokenCounter
from llm2_eval.report.plot import plot_accuracy_vs_compute
from llm2_eval.report.rows import METHODS, ReportRow, classify_method, collect_rows, task_family, uses_verifier
from llm2_eval.report.runs import (
    ReportError,
    find_results_files,
    parse_model_args,
    read_json,
    read_samples,
    read_trace,
)
from llm2_eval.report.table import markdown_table, rich_table, row_cells

__all__ = [
    "METHODS", "Report", "ReportError", "ReportRow", "TokenCounter", "classify_method", "collect_rows",
    "find_results_files", "markdown_table", "parse_model_args", "plot_accuracy_vs_compute", "read_json",
    "read_samples", "read_trace", "report_command", "rich_table", "row_cells", "task_family", "uses_verifier",
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
