"""Nothing lost, nothing silently wrong, round two (issue 25): traces that never clobber, locked outputs, atomic
final saves, finite scores. Every refusal leaves every file untouched. CPU, tiny local models."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from test_reliability import snapshot

PROMPTS = ["how many apples are left", "she buys 12 eggs"]


def _requests(n=2, max_gen_toks=4):
    reqs = [Instance(request_type="generate_until", doc={}, idx=0, arguments=(p, {
        "until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False})) for p in PROMPTS[:n]]
    for i, r in enumerate(reqs):
        r.doc_id, r.task_name = i, "toy"
    return reqs


def _llm2(**args):
    return get_model("llm2")(dtype="float32", batch_size=2, **args)


@pytest.fixture
def model_copy(tiny_llm, tmp_path):
    """``tmp/m``: a copy of the tiny LLM, with a user's notes and a dataset next to it."""
    shutil.copytree(tiny_llm, tmp_path / "m")
    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "data.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    return tmp_path / "m"


def _hflm_init():
    from lm_eval.models.huggingface import HFLM

    return HFLM.__init__


@functools.wraps(_hflm_init())  # same signature: the model-arg check reads it
def _no_load(self, *a, **k):
    raise AssertionError("the LLM was loaded before the check")


# ------------------------------------------------------------------------ 1. trace= never truncates a foreign file


def test_trace_refuses_a_file_that_is_not_a_trace_or_is_inside_a_model(model_copy, tiny_verifier, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    work = model_copy.parent
    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "llm2", "--use_cache", str(work / "cache")])
    (work / "cache_rank0.db").write_bytes(b"SQLite format 3\x00" + bytes(100))
    before = snapshot(work)
    monkeypatch.setattr(HFLM, "__init__", _no_load)  # refused before any weight loads
    for trace, match in [
        (model_copy / "config.json", "inside the pretrained directory"),
        (model_copy / "new_trace.jsonl", "inside the pretrained directory"),
        (work / "notes.md", "is not an llm2 trace"),
        (work / "data.jsonl", "is not an llm2 trace"),
        (work / "cache_rank0.db", "is the --use_cache"),
        (work, "is a directory"),
    ]:
        with pytest.raises(ValueError, match=match):
            _llm2(pretrained=str(model_copy), trace=str(trace))
    with pytest.raises(ValueError, match="inside the verifier directory"):
        _llm2(pretrained=str(model_copy), verifier=str(tiny_verifier), trace=str(tiny_verifier / "t.jsonl"))
    assert snapshot(work) == before


def test_trace_rewrites_an_llm2_trace_and_an_empty_file(tiny_llm, tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("")
    first = _llm2(pretrained=str(tiny_llm), beta=0, trace=str(trace))
    first.generate_until(_requests(1))
    second = _llm2(pretrained=str(tiny_llm), beta=0, trace=str(trace), max_candidates=2)
    assert json.loads(trace.read_text().splitlines()[0])["run_id"] == second.trace_stamp["run_id"]
