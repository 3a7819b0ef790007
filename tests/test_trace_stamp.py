"""Issue 11 item 6: each ``llm2`` run stamps its trace, writes the run id into lm-eval's results, and ``llm2 report``
credits a trace only to the run that wrote it (two runs that share a ``trace=`` path no longer report the same
compute)."""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from llm2_eval.report import collect_rows
from llm2_eval.trace import tasks_from_argv
from test_report import make_run

TASK = "toy"
PROMPTS = ["how many apples are left", "she buys 12 eggs"]


def _requests():
    reqs = [Instance(request_type="generate_until", doc={}, idx=0, arguments=(p, {
        "until": ["\n\n"], "max_gen_toks": 6, "do_sample": False})) for p in PROMPTS]
    for i, r in enumerate(reqs):
        r.doc_id, r.task_name = i, TASK
    return reqs


def _results(tmp_path, name, model, trace, correct):
    """A results dir as lm-eval writes it for ``model``: config = model + model_args + get_model_info()."""
    samples = [{"doc_id": i, "arguments": {"gen_args_0": {"arg_0": p}}, "resps": [["x"]], "filter": "none",
                "metrics": ["exact_match"], "exact_match": float(c)} for i, (p, c) in enumerate(zip(PROMPTS, correct))]
    run = make_run(tmp_path, name, "llm2", f"pretrained=/x,beta=0,trace={trace}", {TASK: {
        "results": {"exact_match,none": sum(correct) / 2}, "repeats": 1, "do_sample": False, "samples": samples}})
    results = next(run.rglob("results_*.json"))
    data = json.loads(results.read_text())
    data["config"].update(json.loads(json.dumps(model.get_model_info(), default=str)))
    results.write_text(json.dumps(data))
    return run


def test_two_runs_sharing_a_trace_path(tiny_llm, tmp_path, monkeypatch):
    trace = tmp_path / "shared" / "trace.jsonl"
    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "llm2", "--tasks", "toy,other", "--log_samples"])
    first = get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, beta=0, trace=str(trace))
    first.generate_until(_requests())
    first_lines = trace.read_text().splitlines()
    second = get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, beta=0, trace=str(trace),
                               max_candidates=3)
    second.generate_until(_requests()[:1])

    header, *lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert header["llm2_trace"] == 1 and header["run_id"] == second.trace_stamp["run_id"]
    assert header["run_id"] != first.trace_stamp["run_id"] and len(header["run_id"]) == 32
    assert header["tasks"] == ["toy", "other"] and header["argv"][0] == "lm_eval"
    assert header["model_args"]["max_candidates"] == 3 and header["model_args"]["pretrained"] == str(tiny_llm)
    assert header["start_time"].endswith("+00:00")
    assert header["model_args"]["device"] == str(second.device)  # where it ran, not what was asked
    assert [x["run_id"] for x in lines] == [header["run_id"]]  # every line carries it
    assert json.loads(first_lines[0])["run_id"] == first.trace_stamp["run_id"] and len(first_lines) == 3

    info = first.get_model_info()
    assert info["llm2_run_id"] == first.trace_stamp["run_id"] and info["llm2_trace"] == str(trace)

    # the first run's results meet the second run's trace: ignored (compute estimated, with a note)
    r1 = _results(tmp_path, "first", first, trace, [1, 0])
    r2 = _results(tmp_path, "second", second, trace, [1, 1])
    rows = {r.run: r for r in collect_rows([r1, r2])}
    assert rows["first"].compute_source != "trace"
    assert any("belongs to run" in n and first.trace_stamp["run_id"] in n for n in rows["first"].notes)
    assert rows["second"].compute_source == "trace"
    assert rows["second"].llm_token_forwards == lines[0]["llm_token_forwards"]


def test_no_trace_no_stamp(tiny_llm):
    m = get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=1)
    assert m.trace_stamp is None and "llm2_run_id" not in m.get_model_info()


def test_tasks_from_argv():
    assert tasks_from_argv(["lm_eval", "--tasks", "a,b"]) == ["a", "b"]
    assert tasks_from_argv(["lm_eval", "run", "--tasks=gsm8k_llm2"]) == ["gsm8k_llm2"]
    assert tasks_from_argv(["python", "script.py"]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (the CPU fallback is checked)")
def test_stamp_records_the_device_the_run_used(tiny_llm, tmp_path):
    """lm-eval's CLI passes ``device=cuda:0`` by default; on a machine without CUDA the run falls back to the CPU,
    and the stamp must say where it ran."""
    m = get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=1, device="cuda:0",
                          trace=str(tmp_path / "t.jsonl"))
    header = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert str(m.device) == "cpu" and header["model_args"]["device"] == "cpu"


def test_a_run_resumed_with_lm_evals_cache_continues_its_trace(tiny_llm, tmp_path, monkeypatch):
    """``lm_eval --use_cache DB`` answers the requests of an interrupted run from its cache: the resumed run
    appends to that run's trace under its run id, so the trace covers every request once."""
    from lm_eval.api.model import CachingLM

    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "llm2", "--tasks", TASK, "--use_cache", "db"])
    trace, db = tmp_path / "t.jsonl", str(tmp_path / "cache_rank0.db")

    def make(**extra):
        return get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, beta=0, trace=str(trace),
                                 **extra)

    first = make()
    CachingLM(first, db).generate_until(_requests()[:1])  # interrupted after its first request
    with open(trace, "a", encoding="utf-8") as f:
        f.write('{"run_id": "cut by a cr')  # a line cut by the crash
    second = make()
    got = CachingLM(second, db).generate_until(_requests())  # the first from the cache, the second decoded
    header, *lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert len(got) == 2 and header["run_id"] == first.trace_stamp["run_id"] == second.trace_stamp["run_id"]
    assert [x["doc_id"] for x in lines] == [0, 1] and {x["run_id"] for x in lines} == {header["run_id"]}
    assert second.get_model_info()["llm2_run_id"] == header["run_id"]

    # the same settings without the cache, or other settings: a new run, the trace rewritten
    third = make()
    third.generate_until(_requests()[:1])
    header3, *lines3 = [json.loads(x) for x in trace.read_text().splitlines()]
    assert header3["run_id"] == third.trace_stamp["run_id"] != header["run_id"] and len(lines3) == 1
    fourth = make(max_candidates=2)
    assert json.loads(trace.read_text().splitlines()[0])["run_id"] == fourth.trace_stamp["run_id"]


def test_report_counts_a_sequence_traced_twice_once():
    from pathlib import Path

    from llm2_eval.report.runs import TraceFile, trace_lines_of_run

    lines = [{"run_id": "r", "task": TASK, "doc_id": 0, "repeat": 0, "llm_token_forwards": 5},
             {"run_id": "r", "task": TASK, "doc_id": 1, "repeat": 0, "llm_token_forwards": 7},
             {"run_id": "r", "task": TASK, "doc_id": 0, "repeat": 0, "llm_token_forwards": 6}]
    got, note = trace_lines_of_run(TraceFile(Path("t"), [{"llm2_trace": 1, "run_id": "r"}], lines), "r")
    assert sorted((x["doc_id"], x["llm_token_forwards"]) for x in got) == [(0, 6), (1, 7)] and note is None
