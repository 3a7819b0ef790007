"""Issue 23 item 5: seeded sampled requests resume from the ``sample_cache=PATH`` store (lm-eval's ``--use_cache``
never stores them): a re-run decodes only what the store lacks, with the seeds it would have had, and gives the
outputs of an uninterrupted run. Greedy requests are stored too, so the store alone resumes a greedy run."""

from __future__ import annotations

import json

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

import llm2_eval.lm_eval_model as lm_eval_model
from llm2_eval.sample_cache import HEADER_KEY

SAMPLE = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}
GREEDY = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}


def requests(spec):
    """``[(prompt, gen_kwargs, copies)]`` -> Instances as lm-eval sends them (``repeats`` copies of one)."""
    out = []
    for doc_id, (prompt, gen, copies) in enumerate(spec):
        req = Instance(request_type="generate_until", doc={}, arguments=(prompt, dict(gen)), idx=0, repeats=copies)
        req.doc_id, req.task_name = doc_id, "toy"
        out += [req] * copies
    return out


def make(tiny_llm, tiny_verifier, **args):
    args = {"dtype": "float32", "batch_size": 2, "beta": 0.5, **args}
    return get_model("llm2")(pretrained=str(tiny_llm), verifier=str(tiny_verifier), **args)


@pytest.fixture
def decoded(monkeypatch):
    """The rows of every decode call (``generate`` patched to count; ``decoded.fail_at = n`` raises at call n)."""
    real = lm_eval_model.generate

    class Calls(list):
        fail_at = None

    calls = Calls()

    def counting(model, context, attn, cfg, **kw):
        calls.append(len(kw["seeds"]) if kw.get("seeds") else context.shape[0])
        if calls.fail_at == len(calls):
            raise KeyboardInterrupt("killed")
        return real(model, context, attn, cfg, **kw)

    monkeypatch.setattr(lm_eval_model, "generate", counting)
    return calls


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_second_run_answers_sampled_requests_from_the_store(tiny_llm, tiny_verifier, tmp_path, decoded):
    store = tmp_path / "runs" / "samples.jsonl"
    reqs = requests([("how many apples are left", SAMPLE, 3), ("she buys 12 eggs", SAMPLE, 3),
                     ("the answer", GREEDY, 1)])
    plain = make(tiny_llm, tiny_verifier, seed=7).generate_until(reqs)
    first = make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store)).generate_until(reqs)
    assert first == plain and len(set(first[:3])) > 1  # the store changes no answer
    head, *stored = lines(store)
    assert head[HEADER_KEY] == 1 and head["seed_base"] == 7 and head["model_args"]["beta"] == 0.5
    assert "sample_cache" not in head["model_args"] and "batch_size" not in head["model_args"]
    assert len(stored) == 7 and sorted((x["doc_id"], x["repeat"]) for x in stored) == [
        (d, r) for d in (0, 1) for r in range(3)] + [(2, 0)]
    assert [x["seed"] for x in stored if x["doc_id"] == 2] == [None]  # greedy: stored without a seed
    decoded.clear()

    again = make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store), batch_size=1).generate_until(reqs)
    assert again == first and decoded == []  # nothing decoded again
    assert len(lines(store)) == 8  # nothing stored twice


def test_a_greedy_run_resumes_from_its_store_alone(tiny_llm, tiny_verifier, tmp_path, decoded):
    """A greedy run killed in its second batch, resumed with no lm-eval database (a checkout on another machine):
    the store answers the first batch (a greedy request sent in copies too), the rest is decoded, and the outputs
    are an uninterrupted run's."""
    store = tmp_path / "samples.jsonl"
    reqs = requests([("how many apples are left after she gives away seven of the twelve she had", GREEDY, 2),
                     ("she buys 12 eggs", GREEDY, 1),
                     ("the answer", GREEDY, 1), ("a train leaves at noon", GREEDY, 1)])
    want = make(tiny_llm, tiny_verifier).generate_until(reqs)
    decoded.clear()
    decoded.fail_at = 2
    with pytest.raises(KeyboardInterrupt):
        make(tiny_llm, tiny_verifier, sample_cache=str(store)).generate_until(reqs)
    head, *kept = lines(store)
    assert 1 <= len(kept) < 4 and {x["seed"] for x in kept} == {None}  # one line per prompt, copies or not
    assert [x["repeat"] for x in kept if x["doc_id"] == 0] == [0]  # the longest prompt, first: its 2 copies, 1 line

    decoded.clear()
    decoded.fail_at = None
    got = make(tiny_llm, tiny_verifier, sample_cache=str(store)).generate_until(reqs)
    assert got == want and sum(decoded) == 4 - len(kept)  # only the prompts the store lacked are decoded
    assert len(lines(store)) == 1 + 4


def test_a_killed_run_resumes_with_the_samples_of_an_uninterrupted_run(tiny_llm, tiny_verifier, tmp_path, decoded):
    """Killed in its second batch, the run keeps its first batch; the re-run decodes only the rest, and the seeds
    of the rest are those they had (the same prompt under other generation kwargs continues its sample count),
    so the outputs are an uninterrupted run's. The resumed run continues the trace."""
    store, trace = tmp_path / "samples.jsonl", tmp_path / "trace.jsonl"
    p0, p1 = "how many apples are left", "she buys 12 eggs"
    other = {**SAMPLE, "top_p": 0.999}
    reqs = requests([(p0, SAMPLE, 2), (p1, SAMPLE, 2), (p0, other, 2)])  # batch_size 2: one group per batch
    want = make(tiny_llm, tiny_verifier, seed=7).generate_until(reqs)

    decoded.clear()
    decoded.fail_at = 2
    with pytest.raises(KeyboardInterrupt):
        make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store), trace=str(trace)).generate_until(reqs)
    assert len(lines(store)) == 1 + 2  # the first batch
    with open(store, "a", encoding="utf-8") as f:
        f.write('{"key": "cut by the ki')  # a line cut by the kill: dropped
    run_id = lines(trace)[0]["run_id"]

    decoded.clear()
    decoded.fail_at = None
    got = make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store), trace=str(trace)).generate_until(reqs)
    assert got == want and decoded == [2, 2]
    head, *stored = lines(store)
    assert len(stored) == 6 and len({x["key"] for x in stored}) == 6
    header, *traced = lines(trace)
    assert header["run_id"] == run_id and len(traced) == 6 and {x["run_id"] for x in traced} == {run_id}


def test_a_store_of_other_model_args_is_refused(tiny_llm, tiny_verifier, tmp_path):
    import torch

    store = tmp_path / "samples.jsonl"
    make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store)).generate_until(requests([("the answer", SAMPLE, 2)]))
    before = store.read_bytes()
    with pytest.raises(ValueError, match=r"^sample_cache=.*samples.jsonl holds the samples of other model args "
                                         r"\(beta: store 0.5, now 0.25\)"):
        make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store), beta=0.25)
    with pytest.raises(ValueError, match=r"seed: store 7, now 8"):
        make(tiny_llm, tiny_verifier, seed=8, sample_cache=str(store))
    assert store.read_bytes() == before
    make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(store), batch_size=1, trace=str(tmp_path / "t.jsonl"))

    # no seed model arg: the drawn base seed is compared
    drawn = tmp_path / "drawn.jsonl"
    torch.manual_seed(0)
    make(tiny_llm, tiny_verifier, sample_cache=str(drawn)).generate_until(requests([("the answer", GREEDY, 1)]))
    torch.manual_seed(1)
    make(tiny_llm, tiny_verifier, sample_cache=str(drawn))  # greedy texts only: any base seed is accepted
    torch.manual_seed(0)
    make(tiny_llm, tiny_verifier, sample_cache=str(drawn)).generate_until(requests([("the answer", SAMPLE, 2)]))
    torch.manual_seed(0)
    make(tiny_llm, tiny_verifier, sample_cache=str(drawn))  # the same draw: accepted
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="give seed=N"):
        make(tiny_llm, tiny_verifier, sample_cache=str(drawn))

    # a file llm2 did not write, the trace's path, a folder: refused, left as they were
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path, extra, match in [(notes, {}, "is not an llm2 sample cache"),
                               (tmp_path / "t2.jsonl", {"trace": str(tmp_path / "t2.jsonl")}, "is the trace"),
                               (tmp_path, {}, "is a directory")]:
        with pytest.raises(ValueError, match=f"^sample_cache={path}"):
            make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(path), **extra)
        with pytest.raises(ValueError, match=match):
            make(tiny_llm, tiny_verifier, seed=7, sample_cache=str(path), **extra)
    assert notes.read_text() == "mine" and not (tmp_path / "t2.jsonl").exists()


@pytest.mark.slow
def test_lm_eval_maj_run_killed_and_resumed(tiny_llm, data_dir, tmp_path, monkeypatch):
    """As a user runs it: ``lm_eval --tasks gsm8k_llm2_maj --model_args ...,sample_cache=PATH`` killed (SIGKILL)
    after its first batch, then the same command again: the second decodes only the samples the store lacks (its
    trace continues the killed run's, one line per decoded sample) and logs the samples of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks import TaskManager

    repo = Path(__file__).resolve().parents[1]
    limit, k, tokens = 4, 8, "max_gen_toks=48"
    store, trace, out = tmp_path / "samples.jsonl", tmp_path / "trace.jsonl", tmp_path / "out"
    model_args = f"pretrained={tiny_llm},dtype=float32,seed=3"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "llm2", "--model_args",
           f"{model_args},sample_cache={store},trace={trace}", "--tasks", "gsm8k_llm2_maj", "--limit", str(limit),
           "--gen_kwargs", tokens, "--batch_size", str(k), "--log_samples", "--output_path", str(out)]
    monkeypatch.setenv("LLM2_DATA_DIR", str(data_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(repo)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}

    proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists() and store.read_bytes().count(b"\n") >= 1 + k:  # the first batch (one question) stored
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kept = store.read_bytes().count(b"\n") - 1
    traced = trace.read_bytes().count(b"\n") - 1
    assert k <= kept < limit * k and not list(out.rglob("results_*.json"))
    run_id = lines(trace)[0]["run_id"]

    # the same command again (in this process: a second interpreter start costs ~20 s on a loaded 2-core machine)
    from lm_eval._cli import HarnessCLI

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["lm_eval"] + cmd[3:])
        mp.chdir(tmp_path)
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    head, *stored = lines(store)
    assert len(stored) == limit * k == len({x["key"] for x in stored})
    header, *trace_lines = lines(trace)
    assert header["run_id"] == run_id and len(trace_lines) == traced + limit * k - kept  # only the rest decoded
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["llm2_run_id"] == run_id
    resumed = {s["doc_id"]: s["resps"] for s in lines(next(out.rglob("samples_gsm8k_llm2_maj_*.jsonl")))}

    # an uninterrupted run (in-process, no store): the same samples
    tm = TaskManager(include_path=[str(repo / "tasks")], include_defaults=False)
    ref = lm_eval.simple_evaluate(model="llm2", model_args=model_args, tasks=["gsm8k_llm2_maj"], limit=limit,
                                  gen_kwargs=tokens, batch_size=k, log_samples=True, task_manager=tm)
    want = {s["doc_id"]: s["resps"] for s in ref["samples"]["gsm8k_llm2_maj"]}
    assert resumed == want and len(want) == limit and all(sum(map(len, r)) == k for r in want.values())


def test_store_round_trips_any_text_and_names_a_bad_line(tmp_path):
    from llm2_eval.sample_cache import SampleStore, sample_key

    path = tmp_path / "s.jsonl"
    texts = ["a\nb\r\n\u2028 é 数 \U0001f600 \udc80", "", "The answer is 7.\n\n"]  # a lone surrogate too
    store = SampleStore(path, {"beta": 0.5}, 3)
    store.add([{"key": sample_key("p", "{}", i), "text": t} for i, t in enumerate(texts)])
    store.close()
    again = SampleStore(path, {"beta": 0.5}, 3)
    assert again.resumed and [again.get(sample_key("p", "{}", i)) for i in range(3)] == texts
    again.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('["not a sample"]\n')
    with pytest.raises(ValueError, match=r"^sample_cache=.*s.jsonl: line 5: expected a JSON object"):
        SampleStore(path, {"beta": 0.5}, 3)


def test_the_base_seed_is_checked_against_the_sampled_lines_only(tmp_path):
    """Greedy texts and samples seeded by the task do not depend on the run's base seed; samples drawn from it do
    (a line of an earlier version, without ``seed_base``, has the header's)."""
    from llm2_eval.sample_cache import SampleStore, sample_key

    def reopen(path, base):
        SampleStore(path, {"beta": 0.5}, base).close()

    path = tmp_path / "s.jsonl"
    store = SampleStore(path, {"beta": 0.5}, 5)
    store.add([{"key": sample_key("p", "{}", None), "text": "greedy", "seed": None},
               {"key": sample_key("p", '{"seed": 3}', 11), "text": "task-seeded", "seed": 11, "seed_base": None}])
    store.close()
    reopen(path, 6)  # nothing drawn from a base: any base is accepted
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": sample_key("q", "{}", 12), "text": "old line", "seed": 12}) + "\n")
    reopen(path, 5)
    with pytest.raises(ValueError, match=r"seed .*store 5, now 6"):
        reopen(path, 6)
    store = SampleStore(path, {"beta": 0.5}, 5)
    store.add([{"key": sample_key("r", "{}", 13), "text": "new line", "seed": 13}])
    store.close()
    assert lines(path)[-1]["seed_base"] == 5 and lines(path)[2]["seed_base"] is None
