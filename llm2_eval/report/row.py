"""The report's row type: one (run, task), what it did (method, accuracy) and what it cost (token forwards, time).

:mod:`~llm2_eval.report.rows` reads runs into rows, :mod:`~llm2_eval.report.compute` counts their compute,
:mod:`~llm2_eval.report.compare` adds their uncertainty, :mod:`~llm2_eval.report.table` and
:mod:`~llm2_eval.report.plot` show them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from llm2_eval.report.stats import Interval, PairedDifference

#: the four methods the report compares, plus single-sample sampling runs (k = 1 with do_sample)
METHODS = ("greedy", "LLM2", "maj@k", "LLM2+maj@k", "sample", "LLM2+sample")


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
    flips: float | None = None  # verifier-changed choices, summed over the trace's sequences (None without trace)
    notes: list[str] = field(default_factory=list)
    run_dir: str | None = None  # the directory (or results file) given to the report
    # uncertainty (llm2_eval.report.compare): 95% intervals, and the paired difference to a --baseline run
    accuracy_ci: Interval | None = None
    pass_at_1_ci: Interval | None = None
    paired: PairedDifference | None = None
    paired_pass_at_1: PairedDifference | None = None  # the same for pass@1, where both runs have it (maj@k)
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
        d["flips_per_question"] = self.per_question(self.flips)
        return d


_PER_QUESTION = ("scores_by_doc", "pass_at_1_by_doc", "doc_hashes")
