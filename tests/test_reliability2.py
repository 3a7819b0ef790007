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

from test_reliability import snapshot, trained_run, triplets  # noqa: F401 (fixtures)

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


# ------------------------------------------------- 3. a trace is continued only by a run with the same requests


def test_a_run_with_other_gen_kwargs_or_limit_does_not_continue_the_trace(tiny_llm, tmp_path, monkeypatch):
    from lm_eval.api.model import CachingLM

    from llm2_eval.trace import request_options

    trace, db = tmp_path / "t.jsonl", str(tmp_path / "cache_rank0.db")
    base = ["lm_eval", "--model", "llm2", "--tasks", "toy", "--use_cache", str(tmp_path / "cache")]
    monkeypatch.setattr("sys.argv", base + ["--gen_kwargs", "max_gen_toks=4"])
    first = _llm2(pretrained=str(tiny_llm), beta=0, trace=str(trace))
    CachingLM(first, db).generate_until(_requests(1))
    for extra in (["--gen_kwargs", "max_gen_toks=8"], ["--gen_kwargs", "max_gen_toks=4", "--limit", "1"]):
        monkeypatch.setattr("sys.argv", base + extra)
        other = _llm2(pretrained=str(tiny_llm), beta=0, trace=str(trace))
        CachingLM(other, db).generate_until(_requests(2, max_gen_toks=8))
        header = json.loads(trace.read_text().splitlines()[0])
        assert header["run_id"] == other.trace_stamp["run_id"] != first.trace_stamp["run_id"]
    assert request_options(["lm_eval", "-L", "0.5", "--gen_kwargs", "a=1", "b=2", "--apply_chat_template"]) == {
        "--limit": "0.5", "--gen_kwargs": "a=1 b=2", "--apply_chat_template": True}


# ----------------------------------------------------- 8. a response cache answers only for its own model args


def test_a_response_cache_of_other_model_args_is_refused(tiny_llm, tiny_verifier, tmp_path, monkeypatch, caplog):
    from lm_eval.api.model import CachingLM
    from sqlitedict import SqliteDict

    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "llm2"])
    db = str(tmp_path / "c_rank0.db")
    greedy = _llm2(pretrained=str(tiny_llm), beta=0)
    CachingLM(greedy, db).generate_until(_requests(1))
    before = snapshot(tmp_path)
    other = _llm2(pretrained=str(tiny_llm), beta=1.0, verifier=str(tiny_verifier))
    with pytest.raises(ValueError, match=r"holds the answers of other model args \(beta: cache 0, now 1.0; verifier"):
        CachingLM(other, db)
    assert snapshot(tmp_path) == before
    same = _llm2(pretrained=str(tiny_llm), beta=0, trace=str(tmp_path / "t.jsonl"))  # trace= changes no answer
    assert len(CachingLM(same, db).generate_until(_requests(2))) == 2
    old = str(tmp_path / "old_rank0.db")  # a cache of another model (or an earlier version): a warning
    with SqliteDict(old, autocommit=True) as d:
        d["abc"] = "x"
    CachingLM(_llm2(pretrained=str(tiny_llm)), old)
    assert "holds answers but no llm2 model args" in caplog.text


# --------------------------------------------------------------- 9. an unwritable --output_path, before decoding


def test_an_output_path_where_nothing_can_be_written_is_refused_before_loading(tiny_llm, tmp_path, monkeypatch):
    import os

    from lm_eval.models.huggingface import HFLM

    (tmp_path / "notes.md").write_text("my notes")
    monkeypatch.setattr(HFLM, "__init__", _no_load)
    before = snapshot(tmp_path)
    monkeypatch.setattr("sys.argv", ["lm_eval", "--model", "llm2", "--output_path", str(tmp_path / "notes.md" / "r")])
    with pytest.raises(ValueError, match="notes.md is a file, not a directory"):
        _llm2(pretrained=str(tiny_llm))
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anywhere: the permission check is what is tested
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else access(p, mode))
    before = snapshot(tmp_path)
    monkeypatch.setattr("sys.argv", ["lm_eval", "-o", str(ro / "results")])
    with pytest.raises(ValueError, match="ro is not writable"):
        _llm2(pretrained=str(tiny_llm))
    assert snapshot(tmp_path) == before


# ------------------------------------------------ 2. explore never appends to a one-line file without a newline


def test_explore_refuses_a_one_line_file_without_final_newline(tiny_llm, tmp_path):
    from click.testing import CliRunner

    from test_reliability import QUESTIONS, _explore_args, _gsm8k, one_line_error
    from verifier_train.explore import explore_command

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:1])
    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    (tmp_path / "cut.jsonl").write_text('{"id": 0, "messages": [{"role": "us')  # a first record cut by a crash
    before = snapshot(tmp_path)
    for name in ("notes.md", "obj.json"):
        res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, tmp_path / name))
        assert "is not an llm2 explore output" in one_line_error(res)
    assert snapshot(tmp_path) == before
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, tmp_path / "cut.jsonl"))
    assert res.exit_code == 0, res.output
    assert "settings" in json.loads((tmp_path / "cut.jsonl").read_text())  # the fragment dropped, one record


# ------------------------------------------------- 4. one writer per file; repeated data is named, not hidden


def test_an_output_or_trace_being_written_is_refused(tiny_llm, tmp_path):
    import fcntl

    from click.testing import CliRunner

    from llm2_eval.paths import FileLockedError
    from test_reliability import QUESTIONS, _explore_args, _gsm8k, one_line_error
    from verifier_train.explore import explore_command
    from verifier_train.records import JsonlAppender

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:1])
    out = tmp_path / "out.jsonl"
    assert CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, out, "--limit", "0")).exit_code == 0
    trace = tmp_path / "t.jsonl"
    first = _llm2(pretrained=str(tiny_llm), beta=0, trace=str(trace))
    first.generate_until(_requests(1))
    first._trace.close()  # its run is over
    with open(out, "ab") as other, open(trace, "ab") as other_trace:  # another writer (its own open file)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other_trace, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(tmp_path)
        res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, out))
        assert f"--output {out} is being written by another process" in one_line_error(res)
        with pytest.raises(FileLockedError, match="is being written by another process"):
            JsonlAppender(out)
        with pytest.raises(FileLockedError, match=f"trace={trace} is being written by another process"):
            _llm2(pretrained=str(tiny_llm), beta=0, trace=str(trace), max_candidates=2)
        assert snapshot(tmp_path) == before


def test_repeated_records_and_data_files_are_named(tiny_llm, triplets, tmp_path):
    from transformers import AutoTokenizer

    from verifier_train.train.data import load_pair_data

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    assert load_pair_data([triplets], tok).warnings == []
    twice = tmp_path / "twice.jsonl"  # every record written twice (two writers on one output)
    twice.write_text(triplets.read_text() * 2)
    copy = tmp_path / "copy.jsonl"
    shutil.copy(triplets, copy)
    w = load_pair_data([twice], tok).warnings
    assert w == [f"--data {twice}: 12 of its 24 records repeat an earlier record (same messages and samples) and are "
                 "trained on again (two writers on one output?)"]
    w = load_pair_data([triplets, copy], tok).warnings
    assert w[0] == f"--data {copy} is given twice (also as {triplets}): its records are trained on twice"
    with pytest.raises(ValueError, match=r"all 36 pairs of 12 records dropped by --max-length 4"):
        load_pair_data([triplets], tok, max_length=4)


# ------------------------------------------------------------------------- 5. non-finite verifier scores


def test_a_verifier_with_non_finite_weights_or_scores_is_refused(tiny_llm, tiny_verifier, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from llm2_eval.decoding import NonFiniteScoreError

    bad = tmp_path / "bad_verifier"
    shutil.copytree(tiny_verifier, bad)
    weights = load_file(bad / "model.safetensors")
    name = sorted(k for k in weights if k.endswith("q_proj.weight"))[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"the weight .*{name.split('.', 1)[1]} holds NaN or infinite values"):
        _llm2(pretrained=str(tiny_llm), verifier=str(bad), beta=1.0)

    trace = tmp_path / "t.jsonl"
    m = _llm2(pretrained=str(tiny_llm), verifier=str(tiny_verifier), beta=1.0, trace=str(trace))
    with torch.no_grad():  # scores that overflow at run time
        m.verifier.score.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteScoreError, match="the verifier's scores are not finite"):
        m.generate_until(_requests(1, max_gen_toks=8))
    for line in trace.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} written into the trace"))


# -------------------------------- 6, 7, 12. the final verifier: swapped in whole, resumable after a kill, new files


def _top_files(d: Path) -> dict[str, str]:
    import hashlib

    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in d.iterdir() if f.is_file()}


def test_a_kill_during_the_final_save_leaves_the_old_verifier_whole(tiny_llm, triplets, tmp_path, monkeypatch):
    from test_reliability import _train_cfg
    from verifier_train.train import train_verifier

    out = tmp_path / "verifier"
    train_verifier(_train_cfg(tiny_llm, triplets, out, max_steps=1))
    before = _top_files(out)

    def killed(directory, dtype):  # the final save dies half-way (after the weights are written)
        raise KeyboardInterrupt

    monkeypatch.setattr("verifier_train.train.checkpoints.cast_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_verifier(_train_cfg(tiny_llm, triplets, out, max_steps=2, resume=True, save_dtype="bfloat16"))
    after = _top_files(out)
    for name in ("model.safetensors", "config.json", "training_card.json"):
        assert after[name] == before[name], name
    monkeypatch.undo()
    res = train_verifier(_train_cfg(tiny_llm, triplets, out, max_steps=2, resume=True))  # resumes, then saves
    assert res.global_step == 2 and not (out / ".llm2-final.partial").exists()
    assert json.loads((out / "training_card.json").read_text())["global_step"] == 2


def test_resume_after_a_final_save_cut_by_a_kill(tiny_llm, triplets, trained_run, tmp_path):
    from click.testing import CliRunner

    from test_reliability import _train_args
    from verifier_train.train import train_command

    out = tmp_path / "verifier"
    shutil.copytree(trained_run, out)
    for name in ("config.json", "model.safetensors"):  # as an earlier version's in-place save left them
        f = out / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    args = _train_args(tiny_llm, triplets, out, "--resume", "--max-steps", "3", "--lr", "0.001", "--warmup-ratio", "0")
    res = CliRunner().invoke(train_command, args)
    assert res.exit_code == 0, res.output
    assert "\"global_step\": 3" in res.output, res.output
    assert json.loads((out / "config.json").read_text())["llm2_verifier"]


def test_final_save_writes_new_files_never_through_a_hard_link(tiny_llm, triplets, tmp_path):
    import os

    from click.testing import CliRunner

    from test_reliability import _train_args, one_line_error
    from verifier_train.train import train_command

    llm = tmp_path / "llm"
    shutil.copytree(tiny_llm, llm)
    linked = tmp_path / "linked"  # a hard-linked copy of the LLM, written over with --overwrite
    linked.mkdir()
    for f in llm.iterdir():
        os.link(f, linked / f.name)
    before = snapshot(llm)
    res = CliRunner().invoke(train_command, _train_args(llm, triplets, linked, "--overwrite"))
    assert res.exit_code == 0, res.output
    assert snapshot(llm) == before and json.loads((linked / "config.json").read_text())["llm2_verifier"]

    notes = tmp_path / "notes"  # a non-empty folder without any model: refused, as init-verifier does
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    before = snapshot(notes)
    for extra in ([], ["--overwrite"]):
        res = CliRunner().invoke(train_command, _train_args(llm, triplets, notes, *extra))
        assert "is not empty and holds no llm2 checkpoint" in one_line_error(res)
    assert snapshot(notes) == before


def test_a_resume_at_the_last_step_records_no_train_loss(tiny_llm, triplets, trained_run, tmp_path):
    from test_reliability import _train_cfg
    from verifier_train.train import train_verifier

    out = tmp_path / "verifier"
    shutil.copytree(trained_run, out)
    res = train_verifier(_train_cfg(tiny_llm, triplets, out, resume=True))  # max_steps 2: nothing left to train
    assert res.global_step == 2 and "train_loss" not in res.metrics and res.card["steps_this_run"] == 0


# ------------------------------- 10, 11. a template that ignores the messages; --gold self that solves nothing


def test_a_chat_template_that_ignores_the_messages_or_does_not_render_is_refused(tiny_llm, triplets, tmp_path):
    from click.testing import CliRunner

    from test_reliability import QUESTIONS, _explore_args, _gsm8k, _train_args, one_line_error
    from verifier_train.explore import explore_command
    from verifier_train.train import train_command

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:1])
    (tmp_path / "fixed.jinja").write_text("<|im_start|>user\nhello<|im_end|>\n")
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    before = snapshot(tmp_path)
    for name, match in [("fixed.jinja", "renders an assistant message as no token after the prompt"),
                        ("broken.jinja", "cannot render a chat (TemplateSyntaxError")]:
        template = str(tmp_path / name)
        res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, tmp_path / "o.jsonl", "--chat-template",
                                                                template))
        assert f"--chat-template {template} {match}"[:60] in one_line_error(res)
        res = CliRunner().invoke(train_command, _train_args(tiny_llm, triplets, tmp_path / "v", "--chat-template",
                                                            template))
        assert f"--chat-template {template} {match}"[:60] in one_line_error(res)
    assert snapshot(tmp_path) == before


def test_gold_self_that_solves_no_question_warns(tiny_llm, tmp_path, capsys):
    from test_reliability import QUESTIONS, _explore_cfg, _gsm8k
    from verifier_train.explore import explore

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:2])
    s = explore(_explore_cfg(tiny_llm, data, tmp_path / "o.jsonl", gold="self", self_samples=1, self_max_tokens=2,
                             checker=lambda text, gold, tokens: False))
    assert s["examples"] == 0 and s["self_gold_failed"] == 2
    assert s["warnings"] == ["--gold self: none of the 2 questions was solved in 1 samples, so no record was written"]
    assert "none of the 2 questions was solved" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- 11. clear errors


def test_clear_errors(tiny_llm, triplets, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from transformers import AutoTokenizer

    from test_tasks import utils as task_utils  # tasks/utils.py
    from test_reliability import QUESTIONS, _explore_args, _gsm8k, _train_args, one_line_error
    from verifier_train.explore import explore_command
    from verifier_train.records import RecordError
    from verifier_train.train import train_command
    from verifier_train.train.data import load_pair_data

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # an empty task file
    monkeypatch.setenv("LLM2_DATA_DIR", str(tmp_path))
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"gsm8k/test.jsonl: no examples"):
        task_utils.load_gsm8k()

    from verifier_train.records import chat_token_ids, response_start

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    oov = tmp_path / "oov.jsonl"  # an out-of-vocabulary negative: no chat-template hint
    rec = json.loads(triplets.read_text().splitlines()[0])
    ids = chat_token_ids(tok, rec["messages"])
    pos = next(p for p in range(response_start(tok, rec["messages"]), len(ids)) if ids.count(ids[p]) > 1)
    rec["samples"] = [[pos, ids[pos], 10**6]]  # its gold token also stands elsewhere: a "shift" would match
    oov.write_text(json.dumps(rec) + "\n")
    with pytest.raises(RecordError) as err:
        load_pair_data([oov], tok)
    assert "outside the vocabulary" in str(err.value) and "chat template" not in str(err.value)

    (tmp_path / "notes.md").write_text("my notes")  # a file as the output's parent
    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:1])
    before = snapshot(tmp_path)
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, tmp_path / "notes.md" / "o.jsonl"))
    assert "notes.md is a file, not a directory" in one_line_error(res)
    res = CliRunner().invoke(train_command, _train_args(tiny_llm, triplets, tmp_path / "notes.md" / "v"))
    assert "notes.md is a file, not a directory" in one_line_error(res)
    assert snapshot(tmp_path) == before

    from lm_eval.models.huggingface import HFLM  # a missing verifier= named before the LLM loads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HFLM, "__init__", _no_load)
    with pytest.raises(FileNotFoundError, match="verifier=org/ver: no such directory"):
        _llm2(pretrained=str(tiny_llm), verifier="org/ver")


# ---------------------------------------------------- 12. a refusal leaves no empty output nor temporary file


def test_a_failed_exploration_leaves_no_empty_output_or_temporary_file(tiny_llm, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from test_reliability import QUESTIONS, _explore_args, _gsm8k, one_line_error
    from verifier_train.explore import explore_command

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')  # no answer: refused at its first line
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, bad, tmp_path / "new" / "o.jsonl"))
    assert res.exit_code == 1 and "bad.jsonl:1: missing field 'answer'" in res.output  # after the model loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]

    (tmp_path / "o.summary.json").mkdir()
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, bad, tmp_path / "o.jsonl"))
    assert "o.summary.json of --output" in one_line_error(res)
    (tmp_path / "o.summary.json").rmdir()

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:1])

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("verifier_train.explore.run.os.replace", full_disk)
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, tmp_path / "o.jsonl"))
    assert res.exit_code == 1 and "No space left on device" in res.output
    assert not list(tmp_path.glob("*.tmp"))


def test_write_dir_replacing_is_all_or_nothing(tmp_path):
    """A failed write or a refusing re-check leaves the old directory as it was and no sibling behind; a success
    leaves only the new files (none of the replaced directory's)."""
    from llm2_eval.paths import write_dir_replacing

    out = tmp_path / "v"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def boom(_: Path) -> None:
        raise RuntimeError("disk full")

    def refuse() -> None:
        raise FileExistsError("changed meanwhile")

    def write(d: Path) -> None:
        (d / "new.txt").write_text("new")

    with pytest.raises(RuntimeError):
        write_dir_replacing(out, boom, lambda: None)
    with pytest.raises(FileExistsError):
        write_dir_replacing(out, write, refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    write_dir_replacing(out, write, lambda: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    write_dir_replacing(tmp_path / "fresh", write, lambda: None)
    assert (tmp_path / "fresh" / "new.txt").read_text() == "new"
