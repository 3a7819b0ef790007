"""``llm2 report`` uncertainty: Wilson and bootstrap intervals, paired differences against ``--baseline``, and the
run stamp that ties a trace to its run, on fabricated lm-eval output directories whose answers are known."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm2_eval.cli import main as cli_main
from llm2_eval.report import ReportError, add_intervals, collect_rows, write_report
from llm2_eval.report.stats import (
    accuracy_interval,
    bootstrap_mean_interval,
    paired_difference,
    wilson_interval,
)
from test_report import make_run, trace_line

TASK = "gsm8k_llm2"
N = 50
GREEDY_KW = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 64}


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("successes, n, low, high", [
    # by hand: centre = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2), z = 1.96
    (8, 10, 0.4902, 0.9433),
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (27, 100, 0.1927, 0.3643),
])
def test_wilson_matches_hand_computed_values(successes, n, low, high):
    iv = wilson_interval(successes, n)
    assert iv.method == "wilson"
    assert iv.low == pytest.approx(low, abs=5e-5) and iv.high == pytest.approx(high, abs=5e-5)


def test_wilson_rejects_bad_counts():
    for args in ((3, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError, match="Wilson"):
            wilson_interval(*args)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(3, 10, confidence=1.0)


def test_accuracy_interval_wilson_for_binary_bootstrap_otherwise():
    assert accuracy_interval([1.0] * 8 + [0.0] * 2) == wilson_interval(8, 10)
    iv = accuracy_interval([0.5, 0.25, 1.0, 0.75] * 10, seed=1)
    assert iv.method == "bootstrap" and iv.low < 0.625 < iv.high


def test_bootstrap_mean_interval_seeded_and_near_normal_theory():
    rng = random.Random(0)
    values = [rng.random() for _ in range(400)]
    a = bootstrap_mean_interval(values, seed=3)
    assert a == bootstrap_mean_interval(values, seed=3)
    assert a != bootstrap_mean_interval(values, seed=4)  # continuous values: another seed moves the quantiles
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    half = 1.96 * sd / math.sqrt(len(values))
    assert a.low == pytest.approx(mean - half, abs=0.004) and a.high == pytest.approx(mean + half, abs=0.004)


def test_paired_difference_counts_interval_and_seed():
    # 100 questions: the run fixes 20 of the baseline's errors and breaks 5 of its right answers
    base = {str(i): float(i < 40) for i in range(100)}
    run = dict(base)
    for i in range(40, 60):
        run[str(i)] = 1.0
    for i in range(5):
        run[str(i)] = 0.0
    p = paired_difference(run, base, baseline="greedy", seed=0)
    assert (p.won, p.lost, p.tied, p.n) == (20, 5, 75, 100)
    # exact sign test: 2 * P(Bin(25, 1/2) <= 5) = 2 * 15276 / 2**25
    assert p.sign_test_p == pytest.approx(2 * sum(math.comb(25, i) for i in range(6)) / 2 ** 25)
    assert p.sign_test_p < 0.01
    assert p.difference == pytest.approx(0.15) and p.baseline == "greedy"
    assert p.interval.contains(0.15) and p.interval.low > 0  # 15 points on 100 questions: above 0
    # normal theory for the mean of d in {-1, 0, 1}: sd = sqrt(E[d^2] - mean^2)
    half = 1.96 * math.sqrt((0.25 - 0.15 ** 2) / 100)
    assert p.interval.low == pytest.approx(0.15 - half, abs=0.012)
    assert p.interval.high == pytest.approx(0.15 + half, abs=0.012)
    assert paired_difference(run, base, seed=0).interval == p.interval  # deterministic for a seed
    same = paired_difference(base, base)
    assert (same.difference, same.interval.low, same.interval.high, same.won, same.lost) == (0, 0, 0, 0, 0)
    assert same.sign_test_p == 1.0
    with pytest.raises(ValueError, match="1 doc_ids only in the run"):
        paired_difference({**run, "100": 1.0}, base)


# ---------------------------------------------------------------- runs with known answers


def em_samples(correct: dict[int, int], hashes: dict[int, str] | None = None) -> list[dict]:
    """lm-eval sample lines of a greedy exact-match task: doc i answered right iff correct[i]."""
    return [{
        "doc_id": i, "doc": {"question": f"q{i}"}, "target": "1",
        "arguments": {"gen_args_0": {"arg_0": f"Question {i}?", "arg_1": GREEDY_KW}},
        "resps": [[f"The answer is {1 if ok else 0}."]], "filtered_resps": [f"The answer is {1 if ok else 0}."],
        "filter": "none", "metrics": ["exact_match"], "exact_match": float(ok),
        "doc_hash": (hashes or {}).get(i, f"hash{i}"),
    } for i, ok in correct.items()]


def em_run(root: Path, name: str, correct: dict[int, int], *, model: str = "hf", model_args: str = "pretrained=/x",
           samples: bool = True, hashes: dict[int, str] | None = None, config: dict | None = None) -> Path:
    """A run of TASK with the given answers (and the results' config updated with ``config``)."""
    acc = sum(correct.values()) / len(correct)
    run = make_run(root, name, model, model_args, {TASK: {
        "results": {"exact_match,none": acc}, "repeats": 1, "do_sample": False,
        "samples": em_samples(correct, hashes) if samples else None}})
    results = next(run.rglob("results_*.json"))
    data = json.loads(results.read_text())
    data["config"].update(config or {})
    data["n-samples"][TASK]["effective"] = len(correct)
    results.write_text(json.dumps(data))
    return run


BASE = {i: int(i % 5 != 0) for i in range(N)}  # 40 of 50 right: wrong on 0, 5, 10, ...
WON = {0, 5, 10, 15, 20, 25, 30, 35}  # the LLM2 run fixes 8 of those ...
LOST = {1, 2, 3}  # ... and breaks 3
LLM2 = {i: int(i in WON or (BASE[i] and i not in LOST)) for i in range(N)}


@pytest.fixture
def pair(tmp_path):
    return (em_run(tmp_path, "greedy", BASE),
            em_run(tmp_path, "llm2", LLM2, model="llm2", model_args="pretrained=/x,verifier=/v,beta=0.25"))


def test_intervals_on_rows(pair):
    rows = collect_rows(pair)
    add_intervals(rows)
    by = {r.run: r for r in rows}
    assert by["greedy"].accuracy == 0.8 and by["greedy"].accuracy_ci == wilson_interval(40, 50)
    assert by["llm2"].accuracy == 0.9 and by["llm2"].accuracy_ci == wilson_interval(45, 50)
    assert by["greedy"].pass_at_1_ci is None


def maj_task(pass1):
    """A maj@8 task whose question i has pass@1 ``pass1[i]`` (in eighths) and a right vote when it is >= 1/2."""
    lines = [{"doc_id": i, "arguments": {}, "resps": [["a"] * 8], "filter": "none",
              "metrics": ["maj_at_k", "pass_at_1"], "maj_at_k": float(v >= 0.5), "pass_at_1": v}
             for i, v in pass1.items()]
    return {"gsm8k_llm2_maj": {
        "results": {"maj_at_k,none": sum(v >= 0.5 for v in pass1.values()) / len(pass1),
                    "pass_at_1,none": sum(pass1.values()) / len(pass1)},
        "repeats": 8, "do_sample": True, "samples": lines}}


def maj_run(tmp_path, name, pass1, model_args="pretrained=/x"):
    return make_run(tmp_path, name, "llm2", model_args, maj_task(pass1))


def markdown_cells(md: str) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """The header and the cells by (run, task) of a report.md table; every line must have the header's width."""
    table = [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines() if line.startswith("| ")]
    assert all(len(t) == len(table[0]) for t in table)
    return table[0], {(t[0], t[1]): t for t in table[1:]}


def test_pass_at_1_interval_and_no_samples_fallback(tmp_path):
    values = [0.0, 0.125, 1.0, 0.375, 0.875, 0.25, 0.625, 0.5, 0.75, 1.0, 0.0, 0.125]
    pass1 = dict(enumerate(values))  # 12 questions: "10" < "2" as text, so the two orders differ
    in_file = {i: pass1[i] for i in (7, 11, 0, 3, 10, 1, 9, 2, 5, 8, 4, 6)}  # the file in neither order
    maj = make_run(tmp_path, "maj", "hf", "pretrained=/x", maj_task(in_file))
    nosamples = em_run(tmp_path, "nos", BASE, samples=False)
    rows = collect_rows([maj, nosamples])
    add_intervals(rows, seed=5)
    by = {r.run: r for r in rows}
    assert by["maj"].accuracy_ci == wilson_interval(6, 12)
    # questions in numeric doc order, the order paired_difference uses too, not as text or as the file has them
    as_text = bootstrap_mean_interval([pass1[int(k)] for k in sorted(map(str, pass1))], seed=5)
    assert by["maj"].pass_at_1_ci == bootstrap_mean_interval(values, seed=5) != as_text
    assert by["maj"].pass_at_1_ci.contains(sum(values) / 12)
    # no samples: Wilson from the results' accuracy and n-samples' question count, with a note
    assert by["nos"].accuracy_ci == wilson_interval(40, 50)
    assert any("no samples" in n for n in by["nos"].notes)


def test_baseline_pairs_pass_at_1_of_maj_runs(tmp_path):
    base = {i: (i % 9) / 8 for i in range(40)}  # pass@1 0, 1/8, ..., 1
    # the verifier adds 2 right samples where i % 4 == 0 and takes one away where i % 8 == 1 (within [0, 1])
    run = {i: min(1.0, max(0.0, v + (0.25 if i % 4 == 0 else -0.125 if i % 8 == 1 else 0.0)))
           for i, v in base.items()}
    b = maj_run(tmp_path, "maj8", base)
    r = maj_run(tmp_path, "llm2_maj8", run, model_args="pretrained=/x,verifier=/v,beta=1")
    rep = write_report([r], tmp_path / "out", baseline=b, seed=3)
    (row,) = [x for x in rep.rows if x.run == "llm2_maj8"]
    want = paired_difference({str(i): v for i, v in run.items()}, {str(i): v for i, v in base.items()},
                             baseline="maj8", seed=3)
    assert row.paired_pass_at_1 == want and want.difference > 0 and want.won > want.lost > 0
    assert row.paired == paired_difference({str(i): float(v >= 0.5) for i, v in run.items()},
                                           {str(i): float(v >= 0.5) for i, v in base.items()},
                                           baseline="maj8", seed=3)
    md = rep.markdown.read_text()
    assert "| pass@1 Δ (pts) |" in md and "pass@1 Δ: the same paired difference for pass@1" in md
    iv = want.interval
    header, cells = markdown_cells(md)
    at = header.index("pass@1 Δ (pts)")
    maj = "gsm8k_llm2_maj"
    assert cells["llm2_maj8", maj][at] == f"{100 * want.difference:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]"
    assert cells["maj8", maj][at] == ""  # the baseline's own row
    data = json.loads(rep.json.read_text())
    by = {x["run"]: x for x in data["rows"]}
    assert by["llm2_maj8"]["paired_pass_at_1"]["won"] == want.won and by["maj8"]["paired_pass_at_1"] is None


def test_baseline_with_a_greedy_and_a_maj_task_fills_every_cell(tmp_path):
    """One baseline run of two tasks (greedy and maj@8): greedy rows get "n/a" under pass@1 Δ, not a shifted row."""
    base_pass = {i: (i % 9) / 8 for i in range(20)}
    run_pass = {i: min(1.0, v + 0.125) for i, v in base_pass.items()}
    base = make_run(tmp_path, "base", "llm2", "pretrained=/x", {
        TASK: {"results": {"exact_match,none": 0.8}, "repeats": 1, "do_sample": False, "samples": em_samples(BASE)},
        **maj_task(base_pass)})
    run = make_run(tmp_path, "run", "llm2", "pretrained=/x,verifier=/v,beta=1", {
        TASK: {"results": {"exact_match,none": 0.9}, "repeats": 1, "do_sample": False, "samples": em_samples(LLM2)},
        **maj_task(run_pass)})
    rep = write_report([run], tmp_path / "out", baseline=base)
    by = {(r.run, r.task): r for r in rep.rows}
    assert by["run", TASK].paired is not None and by["run", TASK].paired_pass_at_1 is None
    assert by["run", "gsm8k_llm2_maj"].paired_pass_at_1.difference > 0
    header, cells = markdown_cells(rep.markdown.read_text())
    at = header.index("pass@1 Δ (pts)")
    assert cells["run", TASK][at] == "n/a" and cells["base", TASK][at] == ""
    assert cells["run", TASK][header.index("won/lost/tied")] == "8/3/39"
    assert cells["run", "gsm8k_llm2_maj"][at].startswith("+")


def test_baseline_cli_table_json_and_determinism(pair, tmp_path):
    greedy, llm2 = pair
    out = tmp_path / "out"
    res = CliRunner().invoke(cli_main, ["report", str(llm2), "--baseline", str(greedy), "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "report.json").read_text())
    assert data["baseline"] == str(greedy) and data["resamples"] == 10_000 and data["seed"] == 0
    assert sorted(data["runs"]) == sorted([str(llm2), str(greedy)])  # the baseline joins the runs
    rows = {r["run"]: r for r in data["rows"]}
    assert rows["greedy"]["is_baseline"] and rows["greedy"]["paired"] is None
    p = rows["llm2"]["paired"]
    assert (p["won"], p["lost"], p["tied"], p["n"]) == (len(WON), len(LOST), N - len(WON) - len(LOST), N)
    assert p["difference"] == pytest.approx(0.1) and p["baseline"] == "greedy"
    assert p["interval"]["low"] <= 0.1 <= p["interval"]["high"] and p["interval"]["method"] == "bootstrap"
    assert "scores_by_doc" not in rows["llm2"]  # per-question scores stay out of report.json
    iv = wilson_interval(45, 50)
    assert rows["llm2"]["accuracy_ci"] == {"low": iv.low, "high": iv.high, "method": "wilson", "confidence": 0.95}
    md = (out / "report.md").read_text()
    low, high = 100 * p["interval"]["low"], 100 * p["interval"]["high"]
    assert f"| +10.0 [{low:+.1f}, {high:+.1f}] | 8/3/39 | 0.23 |" in md  # 2 * P(Bin(11, 1/2) <= 3) = 0.227
    assert p["sign_test_p"] == pytest.approx(2 * (1 + 11 + 55 + 165) / 2 ** 11)
    assert f"| 90.0 | [{100 * iv.low:.1f}, {100 * iv.high:.1f}] |" in md
    assert "| baseline |" in md and "Δ vs baseline (pts)" in md and "Wilson" in md
    assert "pass@1 Δ" not in md and rows["llm2"]["paired_pass_at_1"] is None  # greedy runs have no pass@1
    assert "+10.0" in res.output and "8/3/39" in res.output
    # the same seed gives the same interval; another seed is accepted and recorded
    again = write_report([llm2], tmp_path / "again", baseline=greedy)
    (row,) = [r for r in again.rows if r.run == "llm2"]
    assert (row.paired.interval.low, row.paired.interval.high) == (p["interval"]["low"], p["interval"]["high"])
    other = write_report([llm2, greedy], tmp_path / "s7", baseline=greedy, seed=7, resamples=2000)
    (row7,) = [r for r in other.rows if r.run == "llm2"]
    assert row7.paired.seed == 7 and row7.paired.resamples == 2000 and row7.paired.interval.contains(0.1)


def test_baseline_refuses_mismatched_questions_and_missing_samples(pair, tmp_path):
    greedy, _ = pair
    runner = CliRunner()

    def fails(run, match):
        res = runner.invoke(cli_main, ["report", str(run), "--baseline", str(greedy), "-o", str(tmp_path / "o")])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output  # ClickException
        assert match in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "o").exists()  # nothing written on a refusal

    fewer = em_run(tmp_path, "fewer", {i: 1 for i in range(N - 1)})
    fails(fewer, "0 doc_ids only in the run")
    shifted = em_run(tmp_path, "shifted", {i + 1: 1 for i in range(N)})
    fails(shifted, "different questions: 1 doc_ids only in the run (e.g. 50), 1 only in the baseline (e.g. 0)")
    rehashed = em_run(tmp_path, "rehashed", LLM2, hashes={3: "other"})
    fails(rehashed, "doc_hash differs")
    unlogged = em_run(tmp_path, "unlogged", LLM2, samples=False)
    fails(unlogged, "--log_samples")
    elsewhere = make_run(tmp_path, "math", "hf", "pretrained=/x", {"math500_llm2": {
        "results": {"exact_match,none": 0.5}, "repeats": 1, "do_sample": False, "samples": None}})
    fails(elsewhere, "no other run has one of its tasks (gsm8k_llm2)")
    res = runner.invoke(cli_main, ["report", str(fewer), "--baseline", str(tmp_path / "nope"),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "--baseline" in res.output and "nope does not exist" in res.output


def test_plot_draws_error_bars(pair, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    calls = []
    real = Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        calls.append((x, y, kwargs["yerr"]))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", spy)
    greedy, llm2 = pair
    rep = write_report([greedy, llm2], tmp_path / "p", baseline=greedy)
    assert len(calls) == 2
    for r in rep.rows:
        ((_, y, yerr),) = [c for c in calls if c[1] == [100 * r.accuracy]]
        assert yerr[0][0] == pytest.approx(100 * (r.accuracy - r.accuracy_ci.low))
        assert yerr[1][0] == pytest.approx(100 * (r.accuracy_ci.high - r.accuracy))


# ---------------------------------------------------------------- trace stamps


def header(run_id):
    return {"llm2_trace": 1, "run_id": run_id, "start_time": "2025-01-02T03:04:05+00:00",
            "model_args": {"beta": 0.25}, "tasks": [TASK], "argv": [], "rank": 0, "world_size": 1}


def traced_run(tmp_path, name, lines, run_id=None):
    trace = tmp_path / f"{name}.trace.jsonl"
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return em_run(tmp_path, name, {0: 1, 1: 0}, model="llm2",
                  model_args=f"pretrained=/x,verifier=/v,trace={trace}",
                  config={"llm2_run_id": run_id} if run_id else None)


def test_trace_of_its_own_run_is_used_another_runs_ignored(tmp_path):
    a, b = "a" * 32, "b" * 32
    mine = [header(a), {**trace_line(TASK, 0, 0, 100, 50), "run_id": a},
            {**trace_line(TASK, 1, 0, 120, 30), "run_id": a}]
    (row,) = collect_rows([traced_run(tmp_path, "own", mine, run_id=a)])
    assert row.compute_source == "trace" and row.total_token_forwards == 300
    assert not any("trace" in n for n in row.notes), row.notes

    # the trace was rewritten by run b that shared the path: ignored, compute estimated from the samples
    (row,) = collect_rows([traced_run(tmp_path, "shared", [header(b), {**trace_line(TASK, 0, 0, 9, 9), "run_id": b}],
                                      run_id=a)])
    assert row.compute_source != "trace" and row.estimated
    assert any(f"belongs to run {b}" in n and a in n and "ignored" in n for n in row.notes)

    # two runs appended to one file: only this run's lines count
    both = [header(b), {**trace_line(TASK, 0, 0, 9999, 9999), "run_id": b}] + mine
    (row,) = collect_rows([traced_run(tmp_path, "both", both, run_id=a)])
    assert row.total_token_forwards == 300 and any("1 lines of other runs ignored" in n for n in row.notes)

    # lines without their own run_id belong to the header above them
    (row,) = collect_rows([traced_run(tmp_path, "hdr", [header(a), trace_line(TASK, 0, 0, 100, 50)], run_id=a)])
    assert row.llm_token_forwards == 100


def test_unstamped_traces(tmp_path):
    old = [trace_line(TASK, 0, 0, 100, 50), trace_line(TASK, 1, 0, 120, 30)]
    # an old run: neither results nor trace stamped -> used, with a warning
    (row,) = collect_rows([traced_run(tmp_path, "old", old)])
    assert row.compute_source == "trace" and row.total_token_forwards == 300
    assert any("cannot check that the trace belongs" in n for n in row.notes)
    # a stamped run whose trace has no stamp -> not its trace
    (row,) = collect_rows([traced_run(tmp_path, "new", old, run_id="c" * 32)])
    assert row.compute_source != "trace" and any("has no run stamp" in n for n in row.notes)
    # an unstamped (old) run whose trace a newer run rewrote -> ignored
    (row,) = collect_rows([traced_run(tmp_path, "rewritten", [header("d" * 32)] + old[:1])])
    assert row.compute_source != "trace" and any("carry no run id" in n and "ignored" in n for n in row.notes)
    # a header without run id is a bad line
    with pytest.raises(ReportError, match="line 1: trace header has no run_id"):
        collect_rows([traced_run(tmp_path, "bad", [{"llm2_trace": 1}] + old)])


def test_sign_test_known_values():
    from llm2_eval.report.stats import sign_test

    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(6, 0) == pytest.approx(2 / 64) and sign_test(0, 6) == sign_test(6, 0)
    assert sign_test(18, 23) == pytest.approx(0.533, abs=0.001)  # the held-out test run of experiments/README.md
    assert 0 < sign_test(700, 500) < 1e-7  # large counts: exact integers, no overflow
    with pytest.raises(ValueError, match="must be >= 0"):
        sign_test(-1, 2)
