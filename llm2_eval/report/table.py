"""The report as a table: one row per (run, task), on the console (rich) and in ``report.md`` (markdown)."""

from __future__ import annotations

from typing import Sequence

from llm2_eval.report.row import ReportRow

_COLUMNS = (
    "run", "task", "method", "model", "n", "accuracy %", "95% CI", "pass@1 %", "pass@1 95% CI",
    "LLM fwd", "verifier fwd", "total fwd", "LLM fwd/q", "verifier fwd/q", "total fwd/q", "flips/q",
    "wall s", "decode s", "compute",
)
# with --baseline, after the accuracy columns
_PAIRED_COLUMNS = ("Δ vs baseline (pts)", "won/lost/tied", "sign test p")
# with --baseline, when some compared run has pass@1 (maj@k): its paired difference, after the paired columns
_PAIRED_PASS_COLUMN = "pass@1 Δ (pts)"
_TEXT_COLUMNS = ("run", "task", "method", "model", "compute")


def columns(rows: Sequence[ReportRow]) -> list[str]:
    """The report's column names: the paired columns only when some row was compared with a baseline, the pass@1
    one only when some compared row has a paired pass@1 difference."""
    cols = list(_COLUMNS)
    if any(r.paired is not None or r.is_baseline for r in rows):
        at = cols.index("pass@1 95% CI") + 1
        cols[at:at] = _PAIRED_COLUMNS
        if any(r.paired_pass_at_1 is not None for r in rows):
            cols.insert(at + len(_PAIRED_COLUMNS), _PAIRED_PASS_COLUMN)
    return cols


def _fmt_count(value: float | None, estimated: bool) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.1f}"
    return f"~{text}" if estimated and value else text


def _fmt_flips(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _fmt_ci(interval) -> str:
    return "n/a" if interval is None else f"[{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _fmt_difference(p) -> str:
    iv = p.interval
    return f"{100 * p.difference:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]"


def _paired_cells(row: ReportRow, with_pass: bool) -> list[str]:
    if row.is_baseline:
        return ["baseline", "", ""] + ([""] if with_pass else [])
    p = row.paired
    pass_cell = ([_fmt_difference(row.paired_pass_at_1) if row.paired_pass_at_1 is not None else "n/a"]
                 if with_pass else [])
    if p is None:
        return ["n/a", "n/a", "n/a"] + pass_cell
    q = p.sign_test_p
    sign = "<0.001" if q < 0.001 else f"{q:.3f}" if q < 0.1 else f"{q:.2f}"
    return [_fmt_difference(p), f"{p.won}/{p.lost}/{p.tied}", sign] + pass_cell


def row_cells(row: ReportRow, paired: bool = False, paired_pass: bool = False) -> list[str]:
    """The table cells of one row, in the order of :func:`columns` (``~`` marks an estimate; ``paired``: with
    the columns of a ``--baseline`` comparison; ``paired_pass``: with its pass@1 column too)."""
    est = row.estimated
    wall = "n/a" if row.wall_seconds is None else f"{row.wall_seconds:.1f}"
    if row.wall_seconds is not None and row.wall_shared_by > 1:
        wall += f" (all {row.wall_shared_by} tasks)"
    return [
        row.run, row.task, row.label, row.model, "n/a" if row.n_questions is None else str(row.n_questions),
        _fmt_pct(row.accuracy), _fmt_ci(row.accuracy_ci), _fmt_pct(row.pass_at_1), _fmt_ci(row.pass_at_1_ci),
        *(_paired_cells(row, paired_pass) if paired else []),
        _fmt_count(row.llm_token_forwards, est), _fmt_count(row.verifier_token_forwards, False),
        _fmt_count(row.total_token_forwards, est),
        _fmt_count(row.per_question(row.llm_token_forwards), est),
        _fmt_count(row.per_question(row.verifier_token_forwards), False),
        _fmt_count(row.per_question(row.total_token_forwards), est),
        _fmt_flips(row.per_question(row.flips)),
        wall, "n/a" if row.decode_seconds is None else f"{row.decode_seconds:.1f}",
        row.compute_source + (" (estimated)" if est else ""),
    ]


def _flags(cols: Sequence[str]) -> dict[str, bool]:
    return {"paired": _PAIRED_COLUMNS[0] in cols, "paired_pass": _PAIRED_PASS_COLUMN in cols}


def rich_table(rows: Sequence[ReportRow]):
    """The report as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title="LLM2 report: accuracy vs compute (fwd = token forwards, /q = per question, ~ = estimated)",
                  caption=_legend(rows))
    cols = columns(rows)
    for name in cols:
        table.add_column(name, justify="left" if name in _TEXT_COLUMNS else "right", overflow="fold")
    for row in rows:
        table.add_row(*row_cells(row, **_flags(cols)))
    return table


def _legend(rows: Sequence[ReportRow]) -> str:
    text = "95% CI: Wilson score interval over questions (accuracy), bootstrap over questions (pass@1)."
    p = next((r.paired for r in rows if r.paired is not None), None)
    if p is not None:
        text += (f" Δ: paired difference in accuracy to the baseline on the same questions, percentage points, "
                 f"with its 95% bootstrap interval over questions ({p.resamples:,} resamples, seed {p.seed}); "
                 "won/lost/tied: questions where the run scored higher than the baseline, lower, the same; "
                 "sign test p: exact two-sided sign test of won vs lost (exact McNemar for 0/1 scores).")
    if any(r.paired_pass_at_1 is not None for r in rows):
        text += (" pass@1 Δ: the same paired difference for pass@1 (the mean accuracy of a question's samples), "
                 "the per-sample effect under the vote (its won/lost/tied and sign test: paired_pass_at_1 in "
                 "report.json).")
    return text


def markdown_table(rows: Sequence[ReportRow]) -> str:
    """The report as a markdown table followed by the rows' notes."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    cols = columns(rows)
    align = ["---" if c in _TEXT_COLUMNS else "---:" for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(esc(c) for c in row_cells(row, **_flags(cols))) + " |")
    lines += ["", "fwd = token forwards (tokens fed through the model), /q = per question, ~ = estimated from the "
              "logged samples (no trace); flips/q = steps where the verifier changed the LLM's top token, per "
              "question (all k samples; from the trace). Wall time is lm-eval's total_evaluation_time_seconds of "
              "the results file; decode time is the sum of the trace's per-sequence seconds. " + _legend(rows)]
    notes = [(r, n) for r in rows for n in r.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {r.run} / {r.task}: {n}" for r, n in notes]
    return "\n".join(lines) + "\n"
