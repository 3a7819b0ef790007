"""Uncertainty in the report: a 95% interval per accuracy, and paired differences against a baseline run.

- :func:`add_intervals`: each row's accuracy (exact match / maj@k) gets a Wilson score interval over its
  questions, and its pass@1 (mean of k samples per question) a bootstrap interval over questions
  (:mod:`llm2_eval.report.stats`). Per-question scores come from the logged samples; without them the accuracy's
  interval is computed from the results' accuracy and question count.
- :func:`add_paired`: ``llm2 report RUN... --baseline RUN_DIR``: for every other run of a task the baseline ran,
  the difference in accuracy on the same questions (matched by lm-eval's ``doc_id``), its paired bootstrap
  interval and the questions won, lost and tied; for self-consistency runs, the same for pass@1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from llm2_eval.report.row import ReportRow
from llm2_eval.report.runs import ReportError
from llm2_eval.report.stats import (
    RESAMPLES,
    SEED,
    accuracy_interval,
    bootstrap_mean_interval,
    doc_order,
    paired_difference,
    wilson_interval,
)

# metrics scored 0/1 per question, whose interval the results' accuracy and n determine (Wilson)
_BINARY_METRICS = ("exact_match", "maj_at_k", "acc")


def _ordered(scores: dict[str, float]) -> list[float]:
    return [scores[k] for k in doc_order(scores)]


def add_intervals(rows: Sequence[ReportRow], *, resamples: int = RESAMPLES, seed: int = SEED) -> None:
    """Set ``accuracy_ci`` and ``pass_at_1_ci`` (95%) of each row where its data allow.

    Accuracy: Wilson over the per-question 0/1 scores of the logged samples (a bootstrap if they are not 0/1);
    without samples, Wilson from the results' accuracy times the question count (a note says so). pass@1: the
    percentile bootstrap (``resamples`` draws, ``seed``) over the per-question pass@1 of the logged samples.
    A row whose samples disagree with its results file gets a note.
    """
    for r in rows:
        if r.scores_by_doc:
            values = _ordered(r.scores_by_doc)
            r.accuracy_ci = accuracy_interval(values, resamples=resamples, seed=seed)
            mean = sum(values) / len(values)
            if r.accuracy is not None and abs(mean - r.accuracy) > 1e-6:
                r.notes.append(f"accuracy of the logged samples {100 * mean:.2f}% differs from the results' "
                               f"{100 * r.accuracy:.2f}%: intervals and paired differences use the samples")
        elif r.accuracy is not None and r.n_questions and r.accuracy_metric \
                and r.accuracy_metric.split(",")[0] in _BINARY_METRICS:
            successes = r.accuracy * r.n_questions
            if abs(successes - round(successes)) < 1e-6:
                r.accuracy_ci = wilson_interval(int(round(successes)), r.n_questions)
                r.notes.append("accuracy interval from the results' accuracy and question count (no samples)")
        if r.pass_at_1_by_doc:
            r.pass_at_1_ci = bootstrap_mean_interval(_ordered(r.pass_at_1_by_doc), resamples=resamples, seed=seed)


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _why_no_scores(r: ReportRow) -> str:
    if r.samples_file is None:
        return "its samples were not logged (rerun lm_eval with --log_samples)"
    metric = (r.accuracy_metric or "?").split(",")[0]
    return f"its samples file {Path(r.samples_file).name} has no per-question {metric}"


def add_paired(
    rows: Sequence[ReportRow], baseline: str | Path, *, resamples: int = RESAMPLES, seed: int = SEED
) -> int:
    """Compare every row with the baseline run's row of the same task (``--baseline``), on the same questions.

    Marks the baseline's rows (``is_baseline``) and sets ``paired`` on the others that share a task with it:
    the mean per-question difference in accuracy (run minus baseline), its paired percentile bootstrap interval
    (``resamples`` draws with replacement of the questions, numpy seeded with ``seed``) and the questions won,
    lost and tied (:func:`llm2_eval.report.stats.paired_difference`). Where both runs also scored pass@1 per
    question (self-consistency tasks), ``paired_pass_at_1`` holds the same comparison of pass@1: the per-sample
    effect, which the vote of maj@k can hide or magnify (same resamples and seed).

    Args:
        rows: the report's rows, the baseline's among them (``run_dir`` equal to ``baseline``).
        baseline: the baseline's run directory (or results file), as given to the report.

    Returns:
        The number of rows compared.

    Raises:
        ReportError: no rows come from ``baseline``; it holds two results of one task; no other run shares a
            task with it; a compared run or the baseline has no per-question scores (samples not logged); the
            two runs' question sets differ (different ``doc_id`` s, or a ``doc_id`` whose ``doc_hash`` differs);
            they measured different accuracy metrics.
    """
    base_rows = [r for r in rows if r.run_dir is not None and _same_dir(r.run_dir, baseline)]
    if not base_rows:
        raise ReportError(f"--baseline {baseline}: no results were read from it")
    by_task: dict[str, ReportRow] = {}
    for b in base_rows:
        if b.task in by_task:
            raise ReportError(f"--baseline {baseline} holds two results of task {b.task} ({by_task[b.task].run}, "
                              f"{b.run}): give the directory of one of them")
        by_task[b.task] = b
        b.is_baseline = True
    compared = 0
    for r in rows:
        b = by_task.get(r.task)
        if r.is_baseline or b is None:
            continue
        for x in (b, r):
            if not x.scores_by_doc:
                raise ReportError(f"--baseline: {x.run} / {x.task} has no per-question scores: {_why_no_scores(x)}")
        if (r.accuracy_metric or "").split(",")[0] != (b.accuracy_metric or "").split(",")[0]:
            raise ReportError(f"--baseline: {r.run} / {r.task} measured {r.accuracy_metric}, the baseline "
                              f"{b.run} {b.accuracy_metric}")
        if r.doc_hashes and b.doc_hashes:
            differ = sorted(k for k in r.doc_hashes.keys() & b.doc_hashes.keys() if r.doc_hashes[k] != b.doc_hashes[k])
            if differ:
                raise ReportError(f"--baseline: {r.run} / {r.task} and {b.run} have different questions under the "
                                  f"same doc_id ({len(differ)}, e.g. {differ[:3]}; doc_hash differs): not pairable")
        try:
            r.paired = paired_difference(r.scores_by_doc, b.scores_by_doc, baseline=b.run,
                                         resamples=resamples, seed=seed)
        except ValueError as err:
            raise ReportError(f"--baseline: {r.run} / {r.task} and {b.run} scored {err}: pair runs of the same "
                              "questions (same --limit / --samples)") from err
        if r.pass_at_1_by_doc and b.pass_at_1_by_doc:
            try:
                r.paired_pass_at_1 = paired_difference(r.pass_at_1_by_doc, b.pass_at_1_by_doc, baseline=b.run,
                                                       resamples=resamples, seed=seed)
            except ValueError as err:  # the same questions, but pass@1 missing from some samples
                raise ReportError(f"--baseline: {r.run} / {r.task} and {b.run} have pass@1 for {err}: their "
                                  "samples files are incomplete") from err
        elif bool(r.pass_at_1_by_doc) != bool(b.pass_at_1_by_doc):
            r.notes.append(f"no paired pass@1: only {r.run if r.pass_at_1_by_doc else b.run} has per-question pass@1")
        compared += 1
    if not compared:
        raise ReportError(f"--baseline {baseline}: no other run has one of its tasks ({', '.join(sorted(by_task))})")
    return compared
