"""Nothing lost, nothing silently wrong (issue 11): refused outputs leave every file untouched, resumes check what
they resume, bad arguments get one-line errors. CPU, tiny local models."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm2_eval.cli import init_verifier_command


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and directory under ``roots``: path -> (size, mtime_ns, sha256) for files, "dir" for folders."""
    out: dict[str, tuple] = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            if p.is_dir():
                out[str(p)] = ("dir",)
            elif p.exists():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def one_line_error(res) -> str:
    """The CLI failed with exactly one line of output and no traceback; returns that line."""
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return lines[0]


@pytest.fixture
def workdir(tiny_llm, tmp_path):
    """``tmp/work`` with a copy of the tiny LLM (``work/llm``) and a user's files next to it."""
    work = tmp_path / "work"
    shutil.copytree(tiny_llm, work / "llm")
    (work / "notes.txt").write_text("my notes\n")
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    return work


# ------------------------------------------------------------------------------------ 1. init-verifier --output


def test_init_verifier_refuses_a_directory_it_did_not_write(workdir, monkeypatch):
    before = snapshot(workdir.parent)
    monkeypatch.chdir(workdir / "llm")
    for extra in ([], ["--overwrite"]):  # the parent folder of the model: never replaced, even with --overwrite
        res = CliRunner().invoke(init_verifier_command, ["--model", ".", "--output", "..", *extra])
        assert "not empty and holds no llm2 checkpoint" in one_line_error(res)
    res = CliRunner().invoke(init_verifier_command, ["--model", ".", "--output", ".", "--overwrite"])
    assert "is the --model directory" in one_line_error(res)
    from llm2_eval.verifier import init_verifier

    with pytest.raises(FileExistsError, match="is a file"):
        init_verifier(".", "../notes.txt")
    assert snapshot(workdir.parent) == before


def test_init_verifier_replaces_only_its_own_checkpoint_with_overwrite(workdir):
    out = workdir / "verifier"
    runner = CliRunner()
    assert runner.invoke(init_verifier_command, ["--model", str(workdir / "llm"), "--output", str(out)]).exit_code == 0
    before = snapshot(workdir)
    res = runner.invoke(init_verifier_command, ["--model", str(workdir / "llm"), "--output", str(out), "--seed", "1"])
    assert "pass --overwrite" in one_line_error(res)
    assert snapshot(workdir) == before
    (out / "extra.txt").write_text("x")  # still an llm2 checkpoint: replaced as a whole
    res = runner.invoke(init_verifier_command, ["--model", str(workdir / "llm"), "--output", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (out / "extra.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "llm", "notes.txt", "verifier"]  # no leftovers
    empty = workdir / "empty"
    empty.mkdir()
    res = runner.invoke(init_verifier_command, ["--model", str(workdir / "llm"), "--output", str(empty)])
    assert res.exit_code == 0, res.output
    assert (empty / "config.json").exists()


# ------------------------------------------------------------------------- 2, 8, 12. train-verifier paths, resume


@pytest.fixture(scope="module")
def triplets(tiny_llm, tmp_path_factory) -> Path:
    """12 records with valid triplets for ``tiny_llm`` (negatives: the next token id)."""
    from transformers import AutoTokenizer

    from verifier_train.records import chat_token_ids, response_start

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    lines = []
    for i in range(12):
        msgs = [{"role": "user", "content": f"how many apples has she {i}?"},
                {"role": "assistant", "content": f"she has {i + 3} apples. The answer is {i + 3}."}]
        ids, start = chat_token_ids(tok, msgs), response_start(tok, msgs)
        samples = [[p, ids[p], (ids[p] + 1) % len(tok)] for p in range(start, min(start + 3, len(ids)))]
        lines.append(json.dumps({"id": i, "messages": msgs, "samples": samples}))
    path = tmp_path_factory.mktemp("triplets") / "triplets.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_cfg(tiny_llm, data, out, **kw):
    from verifier_train.train import TrainConfig

    base = dict(model=str(tiny_llm), data=[str(data)], output=str(out), bf16=False, gradient_checkpointing=False,
                global_batch=4, micro_batch=4, lr=1e-3, warmup_ratio=0.0, eval_fraction=0.0, logging_steps=1,
                save_steps=1, max_steps=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _train_args(tiny_llm, data, out, *extra):
    return ["--model", str(tiny_llm), "--data", str(data), "--output", str(out), "--fp32", "--global-batch", "4",
            "--micro-batch", "4", "--max-steps", "1", "--eval-fraction", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained_run(tiny_llm, triplets, tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoints at steps 1 and 2 (copied by each test that changes it)."""
    from verifier_train.train import train_verifier

    out = tmp_path_factory.mktemp("run") / "verifier"
    train_verifier(_train_cfg(tiny_llm, triplets, out))
    return out


def test_train_verifier_refuses_an_output_that_is_an_input_or_a_foreign_model(workdir, triplets, tmp_path):
    from verifier_train.train import train_command

    model = workdir / "llm"
    data = tmp_path / "t.jsonl"
    shutil.copy(triplets, data)
    (workdir / "link").symlink_to(model, target_is_directory=True)
    before = snapshot(workdir, tmp_path)
    runner = CliRunner()
    for out, extra, match in [
        (model, [], "is the --model directory"),
        (model, ["--overwrite"], "is the --model directory"),
        (workdir / "link", ["--overwrite"], "is the --model directory"),  # a link to the model
        (data, [], "is the --data file"),
    ]:
        assert match in one_line_error(runner.invoke(train_command, _train_args(model, data, out, *extra)))
    assert snapshot(workdir, tmp_path) == before
    other = workdir / "other_model"
    shutil.copytree(model, other)
    before = snapshot(workdir, tmp_path)
    res = runner.invoke(train_command, _train_args(model, data, other))
    assert "holds a model that llm2 did not write" in one_line_error(res)
    assert snapshot(workdir, tmp_path) == before


def test_model_path_that_does_not_exist_is_named(tmp_path, triplets):
    from verifier_train.train import train_command

    res = CliRunner().invoke(train_command, _train_args(tmp_path / "no_such_llm", triplets, tmp_path / "out"))
    assert f"--model {tmp_path / 'no_such_llm'}: no such directory" in one_line_error(res)
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(init_verifier_command, ["--model", str(tmp_path / "nope"), "--output",
                                                     str(tmp_path / "v")])
    assert "no such directory" in one_line_error(res)
    from verifier_train.explore import explore_command

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS)
    res = CliRunner().invoke(explore_command, _explore_args(tmp_path / "nope", data, tmp_path / "o.jsonl"))
    assert f"--model {tmp_path / 'nope'}: no such directory" in one_line_error(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def test_resume_skips_an_incomplete_checkpoint(tiny_llm, triplets, trained_run, tmp_path, capsys):
    from verifier_train.train import train_verifier
    from verifier_train.train.checkpoints import checkpoint_problem

    out = tmp_path / "verifier"
    shutil.copytree(trained_run, out)
    ckpts = out / "checkpoints"
    shutil.copytree(ckpts / "checkpoint-2", ckpts / "checkpoint-3")  # killed while saving step 3
    (ckpts / "checkpoint-3" / "trainer_state.json").unlink()
    assert "trainer_state.json" in checkpoint_problem(ckpts / "checkpoint-3")
    cut = tmp_path / "cut"
    shutil.copytree(ckpts / "checkpoint-2", cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert checkpoint_problem(cut) == "model.safetensors is truncated"
    opt = cut / "optimizer.pt"
    shutil.copy(ckpts / "checkpoint-2" / "model.safetensors", weights)
    opt.write_bytes(opt.read_bytes()[:-100])
    assert checkpoint_problem(cut) == "optimizer.pt is truncated"
    assert checkpoint_problem(ckpts / "checkpoint-2") is None

    res = train_verifier(_train_cfg(tiny_llm, triplets, out, max_steps=3, resume=True))
    assert res.card["resumed_from"].endswith("checkpoint-2") and res.global_step == 3
    assert "skipped incomplete checkpoint(s) checkpoint-3" in capsys.readouterr().err.replace("\n", " ")


def test_resume_refuses_other_data_or_settings_and_records_a_longer_run(tiny_llm, triplets, trained_run, tmp_path,
                                                                        capsys):
    from verifier_train.train import train_command, train_verifier

    out = tmp_path / "verifier"
    shutil.copytree(trained_run, out)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(triplets.read_text().splitlines(keepends=True)[:6]))
    before = snapshot(out)
    runner = CliRunner()
    for data, extra, match in [
        (other, [], "other settings: data"),
        (triplets, ["--lr", "0.01"], "lr (checkpoints: 0.001; now: 0.01)"),
        (triplets, ["--seed", "3"], "seed"),
    ]:
        args = _train_args(tiny_llm, data, out, "--resume", "--max-steps", "3", "--lr", "0.001", *extra)
        assert match in one_line_error(runner.invoke(train_command, args))
    assert snapshot(out) == before
    moved = tmp_path / "moved.jsonl"  # the same content under another name resumes
    shutil.copy(triplets, moved)
    res = train_verifier(_train_cfg(tiny_llm, moved, out, max_steps=3, resume=True))
    assert res.global_step == 3
    assert res.card["resume_changes"] == {"max_steps": {"checkpoints": 2, "now": 3}}
    assert "--resume with changed max_steps (2 -> 3)" in capsys.readouterr().err.replace("\n", " ")


def test_resume_of_checkpoints_without_recorded_settings_warns(tiny_llm, triplets, trained_run, tmp_path, capsys):
    from verifier_train.train import train_verifier

    out = tmp_path / "verifier"
    shutil.copytree(trained_run, out)
    (out / "checkpoints" / "run_settings.json").unlink()  # as an earlier version wrote them
    res = train_verifier(_train_cfg(tiny_llm, triplets, out, max_steps=3, resume=True))
    assert res.global_step == 3
    assert "cannot check that --resume uses the same data" in capsys.readouterr().err.replace("\n", " ")
    assert (out / "checkpoints" / "run_settings.json").exists()


# ----------------------------------------------------------------------------------- 3, 4, 5, 12. llm2 explore

QUESTIONS = [
    ("she has 3 apples and buys 4 more. how many apples?", "3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("he had 12 eggs and sells 5. how many eggs are left?", "12 - 5 = <<12-5=7>>7 eggs are left.\n#### 7"),
    ("they make 2 dollars each hour for 6 hours. how much in total?", "2 * 6 = <<2*6=12>>12 dollars.\n#### 12"),
]


def even_checker(text, gold, tokens):
    """Stub: a rollout 'reaches the answer' iff its first generated token id is even."""
    return bool(tokens) and tokens[0] % 2 == 0


def _gsm8k(path: Path, questions) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in questions))
    return path


def _explore_cfg(tiny_llm, data, out, **kw):
    from verifier_train.explore import ExploreConfig

    base = dict(model=str(tiny_llm), data=str(data), output=str(out), positions="sample:1", candidates=1, rollouts=1,
                max_rollout_tokens=2, progress=False, checker=even_checker)
    base.update(kw)
    return ExploreConfig(**base)


def _explore_args(tiny_llm, data, out, *extra):
    return ["--model", str(tiny_llm), "--data", str(data), "--output", str(out), "--positions", "sample:1",
            "--candidates", "1", "--rollouts", "1", "--max-rollout-tokens", "2", "--no-progress", *extra]


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in path.read_text().splitlines()]


def test_explore_refuses_an_output_that_is_an_input(workdir, tmp_path):
    from verifier_train.explore import explore_command

    model = workdir / "llm"
    data = _gsm8k(workdir / "data" / "train.jsonl", QUESTIONS)
    before = snapshot(workdir)
    runner = CliRunner()
    for out, extra, match in [
        (data, [], "is the --data file"),
        (workdir / "data" / ".." / "data" / "train.jsonl", [], "is the --data file"),
        (model / "config.json", [], "not an llm2 explore output"),  # a file of the model: never appended to
        (workdir / "notes.txt", [], "not an llm2 explore output"),
    ]:
        assert match in one_line_error(runner.invoke(explore_command, _explore_args(model, data, out, *extra)))
    link = tmp_path / "data_link.jsonl"
    link.symlink_to(data)
    assert "is the --data file" in one_line_error(runner.invoke(explore_command, _explore_args(model, data, link)))
    assert snapshot(workdir) == before


def test_explore_contrast_model_is_an_input(tiny_llm, workdir, tmp_path):
    from verifier_train.explore import ExploreConfig, explore

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS)
    cfg = ExploreConfig(model=str(tiny_llm), data=str(data), output=str(workdir / "llm"), strategy="sample",
                        mode="contrast", contrast_model=str(workdir / "llm"), progress=False)
    before = snapshot(workdir)
    with pytest.raises(ValueError, match="is the --contrast-model directory"):
        explore(cfg)
    assert snapshot(workdir) == before


def test_resume_keeps_a_complete_last_record_and_reports_dropped_bytes(tiny_llm, tmp_path):
    from verifier_train.explore import explore

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS)
    ref = tmp_path / "ref.jsonl"
    explore(_explore_cfg(tiny_llm, data, ref))
    out = tmp_path / "out.jsonl"
    explore(_explore_cfg(tiny_llm, data, out, limit=2))
    out.write_bytes(out.read_bytes().rstrip(b"\n"))  # killed after the record, before its newline
    s = explore(_explore_cfg(tiny_llm, data, out))
    assert (s["resumed"], s["examples"], s["dropped_bytes"]) == (2, 1, 0)
    assert _records(out) == _records(ref)
    fragment = b'{"id": 9, "messages": [{"role": "us'
    with out.open("ab") as f:
        f.write(fragment)
    s = explore(_explore_cfg(tiny_llm, data, out))
    assert (s["resumed"], s["examples"], s["dropped_bytes"]) == (3, 0, len(fragment))
    assert _records(out) == _records(ref)
    assert json.loads((tmp_path / "out.summary.json").read_text())["dropped_bytes"] == len(fragment)


def test_resume_refuses_another_input(tiny_llm, tmp_path):
    from verifier_train.explore import explore, explore_command

    data = _gsm8k(tmp_path / "a.jsonl", QUESTIONS)
    other = _gsm8k(tmp_path / "b.jsonl", [(q + " now", a) for q, a in QUESTIONS])
    out = tmp_path / "out.jsonl"
    explore(_explore_cfg(tiny_llm, data, out, limit=2))
    assert json.loads(out.read_text().splitlines()[0])["settings"]["input"]["sha256"]
    before = snapshot(tmp_path)
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, other, out, "--limit", "2"))
    assert "was explored from another input" in one_line_error(res)
    assert snapshot(tmp_path) == before
    moved = tmp_path / "moved.jsonl"  # the same content elsewhere resumes; so does a longer --limit
    shutil.copy(data, moved)
    s = explore(_explore_cfg(tiny_llm, moved, out))
    assert (s["resumed"], s["examples"], s["warnings"]) == (2, 1, [])


def test_resume_of_an_output_without_input_identity_warns(tiny_llm, tmp_path, capsys):
    from verifier_train.explore import explore

    data = _gsm8k(tmp_path / "a.jsonl", QUESTIONS)
    out = tmp_path / "out.jsonl"
    explore(_explore_cfg(tiny_llm, data, out, limit=2))
    old = [json.loads(x) for x in out.read_text().splitlines()]
    for rec in old:  # as an earlier version wrote it
        del rec["settings"]["input"]
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    s = explore(_explore_cfg(tiny_llm, data, out))
    assert (s["resumed"], s["examples"]) == (2, 1)
    assert len(s["warnings"]) == 1 and "records no input identity" in s["warnings"][0]
    assert "records no input identity" in capsys.readouterr().err.replace("\n", " ")


def test_explore_refuses_an_empty_input(tiny_llm, tmp_path):
    from verifier_train.explore import explore_command

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, empty, tmp_path / "o.jsonl"))
    assert "no examples" in one_line_error(res)
    data = _gsm8k(tmp_path / "a.jsonl", QUESTIONS)
    res = CliRunner().invoke(explore_command, _explore_args(tiny_llm, data, tmp_path / "o.jsonl", "--start", "3"))
    assert "--start 3 is past its 3 examples" in one_line_error(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "empty.jsonl"]


# ---------------------------------------------------------------------- 7, 9, 10, 11. lm_eval --model llm2 args


def _llm2(**args):
    from lm_eval.api.registry import get_model

    return get_model("llm2")(dtype="float32", batch_size=1, **args)


def test_unknown_model_arg_is_refused_with_the_valid_ones(tiny_llm):
    with pytest.raises(ValueError, match=r"model arg betta=0\.2 is not known \(did you mean beta\?\); valid: .*alpha"):
        _llm2(pretrained=str(tiny_llm), betta=0.2)
    m = _llm2(pretrained=str(tiny_llm), attn_implementation="eager", max_position_embeddings=512)  # pass-through
    assert m.model.config.max_position_embeddings == 512


def test_llm_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"pretrained={tmp_path / 'nope'}: no such directory"):
        _llm2(pretrained=str(tmp_path / "nope"))


def test_verifier_is_checked_before_the_llm_loads(tiny_llm, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM
    from tiny_models import build_tiny_llm, build_tokenizer

    from llm2_eval.verifier import TokenizerMismatchError, init_verifier

    other_llm = build_tiny_llm(tmp_path / "other", tokenizer=build_tokenizer(extra_token="<|x|>"))
    other_ver = init_verifier(other_llm, tmp_path / "other_ver")

    @functools.wraps(HFLM.__init__)  # same signature: the model-arg check reads it
    def no_load(self, *a, **k):
        raise AssertionError("the LLM was loaded before the verifier was checked")

    monkeypatch.setattr(HFLM, "__init__", no_load)
    with pytest.raises(FileNotFoundError, match="verifier checkpoint not found"):
        _llm2(pretrained=str(tiny_llm), verifier=str(tmp_path / "missing"))
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer vocabulary"):
        _llm2(pretrained=str(tiny_llm), verifier=str(other_ver))
    with pytest.raises(ValueError, match="exactly one label"):
        _llm2(pretrained=str(tiny_llm), verifier=str(tiny_llm))  # an LLM, not a verifier


def test_alpha_with_top_k_warns(tiny_llm, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="llm2_eval.lm_eval_model"):
        _llm2(pretrained=str(tiny_llm), top_k=3)
    assert "both given" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="llm2_eval.lm_eval_model"):
        _llm2(pretrained=str(tiny_llm), top_k=3, alpha=0.2)
    assert "alpha=0.2 and top_k=3 are both given" in caplog.text


def test_explore_alpha_with_top_k_warns(tiny_llm, tmp_path):
    from verifier_train.explore import explore

    data = _gsm8k(tmp_path / "q.jsonl", QUESTIONS[:1])
    assert explore(_explore_cfg(tiny_llm, data, tmp_path / "a.jsonl", top_k=3))["warnings"] == []
    s = explore(_explore_cfg(tiny_llm, data, tmp_path / "b.jsonl", top_k=3, alpha=0.2))
    assert s["warnings"] == ["alpha=0.2 and top_k=3 are both given: the candidates are the tokens that pass both "
                             "(llm2_eval.candidates)"]
