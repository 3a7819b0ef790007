"""``llm2 report`` on small fabricated lm-eval output directories (no models are run or downloaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm2_eval.cli import main as cli_main
from llm2_eval.report import (
    ReportError,
    classify_method,
    collect_rows,
    parse_model_args,
    task_family,
    write_report,
)
from tiny_models import build_tokenizer

TS = "2025-01-02T03-04-05.123456"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PROMPTS = {0: "How many apples does she have if she buys 3 and eats 1?", 1: "Each egg costs 2 dollars. Total?"}
GREEDY_KW = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 64}
SAMPLE_KW = {"until": [], "do_sample": True, "temperature": 0.7, "max_gen_toks": 64}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(d)
    return d


def _samples(task: str, k: int, resps_by_doc: dict[int, list[str]], metrics: dict[int, dict]) -> list[dict]:
    out = []
    for doc_id, resps in resps_by_doc.items():
        assert len(resps) == k
        out.append({
            "doc_id": doc_id, "doc": {"question": PROMPTS[doc_id]}, "target": "2",
            "arguments": {"gen_args_0": {"arg_0": PROMPTS[doc_id], "arg_1": SAMPLE_KW if k > 1 else GREEDY_KW}},
            "resps": [resps], "filtered_resps": [resps] if k > 1 else resps, "filter": "none",
            **metrics[doc_id],
        })
    return out


def make_run(root: Path, name: str, model: str, model_args, tasks: dict, wall: float = 12.5,
             sub: str = "model__x", ts: str = TS) -> Path:
    """tasks: {task: {"results": {...}, "repeats": k, "do_sample": bool, "samples": [lines] or None}}"""
    run = root / name
    d = run / sub
    d.mkdir(parents=True, exist_ok=True)
    results = {
        "results": {t: {"alias": t, **spec["results"]} for t, spec in tasks.items()},
        "group_subtasks": {t: [] for t in tasks},
        "configs": {t: {"task": t, "repeats": spec["repeats"],
                        "generation_kwargs": SAMPLE_KW if spec["do_sample"] else GREEDY_KW}
                    for t, spec in tasks.items()},
        "n-samples": {t: {"original": 1319, "effective": 2} for t in tasks},
        "config": {"model": model, "model_args": model_args, "batch_size": 1},
        "date": 1.0, "total_evaluation_time_seconds": str(wall),
    }
    (d / f"results_{ts}.json").write_text(json.dumps(results))
    for t, spec in tasks.items():
        if spec.get("samples") is not None:
            (d / f"samples_{t}_{ts}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in spec["samples"]))
    return run


def trace_line(task, doc_id, repeat, llm, ver, seconds=0.5):
    return {"task": task, "doc_id": doc_id, "repeat": repeat, "steps": 10, "mean_candidates": 2.0,
            "scored_steps": 4, "flips": 1, "mean_score_margin": 0.3, "llm_token_forwards": llm,
            "verifier_token_forwards": ver, "finish_reason": "eos", "seconds": seconds}


@pytest.fixture
def runs(tmp_path, tok_dir):
    """Four runs: hf greedy (tokenizer estimate), hf maj@4 (tokenizer estimate), llm2 with a trace
    (LLM2 on gsm8k_llm2 + LLM2+maj@4 on gsm8k_llm2_maj), hf greedy on math500 with an unknown tokenizer."""
    greedy_resps = {0: ["She has 2 apples. The answer is 2."], 1: ["2 dollars each. The answer is 4."]}
    maj_resps = {0: ["The answer is 2.", "The answer is 3.", "so 2. The answer is 2.", "answer 7"],
                 1: ["The answer is 4.", "total 4", "The answer is 5.", "The answer is 4."]}
    em = {0: {"exact_match": 1.0}, 1: {"exact_match": 0.0}}
    maj = {0: {"maj_at_k": 1.0, "pass_at_1": 0.5}, 1: {"maj_at_k": 1.0, "pass_at_1": 0.75}}

    greedy = make_run(tmp_path, "greedy", "hf", f"pretrained={tok_dir},dtype=float32", {
        "gsm8k_llm2": {"results": {"exact_match,none": 0.5, "exact_match_stderr,none": 0.5}, "repeats": 1,
                       "do_sample": False, "samples": _samples("gsm8k_llm2", 1, greedy_resps, em)}})
    majk = make_run(tmp_path, "maj", "hf", {"pretrained": str(tok_dir)}, {  # model_args as a dict
        "gsm8k_llm2_maj": {"results": {"maj_at_k,none": 1.0, "pass_at_1,none": 0.625}, "repeats": 4,
                           "do_sample": True, "samples": _samples("gsm8k_llm2_maj", 4, maj_resps, maj)}})

    trace = tmp_path / "traces" / "llm2.jsonl"
    trace.parent.mkdir()
    lines = [trace_line("gsm8k_llm2", 0, 0, 100, 50, 1.0), trace_line("gsm8k_llm2", 1, 0, 120, 30, 1.5)]
    for doc in (0, 1):
        for r in range(4):
            lines.append(trace_line("gsm8k_llm2_maj", doc, r, 200 if r == 0 else 40 + r, 60 + r, 0.25))
    lines.append(trace_line("math500_llm2", 0, 0, 9999, 9999))  # another task: ignored
    lines.append(trace_line("gsm8k_llm2", 7, 0, 9999, 9999))  # a doc not in this run's samples: ignored
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    llm2 = make_run(
        tmp_path, "llm2", "llm2", f"pretrained={tok_dir},verifier=/some/verifier,beta=0.25,trace={trace}", {
            "gsm8k_llm2": {"results": {"exact_match,none": 1.0, "exact_match_stderr,none": 0.0}, "repeats": 1,
                           "do_sample": False, "samples": _samples("gsm8k_llm2", 1, greedy_resps, em)},
            "gsm8k_llm2_maj": {"results": {"maj_at_k,none": 0.5, "pass_at_1,none": 0.375}, "repeats": 4,
                               "do_sample": True, "samples": _samples("gsm8k_llm2_maj", 4, maj_resps, maj)},
        }, wall=30.0)
    math_run = make_run(tmp_path, "mathgreedy", "hf", "pretrained=/no/such/model", {
        "math500_llm2": {"results": {"exact_match,none": 0.25}, "repeats": 1, "do_sample": False,
                         "samples": _samples("math500_llm2", 1, greedy_resps, em)}}, wall=7.0)
    return {"greedy": greedy, "maj": majk, "llm2": llm2, "math": math_run, "trace": trace,
            "greedy_resps": greedy_resps, "maj_resps": maj_resps}


def _by(rows):
    return {(r.run, r.task): r for r in rows}


def _ntok(tok, texts):
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def test_rows_methods_accuracy_and_compute(runs, tok_dir):
    from transformers import AutoTokenizer

    rows = collect_rows([runs["greedy"], runs["maj"], runs["llm2"], runs["math"]])
    by = _by(rows)
    assert set(by) == {("greedy", "gsm8k_llm2"), ("maj", "gsm8k_llm2_maj"), ("llm2", "gsm8k_llm2"),
                       ("llm2", "gsm8k_llm2_maj"), ("mathgreedy", "math500_llm2")}
    labels = {key: r.label for key, r in by.items()}
    assert labels == {("greedy", "gsm8k_llm2"): "greedy", ("maj", "gsm8k_llm2_maj"): "maj@4",
                      ("llm2", "gsm8k_llm2"): "LLM2", ("llm2", "gsm8k_llm2_maj"): "LLM2+maj@4",
                      ("mathgreedy", "math500_llm2"): "greedy"}
    assert by[("maj", "gsm8k_llm2_maj")].method == "maj@k" and by[("maj", "gsm8k_llm2_maj")].k == 4

    # accuracy: exact_match for greedy tasks, maj_at_k (+ pass_at_1) for maj tasks
    assert by[("greedy", "gsm8k_llm2")].accuracy == 0.5
    assert by[("greedy", "gsm8k_llm2")].accuracy_metric == "exact_match,none"
    assert by[("llm2", "gsm8k_llm2_maj")].accuracy == 0.5
    assert by[("llm2", "gsm8k_llm2_maj")].pass_at_1 == 0.375
    assert by[("llm2", "gsm8k_llm2_maj")].accuracy_metric == "maj_at_k,none"

    # traced run: sums of the trace lines of its own task and docs
    l2 = by[("llm2", "gsm8k_llm2")]
    assert l2.compute_source == "trace" and not l2.estimated
    assert (l2.llm_token_forwards, l2.verifier_token_forwards, l2.total_token_forwards) == (220, 80, 300)
    assert l2.n_questions == 2 and l2.per_question(l2.total_token_forwards) == 150
    assert l2.decode_seconds == pytest.approx(2.5)
    assert l2.wall_seconds == 30.0 and l2.wall_shared_by == 2
    lm = by[("llm2", "gsm8k_llm2_maj")]
    assert lm.llm_token_forwards == 2 * (200 + 41 + 42 + 43)
    assert lm.verifier_token_forwards == 2 * (60 + 61 + 62 + 63)
    assert lm.decode_seconds == pytest.approx(2.0)
    # flips (the trace's verifier-changed choices): summed over sequences, per question over all k samples
    assert (l2.flips, l2.per_question(l2.flips), lm.flips, lm.per_question(lm.flips)) == (2, 1.0, 8, 4.0)
    assert by[("greedy", "gsm8k_llm2")].flips is None  # no trace: unknown, never 0
    assert l2.to_dict()["flips_per_question"] == 1.0

    # untraced hf runs: tokenizer estimate, prompt counted once per sample, verifier 0
    tok = AutoTokenizer.from_pretrained(tok_dir)
    g = by[("greedy", "gsm8k_llm2")]
    assert g.compute_source == "tokenizer" and g.estimated
    assert g.llm_token_forwards == _ntok(tok, PROMPTS.values()) + _ntok(tok, sum(runs["greedy_resps"].values(), []))
    assert g.verifier_token_forwards == 0
    assert g.wall_seconds == 12.5 and g.wall_shared_by == 1
    m = by[("maj", "gsm8k_llm2_maj")]
    assert m.llm_token_forwards == 4 * _ntok(tok, PROMPTS.values()) + _ntok(tok, sum(runs["maj_resps"].values(), []))

    # no tokenizer available: characters / 4, labelled
    mg = by[("mathgreedy", "math500_llm2")]
    assert mg.compute_source == "chars/4" and mg.estimated and mg.family == "math500"
    texts = list(PROMPTS.values()) + sum(runs["greedy_resps"].values(), [])
    assert mg.llm_token_forwards == sum(math.ceil(len(t) / 4) for t in texts)
    assert any("characters / 4" in n for n in mg.notes)


def test_llm2_without_trace_estimates_with_shared_prompt(runs, tmp_path, tok_dir):
    from transformers import AutoTokenizer

    maj_resps = runs["maj_resps"]
    run = make_run(tmp_path, "llm2_notrace", "llm2", f"pretrained={tok_dir},verifier=/v", {
        "gsm8k_llm2_maj": {"results": {"maj_at_k,none": 0.5, "pass_at_1,none": 0.5}, "repeats": 4,
                           "do_sample": True, "samples": _samples("gsm8k_llm2_maj", 4, maj_resps, {
                               0: {"maj_at_k": 1.0}, 1: {"maj_at_k": 0.0}})}})
    (row,) = collect_rows([run])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert row.label == "LLM2+maj@4" and row.estimated
    assert row.llm_token_forwards == _ntok(tok, PROMPTS.values()) + _ntok(tok, sum(maj_resps.values(), []))
    assert row.verifier_token_forwards is None and row.total_token_forwards is None
    assert any("verifier token forwards unknown" in n for n in row.notes)


def test_write_report_files_and_png(runs, tmp_path):
    out = tmp_path / "out"
    rep = write_report([runs["greedy"], runs["maj"], runs["llm2"], runs["math"]], out)
    data = json.loads((out / "report.json").read_text())
    rows = {(r["run"], r["task"]): r for r in data["rows"]}
    assert rows[("llm2", "gsm8k_llm2")]["total_token_forwards_per_question"] == 150
    assert rows[("llm2", "gsm8k_llm2")]["label"] == "LLM2"
    md = (out / "report.md").read_text()
    assert "| llm2 | gsm8k_llm2 | LLM2 | llm2 | 2 | 100.0 |" in md
    assert "LLM2+maj@4" in md and "maj@4" in md and "~" in md
    header = md.splitlines()[0].split(" | ")
    cells = {(r.split(" | ")[0].strip("| "), r.split(" | ")[2]): r.split(" | ") for r in md.splitlines()[2:7]}
    at = header.index("flips/q")
    assert cells[("llm2", "LLM2")][at] == "1.00" and cells[("llm2", "LLM2+maj@4")][at] == "4.00"
    assert cells[("greedy", "greedy")][at] == "n/a"
    png = rep.plot.read_bytes()
    assert rep.plot == out / "accuracy_vs_compute.png"
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


def test_cli_prints_table_and_writes_png(runs, tmp_path):
    out = tmp_path / "cli_out"
    res = CliRunner().invoke(cli_main, ["report", str(runs["llm2"]), str(runs["greedy"]), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "LLM2+maj@4" in res.output and "greedy" in res.output
    assert "300" in res.output and "150" in res.output  # llm2 gsm8k_llm2: total and per question
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert (out / "accuracy_vs_compute.png").read_bytes()[:8] == PNG_MAGIC


def test_newest_results_file_wins_and_trace_found_next_to_run(tmp_path, runs):
    # the trace path recorded in model_args no longer exists; a file of that name in the run dir is used
    run = make_run(tmp_path, "moved", "llm2", "pretrained=/x,verifier=/v,beta=0.5,trace=/gone/llm2.jsonl", {
        "gsm8k_llm2": {"results": {"exact_match,none": 0.1}, "repeats": 1, "do_sample": False, "samples": None}},
        ts="2025-01-01T00-00-00.000000")
    make_run(tmp_path, "moved", "llm2", "pretrained=/x,verifier=/v,beta=0.5,trace=/gone/llm2.jsonl", {
        "gsm8k_llm2": {"results": {"exact_match,none": 0.9}, "repeats": 1, "do_sample": False, "samples": None}},
        ts="2025-06-01T00-00-00.000000")
    (run / "llm2.jsonl").write_text(runs["trace"].read_text())
    (row,) = collect_rows([run])
    assert row.accuracy == 0.9 and row.label == "LLM2"
    assert row.compute_source == "trace"
    assert row.n_questions == 2  # from n-samples: samples were not logged
    # without samples every trace line of the task counts (doc 7 included)
    assert row.llm_token_forwards == 220 + 9999


def test_beta_zero_and_helpers():
    assert parse_model_args("pretrained=a,verifier=b,beta=0") == {"pretrained": "a", "verifier": "b", "beta": "0"}
    assert parse_model_args(None) == {}
    assert classify_method(False, 1, False) == ("greedy", "greedy")
    assert classify_method(True, 20, True) == ("LLM2+maj@k", "LLM2+maj@20")
    assert task_family("math500_llm2_maj") == "math500" and task_family("gsm8k_llm2") == "gsm8k"


def test_errors(tmp_path, runs):
    runner = CliRunner()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    res = runner.invoke(cli_main, ["report", str(empty), "--output", str(tmp_path / "o")])
    assert res.exit_code != 0 and str(empty) in res.output and "results_" in res.output

    bad = tmp_path / "bad_run"
    (bad / "m").mkdir(parents=True)
    (bad / "m" / f"results_{TS}.json").write_text('{"results": {')
    res = runner.invoke(cli_main, ["report", str(bad), "--output", str(tmp_path / "o")])
    assert res.exit_code != 0 and f"results_{TS}.json" in res.output and "malformed JSON" in res.output

    samples = next(runs["greedy"].rglob("samples_*.jsonl"))
    samples.write_text(samples.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(ReportError, match=rf"{samples.name} line 2"):
        collect_rows([runs["greedy"]])

    runs["trace"].write_text(json.dumps(trace_line("gsm8k_llm2", 0, 0, 1, 1)) + "\n" + '{"task": "x"}\n')
    with pytest.raises(ReportError, match=r"llm2\.jsonl line 2: trace line misses"):
        collect_rows([runs["llm2"]])


def test_tokenizer_override(runs, tok_dir):
    (row,) = collect_rows([runs["math"]], tokenizer=str(tok_dir))
    assert row.compute_source == "tokenizer" and row.estimated
    res = CliRunner().invoke(cli_main, ["report", str(runs["math"]), "-o", str(runs["math"] / "o"),
                                        "--tokenizer", str(runs["math"] / "no_tokenizer_here")])
    assert res.exit_code != 0 and "no_tokenizer_here" in res.output


def test_rank_traces_merge_into_one_run(tmp_path):
    """A data-parallel run's per-rank traces (``T.rankR.jsonl``, stamped with rank 0's run id) read as one: lines of
    other runs and lm-eval's padding requests left out; a missing rank, or a rank file of another run, refused."""
    from llm2_eval.report.runs import rank_trace_lines, rank_trace_paths, read_trace_file

    def write(rank: int, run_id: str, lines: list[dict], world: int = 2) -> None:
        head = {"llm2_trace": 1, "run_id": run_id, "rank": rank, "world_size": world}
        body = [head] + [{"run_id": run_id, **x} for x in lines]
        (tmp_path / f"t.rank{rank}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in body))

    def seq(doc: int, pad: bool = False) -> dict:
        return {**trace_line("gsm8k_llm2", doc, 0, 10 + doc, 100), **({"padding": True} if pad else {})}
    write(0, "A", [seq(0), seq(2)])
    write(1, "A", [seq(1), seq(1, pad=True)])
    (tmp_path / "t.rankx.jsonl").write_text("not a rank file\n")
    paths = rank_trace_paths("t.jsonl", tmp_path, tmp_path)
    assert list(paths) == [0, 1]
    traces = {r: read_trace_file(p) for r, p in paths.items()}
    lines, note = rank_trace_lines(traces, "A")
    assert sorted(x["doc_id"] for x in lines) == [0, 1, 2] and note is None
    assert sum(x["llm_token_forwards"] for x in lines) == 33
    assert rank_trace_lines(traces, None)[0] is None

    write(1, "B", [seq(1)])  # rank 1's file rewritten by another run
    lines, note = rank_trace_lines({r: read_trace_file(p) for r, p in paths.items()}, "A")
    assert lines is None and "rank(s) [1] of 2 missing or of another run (t.rank1.jsonl)" in note
    (tmp_path / "t.rank1.jsonl").unlink()
    lines, note = rank_trace_lines({0: read_trace_file(tmp_path / "t.rank0.jsonl")}, "A")
    assert lines is None and "[1] of 2" in note
