"""Runs of more than one process, executed for real on CPU (gloo): ``torchrun`` / ``accelerate launch`` of
``llm2 train-verifier`` against one process with the same global batch and data order (issue 24).

The 2-process runs are subprocesses (``python -m torch.distributed.run --standalone --nproc_per_node 2`` and
``accelerate launch --config_file docs/accelerate/ddp.yaml``) that import this checkout's code; each takes
~15-25 s on 2 loaded cores. They run in the default ``pytest`` / ``tox`` (marker ``distributed`` to select them).

Adam is (almost) blind to a uniform scale of the gradient, so equal final weights alone would not catch a gradient
that DDP averages twice or a loss normalised per rank: every step's logged loss and gradient norm (taken after
the all-reduce) are compared too, and those halve under such a bug.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm2_eval

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")]

REPO = Path(__file__).resolve().parent.parent
CODE_ROOT = Path(llm2_eval.__file__).resolve().parent.parent  # where this process imports llm2_eval from
DDP_CONFIG = REPO / "docs" / "accelerate" / "ddp.yaml"

# 16 solutions with 1-5 pairs each (micro-batches hold different pair counts, so the two normalisations
# differ); 4 held out, 12 trained on: global batch 8 = step 1 of 8 solutions, step 2 of 4, step 3 in epoch 2.
STEPS = 3
COMMON = ["--fp32", "--no-gradient-checkpointing", "--global-batch", "8", "--micro-batch", "2", "--lr", "5e-3",
          "--head-lr", "5e-3", "--warmup-ratio", "0", "--lr-scheduler", "constant", "--eval-fraction", "0.25",
          "--eval-steps", str(STEPS), "--logging-steps", "1", "--head-init", "normal", "--no-progress"]


@pytest.fixture(scope="module")
def pair_data(tiny_llm, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from verifier_train.records import chat_token_ids, response_start

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    rng = random.Random(0)
    words = "the a of to and is are has had how many much each every total left more less than apples eggs".split()
    path = tmp_path_factory.mktemp("ddp") / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(16):
            msgs = [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(6))},
                    {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(8))}]
            ids, start = chat_token_ids(tok, msgs), response_start(tok, msgs)
            pos = rng.sample(range(start, len(ids)), min(1 + i % 5, len(ids) - start))
            samples = [[p, ids[p], (ids[p] + 1 + rng.randrange(50)) % len(tok)] for p in pos]
            f.write(json.dumps({"id": i, "messages": msgs, "samples": samples}) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CODE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _launch(launcher: list[str], args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = launcher + ["-m", "llm2_eval.cli", "train-verifier"] + args
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


def torchrun(n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def accelerate_launch(config: Path = DDP_CONFIG) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(_free_port()), "--mixed_precision", "no"]


def _one_process(tiny_llm, data: Path, out: Path, norm: str) -> None:
    """The reference: one process, micro-batch 2 x 4 accumulation steps = the same global batch of 8."""
    from click.testing import CliRunner

    from llm2_eval.cli import main

    args = ["train-verifier", "--model", str(tiny_llm), "--data", str(data), "--output", str(out),
            "--max-steps", str(STEPS), "--loss-normalization", norm] + COMMON
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]


def assert_same_run(one: Path, many: Path, base_model: Path, world: int) -> None:
    """``many`` (``world`` processes) trained like ``one`` (1 process): every step's loss, gradient norm and pair
    count, the held-out metrics and the final weights (to float tolerance); its card and log written once."""
    from safetensors.torch import load_file

    card1 = json.loads((one / "training_card.json").read_text())
    card = json.loads((many / "training_card.json").read_text())
    assert card1["settings"]["world_size"] == 1 and card["settings"]["world_size"] == world
    assert card1["settings"]["gradient_accumulation_steps"] == world * card["settings"]["gradient_accumulation_steps"]
    assert card["global_step"] == card1["global_step"] == STEPS

    log1, log = _log(one), _log(many)
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == list(range(1, STEPS + 1)), steps  # one line per step: only rank 0 writes the log
    # the training lines of every step, then the final evaluation (an interrupted run also evaluated at its end)
    pick = lambda lg: [r for r in lg if "loss" in r] + [[r for r in lg if "eval_pair_accuracy" in r][-1]]  # noqa
    log1, log = pick(log1), pick(log)
    assert [sorted(r) for r in log1] == [sorted(r) for r in log]
    for a, b in zip(log1, log):
        for key in ("loss", "grad_norm", "pairs", "pair_accuracy", "eval_loss", "eval_pair_accuracy", "eval_pairs"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-7), (a["step"], key, a[key], b[key])
    assert card["final_metrics"]["eval_pairs"] == card1["final_metrics"]["eval_pairs"] > 0  # gathered over ranks

    w1, w = load_file(str(one / "model.safetensors")), load_file(str(many / "model.safetensors"))
    base = load_file(str(Path(base_model) / "model.safetensors"))
    assert w.keys() == w1.keys()
    moved = max(float((w1[k] - base[k]).abs().max()) for k in w1 if k in base)
    assert moved > 1e-3  # training changed the weights: the comparison below means something
    for k in w1:
        if k == "score.bias":  # the pairwise loss reads score differences: the bias's gradient is 0 up to rounding,
            continue  # which Adam (dividing by the gradient's own scale) turns into steps of up to lr either way
        assert torch.allclose(w[k], w1[k], rtol=0, atol=1e-3 * moved), (k, float((w[k] - w1[k]).abs().max()))


@pytest.fixture(scope="module")
def references(tiny_llm, pair_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("one")
    out = {}
    for norm in ("pairs", "official"):
        _one_process(tiny_llm, pair_data, root / norm, norm)
        out[norm] = root / norm
    one, official = _log(out["pairs"]), _log(out["official"])
    assert one[0]["loss"] != pytest.approx(official[0]["loss"], rel=1e-3)  # the normalisations do differ here
    return out


def test_torchrun_two_processes_train_like_one_and_resume_exactly(tiny_llm, pair_data, references, tmp_path):
    """``--loss-normalization pairs`` under torchrun, interrupted after step 2 and resumed under 2 processes:
    the same steps, metrics and final weights as one uninterrupted process; checkpoints written once."""
    out = tmp_path / "torchrun"
    args = ["--model", str(tiny_llm), "--data", str(pair_data), "--output", str(out), "--loss-normalization",
            "pairs", "--save-steps", "2"] + COMMON
    _launch(torchrun(), args + ["--max-steps", "2"])
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "run_settings.json"], ckpts
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2]
    res = _launch(torchrun(), args + ["--max-steps", str(STEPS), "--resume"])
    assert len([line for line in res.stdout.splitlines() if line.startswith("{")]) == 1  # one summary line
    card = json.loads((out / "training_card.json").read_text())
    assert card["resumed_from"].endswith("checkpoint-2") and card["steps_this_run"] == 1
    assert (out / "checkpoints" / "checkpoint-3" / "rng_state_1.pth").exists()  # each rank's RNG state, once
    assert_same_run(references["pairs"], out, tiny_llm, world=2)


def test_accelerate_config_starts_two_processes_official_normalisation(tiny_llm, pair_data, references, tmp_path):
    """``accelerate launch --config_file docs/accelerate/ddp.yaml`` (the config docs/training.md and docs/scaling.md
    give) really starts 2 processes on CPU, and ``--loss-normalization official`` trains like one process.
    (docs/accelerate/fsdp.yaml also starts 2 CPU processes, but on CPU accelerate runs them as plain DDP: the
    Trainer's ``is_fsdp_enabled`` is False; FSDP and DeepSpeed need GPUs.)"""
    out = tmp_path / "accelerate"
    res = _launch(accelerate_launch(), ["--model", str(tiny_llm), "--data", str(pair_data), "--output", str(out),
                                        "--max-steps", str(STEPS), "--loss-normalization", "official"] + COMMON)
    assert "FSDP" not in res.stderr
    assert_same_run(references["official"], out, tiny_llm, world=2)


# ---------------------------------------------------------------------------------------------------- evaluation

LM_EVAL_ARGS = ["--tasks", "gsm8k_llm2", "--limit", "3", "--apply_chat_template", "--gen_kwargs", "max_gen_toks=6",
                "--batch_size", "1", "--log_samples"]


def _lm_eval(launcher: list[str], tiny_llm, tiny_verifier, out: Path, data_dir) -> subprocess.CompletedProcess:
    args = ["-m", "lm_eval", "--model", "llm2", "--model_args",
            f"pretrained={tiny_llm},verifier={tiny_verifier},beta=0.5,dtype=float32,trace={out / 'trace.jsonl'}",
            *LM_EVAL_ARGS, "--output_path", str(out)]
    env = {**_env(), "LLM2_DATA_DIR": str(data_dir)}
    res = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert res.returncode == 0, f"{launcher + args}\n{res.stderr[-6000:]}"
    return res


def _results(out: Path) -> tuple[dict, dict]:
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("samples_gsm8k_llm2_*.jsonl")).read_text().splitlines()]
    # lm-eval appends the result of its data-parallel padding request to the padded question's responses (the same
    # Instance object, on GPUs too); its filter and metric take the first, which is compared
    return results, {s["doc_id"]: (s["resps"][0][0], s["filtered_resps"], s["exact_match"]) for s in samples}


def test_data_parallel_evaluation_on_cpu_and_report_merges_rank_traces(tiny_llm, tiny_verifier, data_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m lm_eval --model llm2`` on CPU splits the 3 questions over 2 ranks (lm-eval
    itself splits only over GPUs; llm2 takes the launch's ranks): the same answers and metrics as one process, one
    trace per rank stamped with its rank and the run's one id, and ``llm2 report`` counting the same compute from
    the merged rank traces (lm-eval's padding request left out). A dropped rank trace is reported, not hidden."""
    from llm2_eval.report import collect_rows
    from llm2_eval.trace import read_header

    one, two = tmp_path / "one", tmp_path / "two"
    _lm_eval([sys.executable], tiny_llm, tiny_verifier, one, data_dir)
    _lm_eval(torchrun(), tiny_llm, tiny_verifier, two, data_dir)
    (res1, samples1), (res2, samples2) = _results(one), _results(two)
    assert samples1 == samples2 and len(samples1) == 3
    assert res1["results"]["gsm8k_llm2"]["exact_match,none"] == res2["results"]["gsm8k_llm2"]["exact_match,none"]
    assert not (two / "trace.jsonl").exists()
    run_id = res2["config"]["llm2_run_id"]
    lines = {}
    for r in (0, 1):
        path = two / f"trace.rank{r}.jsonl"
        head = read_header(path)
        assert (head["rank"], head["world_size"], head["run_id"]) == (r, 2, run_id)
        lines[r] = [json.loads(x) for x in path.read_text().splitlines()[1:]]
        assert lines[r] and all(x["run_id"] == run_id for x in lines[r])
    docs = [(x["doc_id"], x.get("padding", False)) for r in (0, 1) for x in lines[r]]
    assert sorted(d for d, pad in docs if not pad) == [0, 1, 2]  # each question decoded by one rank
    assert sum(pad for _, pad in docs) == 1  # 3 questions over 2 ranks: lm-eval sends one request again

    row1, row2 = collect_rows([one, two])
    assert row2.compute_source == row1.compute_source == "trace" and not row2.notes, row2.notes
    assert (row2.llm_token_forwards, row2.verifier_token_forwards, row2.n_questions) == (
        row1.llm_token_forwards, row1.verifier_token_forwards, row1.n_questions)
    assert row2.accuracy == row1.accuracy

    (two / "trace.rank1.jsonl").rename(tmp_path / "elsewhere.jsonl")  # a rank's trace lost
    (row,) = collect_rows([two])
    assert row.compute_source != "trace"
    assert any("rank(s) [1] of 2 missing" in n for n in row.notes), row.notes
