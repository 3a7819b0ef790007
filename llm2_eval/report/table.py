"""The report as a table: one row per (run, task), on the console (rich) and in ``report.md`` (markdown)."""

from __future__ import annotations

from typing import Sequence

from llm2_eval.report.rows import ReportRow

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
