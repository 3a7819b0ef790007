"""Nothing lost, nothing silently wrong (issue 11): refused outputs leave every file untouched, resumes check what
they resume, bad arguments get one-line errors. CPU, tiny local models."""

from __future__ import annotations

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
    assert runner.invoke(init_verifier_command, ["--model", str(workdir / "llm"), "--output", str(empty)]).exit_code == 0
    assert (empty / "config.json").exists()
