"""lm-eval finds ``--model llm2`` and the llm2 tasks with no extra flags; built-in models keep working.

These run the real ``lm_eval`` console script of the environment in a subprocess (fresh interpreter, so the
``llm2_eval_hook.pth`` start-up hook is what registers us) against the local GSM8K data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm2_eval import registration

LM_EVAL = shutil.which("lm_eval") or str(Path(sys.executable).parent / "lm_eval")


def run(args, cwd, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def python(code: str, cwd, **kw):
    return run([sys.executable, "-c", code], cwd, **kw)


def results(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("results_*.json"))
    assert files, f"no results file under {out_dir}"
    return json.loads(files[-1].read_text())


def test_tasks_dir_has_the_task_yamls():
    names = {p.stem for p in registration.tasks_dir().glob("*.yaml")}
    assert {"gsm8k_llm2", "gsm8k_llm2_maj", "math500_llm2", "math500_llm2_maj"} <= names


def test_hook_registers_llm2_after_builtin_models(tmp_path):
    code = (
        "from lm_eval.api.registry import get_model, model_registry; "
        "print(get_model('hf').__name__, get_model('llm2').__name__, 'vllm' in model_registry)"
    )
    out = python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["HFLM", "LLM2LM", "True"]
    off = python(code, tmp_path, env_extra={"LLM2_EVAL_NO_HOOK": "1"})
    assert off.returncode != 0 and "llm2" in off.stderr


def test_startup_hook_is_import_light(tmp_path):
    out = python("import sys; print(sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules))",
                 tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[]"


def test_task_manager_indexes_llm2_tasks_only_with_defaults(tmp_path):
    code = (
        "from lm_eval.tasks import TaskManager; tm = TaskManager(); "
        "print('gsm8k_llm2' in tm.all_tasks, 'gsm8k' in tm.all_tasks, "
        "'gsm8k_llm2' in TaskManager(include_defaults=False, include_path='/nonexistent').all_tasks)"
    )
    out = python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


@pytest.mark.slow
def test_lm_eval_cli_runs_llm2_on_gsm8k(tiny_llm, tiny_verifier, data_dir, tmp_path):
    out_dir = tmp_path / "out"
    proc = run(
        [LM_EVAL, "--model", "llm2", "--model_args",
         f"pretrained={tiny_llm},verifier={tiny_verifier},beta=0.5,dtype=float32", "--tasks", "gsm8k_llm2",
         "--limit", "3", "--apply_chat_template", "--gen_kwargs", "max_gen_toks=8", "--batch_size", "2",
         "--output_path", str(out_dir), "--log_samples"],
        tmp_path, env_extra={"LLM2_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(out_dir)
    assert res["config"]["model"] == "llm2"
    assert "exact_match,none" in res["results"]["gsm8k_llm2"]
    samples = [json.loads(line) for f in out_dir.rglob("samples_gsm8k_llm2_*.jsonl") for line in f.open()]
    assert len(samples) == 3
    first = json.loads((data_dir / "gsm8k" / "test.jsonl").open().readline())
    assert any(s["doc"]["question"] == first["question"] for s in samples)
    assert all(s["doc"]["question"] in s["arguments"]["gen_args_0"]["arg_0"] for s in samples)


@pytest.mark.slow
def test_lm_eval_cli_hf_model_still_works(tiny_llm, data_dir, tmp_path):
    out_dir = tmp_path / "out"
    proc = run(
        [LM_EVAL, "--model", "hf", "--model_args", f"pretrained={tiny_llm},dtype=float32", "--device", "cpu",
         "--tasks", "gsm8k_llm2", "--limit", "2", "--gen_kwargs", "max_gen_toks=4", "--output_path", str(out_dir)],
        tmp_path, env_extra={"LLM2_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(out_dir)["config"]["model"] == "hf"


@pytest.mark.slow
def test_llm2_eval_forwards_to_lm_eval_and_reports_bad_args(tiny_llm, data_dir, tmp_path):
    out_dir = tmp_path / "out"
    proc = run(
        [sys.executable, "-m", "llm2_eval.cli", "eval", "--model", "llm2", "--model_args",
         f"pretrained={tiny_llm},dtype=float32", "--tasks", "gsm8k_llm2", "--limit", "1", "--gen_kwargs",
         "max_gen_toks=4", "--output_path", str(out_dir)],
        tmp_path, env_extra={"LLM2_DATA_DIR": str(data_dir), "LLM2_EVAL_NO_HOOK": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(out_dir)["config"]["model"] == "llm2"
    bad = run(
        [LM_EVAL, "--model", "llm2", "--model_args", f"pretrained={tiny_llm},alpha=2", "--tasks", "gsm8k_llm2",
         "--limit", "1"],
        tmp_path, env_extra={"LLM2_DATA_DIR": str(data_dir)},
    )
    assert bad.returncode != 0 and "alpha=2" in bad.stderr
