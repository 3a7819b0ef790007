"""Verifier training (verifier_train/train.py; paper Eq. 4, docs/method.md sections 5-6) on tiny local models, CPU fp32."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from verifier_train.records import RecordError

PROMPTS = [
    "she buys 12 apples and gives 5 to each of them. how many are left?",
    "how many eggs has he then?",
    "they sells 40 dollars every hours so how much more?",
    "the total of apples is 7 more than the eggs.",
]



def _corpus_lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = (
        "the a of to and is are has had how many much each every total left more less than apples eggs "
        "dollars hours she he they buys sells makes gives answer so then therefore"
    ).split()
    out = []
    for _ in range(n):
        n_words = rng.randint(5, 12)
        parts = [str(rng.randint(0, 99)) if rng.random() < 0.3 else rng.choice(words) for _ in range(n_words)]
        out.append(" ".join(parts) + ".")
    return out


def _write_jsonl(path: Path, objs: list) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for o in objs:
            f.write((o if isinstance(o, str) else json.dumps(o)) + "\n")
    return path


def _greedy_tokens(llm_dir: Path, tok, prompts: list[str], n: int = 16) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    from llm2_eval.decoding import DecodeConfig, generate
    from verifier_train.records import chat_token_ids

    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    outs = []
    for p in prompts:
        ids = chat_token_ids(tok, [{"role": "user", "content": p}], add_generation_prompt=True)
        outs.append(generate(llm, torch.tensor([ids]), None, DecodeConfig(beta=0.0, max_new_tokens=n)).tokens[0])
    return outs


@pytest.fixture(scope="module")
def synthetic(tiny_llm, tmp_path_factory):
    """A learnable task: gold tokens come from the text, negatives from a disjoint set of ids (``neg_ids``) that
    includes the tokens the tiny LLM likes to generate (so a trained verifier changes its decisions)."""
    from transformers import AutoTokenizer

    from verifier_train.records import chat_token_ids, response_start

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    lines = _corpus_lines(300, seed=11)
    rng = random.Random(0)
    convs = []
    for i in range(90):
        msgs = [{"role": "user", "content": lines[3 * i]},
                {"role": "assistant", "content": lines[3 * i + 1] + " " + lines[3 * i + 2]}]
        convs.append((msgs, chat_token_ids(tok, msgs), response_start(tok, msgs)))
    seen = {t for _, ids, _ in convs for t in ids}
    greedy = {t for toks in _greedy_tokens(tiny_llm, tok, PROMPTS) for t in toks}
    neg_ids = sorted(greedy - seen)
    neg_ids += [t for t in range(len(tok)) if t not in seen and t not in neg_ids][: max(0, 24 - len(neg_ids))]
    assert greedy - seen, "the tiny LLM should like tokens absent from the synthetic texts"
    records = []
    for i, (msgs, ids, start) in enumerate(convs):
        k = 1 + i % 8  # 1..8 pairs per solution: micro-batches hold different pair counts
        pos = rng.sample(range(start, len(ids)), min(k, len(ids) - start))
        records.append({"id": i, "messages": msgs, "samples": [[p, ids[p], rng.choice(neg_ids)] for p in pos]})
    path = _write_jsonl(tmp_path_factory.mktemp("data") / "triplets.jsonl", records)
    return {"path": path, "records": records, "neg_ids": set(neg_ids), "greedy_negs": greedy - seen, "tok": tok}


def _cfg(tiny_llm, data, out, **kw):
    from verifier_train.train import TrainConfig

    base = dict(
        model=str(tiny_llm), data=[str(p) for p in data], output=str(out), bf16=False, gradient_checkpointing=False,
        global_batch=8, micro_batch=8, lr=5e-3, warmup_ratio=0.0, eval_fraction=0.0, logging_steps=1,
        save_steps=1000, progress=False, head_init="normal", head_lr=5e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tiny_llm, synthetic, tmp_path_factory):
    from verifier_train.train import train_verifier

    out = tmp_path_factory.mktemp("learn") / "verifier"
    cfg = _cfg(tiny_llm, [synthetic["path"]], out, max_steps=20, eval_fraction=0.2, eval_steps=10,
               eval_on_start=True, logging_steps=5, progress=True)
    return train_verifier(cfg)


# ---------------------------------------------------------------------------------------------------- validation


def test_validation_errors_name_the_line(tiny_llm, synthetic, tmp_path):
    from verifier_train.train import load_pair_data

    tok = synthetic["tok"]
    good = synthetic["records"][:3]
    bad_gold = json.loads(json.dumps(good[2]))
    p0, g0, n0 = bad_gold["samples"][0]
    bad_gold["samples"][0] = [p0, (g0 + 1) % len(tok), n0 if n0 != (g0 + 1) % len(tok) else (n0 + 1) % len(tok)]
    path = _write_jsonl(tmp_path / "bad.jsonl", [good[0], good[1], bad_gold])
    with pytest.raises(RecordError, match=re.escape(f"{path}:3:") + ".*not gold_id"):
        load_pair_data([path], tok)

    out_of_range = json.loads(json.dumps(good[0]))
    out_of_range["samples"].append([10_000, 5, 6])
    path = _write_jsonl(tmp_path / "pos.jsonl", [out_of_range])
    with pytest.raises(RecordError, match=re.escape(f"{path}:1:") + ".*outside the"):
        load_pair_data([path], tok)

    bad_vocab = json.loads(json.dumps(good[1]))
    p, g, _ = bad_vocab["samples"][0]
    bad_vocab["samples"][0] = [p, g, len(tok) + 5]
    path = _write_jsonl(tmp_path / "vocab.jsonl", [good[0], "", bad_vocab])
    with pytest.raises(RecordError, match=re.escape(f"{path}:3:") + ".*vocabulary"):
        load_pair_data([path], tok)

    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [good[0], "{not json", bad_gold, good[1], {"messages": []}])
    with pytest.raises(RecordError, match=re.escape(f"{mixed}:2:")):
        load_pair_data([mixed], tok)
    data = load_pair_data([mixed], tok, on_error="skip")
    fs = data.files[0]
    assert fs.records == 2 and len(data.train) == 2
    assert [s.split(": ")[0] for s in fs.skipped] == [f"{mixed}:2", f"{mixed}:3", f"{mixed}:5"]
    assert fs.pairs == len(good[0]["samples"]) + len(good[1]["samples"])


def test_truncation_drops_and_counts_pairs(synthetic):
    from verifier_train.train import load_pair_data

    recs = synthetic["records"]
    full = load_pair_data([synthetic["path"]], synthetic["tok"], max_length=None)
    short = load_pair_data([synthetic["path"]], synthetic["tok"], max_length=40)
    fs, ff = short.files[0], full.files[0]
    assert ff.pairs == ff.kept_pairs == sum(len(r["samples"]) for r in recs) and ff.dropped_pairs == 0
    assert fs.dropped_pairs > 0 and fs.kept_pairs + fs.dropped_pairs == fs.pairs
    assert all(len(e) <= 40 for e in short.train)
    assert sum(e.num_pairs for e in short.train) == fs.kept_pairs


def test_held_out_split_is_by_question_and_deterministic(synthetic):
    from verifier_train.train import load_pair_data

    a = load_pair_data([synthetic["path"]], synthetic["tok"], eval_fraction=0.2, seed=3)
    b = load_pair_data([synthetic["path"]], synthetic["tok"], eval_fraction=0.2, seed=3)
    c = load_pair_data([synthetic["path"]], synthetic["tok"], eval_fraction=0.2, seed=4)
    assert len(a.eval) == 18 and len(a.train) == 72
    assert [e.input_ids for e in a.eval] == [e.input_ids for e in b.eval]
    assert [e.input_ids for e in a.eval] != [e.input_ids for e in c.eval]


def test_solutions_of_one_question_are_held_out_together(synthetic, tmp_path):
    """Records with the same prompt (llm2 divergence-pairs writes one per right sample) fall on one side of the
    split: pairs of a held-out question must not be trained on."""
    from verifier_train.records import chat_token_ids, response_start
    from verifier_train.train import load_pair_data
    from verifier_train.train.data import question_key

    tok, recs, neg = synthetic["tok"], synthetic["records"][:60], sorted(synthetic["neg_ids"])
    twins = []
    for i, r in enumerate(recs):  # 20 questions (the prompt of every third record), 3 solutions each
        msgs = [recs[i - i % 3]["messages"][0], r["messages"][1]]
        ids, start = chat_token_ids(tok, msgs), response_start(tok, msgs)
        samples = [[p, ids[p], neg[p % len(neg)]] for p in (start, start + 1)]
        twins.append({"id": i, "messages": msgs, "samples": samples})
    path = _write_jsonl(tmp_path / "twins.jsonl", twins)
    data = load_pair_data([path], synthetic["tok"], eval_fraction=0.2, seed=5)
    assert len(data.eval) == 12 and len(data.train) == 48  # 4 of 20 questions, with all their solutions
    texts = {tuple(e.input_ids[: e.solution_length]): question_key(r["messages"])
             for e, r in zip(load_pair_data([path], synthetic["tok"]).train, twins)}
    held = {texts[tuple(e.input_ids[: e.solution_length])] for e in data.eval}
    trained = {texts[tuple(e.input_ids[: e.solution_length])] for e in data.train}
    assert len(held) == 4 and not held & trained


# ---------------------------------------------------------------------------------------------------- training


def test_pair_accuracy_rises_on_a_learnable_task(trained):
    from llm2_eval.verifier import load_verifier

    out = trained.output_dir
    evals = [r for r in _log(out) if "eval_pair_accuracy" in r]
    assert evals[0]["step"] == 0  # eval_on_start
    first, last = evals[0]["eval_pair_accuracy"], trained.metrics["eval_pair_accuracy"]
    assert last >= 0.85 and last >= first + 0.2, (first, last)
    assert trained.metrics["eval_loss"] < evals[0]["eval_loss"] - 0.05
    assert trained.global_step == 20
    train_logs = [r for r in _log(out) if "loss" in r and "pair_accuracy" in r]
    assert [r["step"] for r in train_logs] == [5, 10, 15, 20]
    card = json.loads((out / "training_card.json").read_text())
    assert card["final_metrics"]["eval_pair_accuracy"] == last
    assert card["train"]["solutions"] == 72 and card["eval"]["solutions"] == 18
    assert card["settings"]["lr"] == 5e-3 and card["global_step"] == 20
    assert card["data"][0]["records"] == 90 and card["data"][0]["dropped_pairs"] == 0
    model = load_verifier(out)  # a plain 1-label token-classification checkpoint
    assert model.config.num_labels == 1 and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()


def test_zero_head_learns_only_with_its_own_learning_rate(tiny_llm, synthetic, tmp_path):
    """The default new head is zero (scores 0: pair accuracy 0.5 from ties, loss log 2); at a backbone-sized learning rate it
    barely moves, with --head-lr it learns (the score head gets its own optimizer group)."""
    from llm2_eval.verifier import load_verifier
    from verifier_train.train import TrainConfig, train_verifier

    assert TrainConfig(data=["x"], output="o", model="m").head_init == "zero"
    results = {}
    for name, head_lr in (("same", 1e-5), ("head", 5e-2)):
        cfg = _cfg(tiny_llm, [synthetic["path"]], tmp_path / name, lr=1e-5, head_init="zero", head_lr=head_lr,
                   max_steps=12, eval_fraction=0.2, eval_steps=12, eval_on_start=True)
        results[name] = train_verifier(cfg)
    start = [r for r in _log(tmp_path / "same") if "eval_pair_accuracy" in r][0]
    assert start["eval_pair_accuracy"] == 0.5 and start["eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    same, head = results["same"].metrics, results["head"].metrics
    assert same["eval_loss"] > 0.68 and head["eval_loss"] < same["eval_loss"] - 0.05, (same, head)
    assert results["head"].card["settings"]["head_lr"] == 5e-2
    w_same = load_verifier(tmp_path / "same").score.weight.abs().max()
    w_head = load_verifier(tmp_path / "head").score.weight.abs().max()
    assert w_head > 20 * w_same
    default = TrainConfig(data=["x"], output="o", model="m", lr=2e-5)
    assert default.resolved_head_lr == pytest.approx(2e-5 * 50)
    with pytest.raises(ValueError, match="head_lr"):
        TrainConfig(data=["x"], output="o", model="m", head_lr=0.0).check()


def test_loss_is_mean_over_real_pairs_of_the_global_batch(tiny_llm, synthetic, trained, tmp_path):
    """Gradient accumulation (2 x 4 solutions) logs the same loss and gradient norm as one batch of 8, and that
    loss is the mean of Eq. 4 over all real pairs (micro-batches hold different pair counts)."""
    from transformers import AutoTokenizer

    from llm2_eval.verifier import load_verifier
    from verifier_train.packing import PackedCollator
    from verifier_train.train import load_pair_data, pair_scores, pairwise_loss, train_verifier

    eight = _write_jsonl(tmp_path / "eight.jsonl", synthetic["records"][:8])
    logs = []
    for micro in (4, 8):
        out = tmp_path / f"m{micro}"
        train_verifier(_cfg(tiny_llm, [eight], out, init_from=str(trained.output_dir), model=None,
                            micro_batch=micro, max_steps=1))
        logs.append(next(r for r in _log(out) if "loss" in r))
    tok = AutoTokenizer.from_pretrained(trained.output_dir)
    data = load_pair_data([eight], tok)
    model = load_verifier(trained.output_dir, dtype="float32")
    with torch.no_grad():
        batch = PackedCollator(tok.pad_token_id)(data.train)
        g, n = pair_scores(model, batch)
        expected = float(pairwise_loss(g, n, batch["pair_mask"]))
        per_record = -torch.nn.functional.logsigmoid(g - n)
        mean_of_means = float(((per_record * batch["pair_mask"]).sum(1) / batch["pair_mask"].sum(1)).mean())
    assert abs(expected - mean_of_means) > 1e-3  # the test can tell the two reductions apart
    assert logs[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert logs[1]["loss"] == pytest.approx(expected, abs=1e-5)
    assert logs[0]["grad_norm"] == pytest.approx(logs[1]["grad_norm"], rel=1e-4)
    assert logs[0]["pairs"] == sum(len(r["samples"]) for r in synthetic["records"][:8])


def test_resume_continues_from_the_saved_step(tiny_llm, synthetic, tmp_path):
    from verifier_train.train import train_verifier

    out = tmp_path / "run"
    first = train_verifier(_cfg(tiny_llm, [synthetic["path"]], out, max_steps=2, save_steps=1,
                                gradient_checkpointing=True, micro_batch=4))
    assert first.global_step == 2
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train_verifier(_cfg(tiny_llm, [synthetic["path"]], out, max_steps=4, micro_batch=4))
    with (out / "train_log.jsonl").open("a") as f:  # as if the first run had logged step 3 and died before saving
        f.write(json.dumps({"step": 3, "loss": 9.9}) + "\n")
    second = train_verifier(_cfg(tiny_llm, [synthetic["path"]], out, max_steps=4, save_steps=1, resume=True,
                                 gradient_checkpointing=True, micro_batch=4))
    assert second.global_step == 4
    assert second.card["resumed_from"].endswith("checkpoint-2")
    steps = [r["step"] for r in _log(out) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the second run logged steps 3 and 4 only: it did not restart
    assert all(r.get("loss") != 9.9 for r in _log(out))  # the interrupted run's post-checkpoint line was dropped
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_overwrite_validates_the_data_before_removing_anything(tiny_llm, synthetic, tmp_path):
    """``--overwrite`` with a bad data file fails at the data and leaves the existing output as it was."""
    from verifier_train.records import RecordError
    from verifier_train.train import train_verifier

    out = tmp_path / "run"
    train_verifier(_cfg(tiny_llm, [synthetic["path"]], out, max_steps=1, save_steps=1, micro_batch=4))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "checkpoints" / "checkpoint-1").is_dir() and (out / "train_log.jsonl").is_file()
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"messages": "not a list"}])
    with pytest.raises(RecordError):
        train_verifier(_cfg(tiny_llm, [bad], out, max_steps=1, micro_batch=4, overwrite=True))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a global batch that the micro batch does not divide is refused before anything is removed, too
    with pytest.raises(ValueError, match="not a multiple of micro batch"):
        train_verifier(_cfg(tiny_llm, [synthetic["path"]], out, max_steps=1, micro_batch=3, global_batch=4,
                            overwrite=True))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_lora_merges_into_a_plain_checkpoint(tiny_llm, synthetic, tmp_path):
    from safetensors.torch import load_file

    from llm2_eval.verifier import load_verifier
    from verifier_train.train import train_verifier

    base = load_file(str(Path(tiny_llm) / "model.safetensors"))
    out = tmp_path / "lora"
    res = train_verifier(_cfg(tiny_llm, [synthetic["path"]], out, lora=True, lora_r=4, max_steps=3, lr=1e-2))
    assert res.global_step == 3
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or "modules_to_save" in k for k in saved)
    assert "score.weight" in saved
    changed = [k for k in saved if k.startswith("model.") and "proj" in k
               and not torch.equal(saved[k], base[k].to(saved[k].dtype))]
    assert changed, "the merged LoRA deltas should change the projection weights"
    assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert load_verifier(out).config.num_labels == 1


def test_save_dtype_writes_a_half_precision_verifier(tiny_llm, synthetic, tmp_path):
    from safetensors.torch import load_file

    from llm2_eval.verifier import load_verifier
    from verifier_train.train import cast_checkpoint, train_verifier

    full = tmp_path / "fp32"
    train_verifier(_cfg(tiny_llm, [synthetic["path"]], full, max_steps=1))
    ref = load_file(str(full / "model.safetensors"))
    half = tmp_path / "bf16"
    res = train_verifier(_cfg(tiny_llm, [synthetic["path"]], half, max_steps=1, save_dtype="bfloat16"))
    assert res.card["settings"]["save_dtype"] == "bfloat16"
    saved = load_file(str(half / "model.safetensors"))
    assert saved.keys() == ref.keys() and all(v.dtype == torch.bfloat16 for v in saved.values())
    for k, v in saved.items():  # same run (same seed), only rounded
        assert torch.equal(v, ref[k].to(torch.bfloat16)), k
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    assert json.loads((half / "config.json").read_text()).get("dtype") == "bfloat16"
    assert load_verifier(half).dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        cast_checkpoint(tmp_path, "bfloat16")


def test_cli_trains_and_reports_bad_lines(tiny_llm, synthetic, tmp_path):
    from click.testing import CliRunner

    from llm2_eval.cli import main

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train-verifier", "--model", str(tiny_llm), "--data", str(synthetic["path"]), "--output", str(out),
            "--fp32", "--no-gradient-checkpointing", "--global-batch", "4", "--micro-batch", "4", "--max-steps", "1",
            "--eval-fraction", "0.1", "--no-progress"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 1 and 0.0 <= summary["eval_pair_accuracy"] <= 1.0
    assert (out / "training_card.json").exists() and (out / "config.json").exists()

    bad = json.loads(json.dumps(synthetic["records"][0]))
    bad["samples"][0][1] = (bad["samples"][0][1] + 1) % len(synthetic["tok"])
    bad_path = _write_jsonl(tmp_path / "bad.jsonl", [synthetic["records"][1], bad])
    res = runner.invoke(main, args[:4] + [str(bad_path), "--output", str(tmp_path / "x"), "--max-steps", "1"])
    assert res.exit_code != 0 and f"{bad_path}:2:" in res.output
    res = runner.invoke(main, ["train-verifier", "--help"])
    assert res.exit_code == 0 and "--global-batch" in res.output and "--lora" in res.output


# ---------------------------------------------------------------------------------------------------- decisions


def test_trained_verifier_changes_llm2_decisions(tiny_llm, synthetic, trained, tmp_path):
    """Decoding with the trained verifier avoids the tokens it learned to reject, unlike the untrained one."""
    from transformers import AutoModelForCausalLM

    from llm2_eval.decoding import DecodeConfig, generate
    from llm2_eval.verifier import init_verifier, load_verifier
    from verifier_train.records import chat_token_ids

    tok = synthetic["tok"]
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32)
    untrained_dir = init_verifier(tiny_llm, tmp_path / "untrained", seed=0, head_init="normal")
    cfg = DecodeConfig(alpha=0.05, beta=1.0, max_new_tokens=16)
    bad = synthetic["greedy_negs"]
    results = {}
    for name, path in (("untrained", untrained_dir), ("trained", trained.output_dir)):
        ver = load_verifier(path, dtype="float32")
        toks, flips = [], 0
        for p in PROMPTS:
            ids = torch.tensor([chat_token_ids(tok, [{"role": "user", "content": p}], add_generation_prompt=True)])
            out = generate(llm, ids, None, cfg, verifier=ver)
            toks.append(out.tokens[0])
            flips += out.stats[0].flips
        results[name] = (toks, flips, sum(t in bad for row in toks for t in row))
    (tok_u, flips_u, bad_u), (tok_t, flips_t, bad_t) = results["untrained"], results["trained"]
    assert tok_t != tok_u
    assert flips_t > flips_u
    assert bad_t < bad_u, (bad_t, bad_u)

    # the same through the lm-eval model
    from lm_eval.api.instance import Instance

    from llm2_eval.lm_eval_model import LLM2LM

    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                     add_generation_prompt=True)
    texts = {}
    for name, path in (("untrained", untrained_dir), ("trained", trained.output_dir)):
        lm = LLM2LM(pretrained=str(tiny_llm), verifier=str(path), device="cpu", batch_size=1, alpha=0.05, beta=1.0,
                    dtype="float32")
        req = Instance(request_type="generate_until", doc={}, idx=0,
                       arguments=(prompt, {"until": ["<|im_end|>"], "max_gen_toks": 16, "do_sample": False}))
        texts[name] = lm.generate_until([req])[0]
        assert lm.last_decode.stats[0].scored_steps > 0
    assert texts["trained"] != texts["untrained"]


def test_resume_refuses_checkpoints_that_held_out_records_not_questions(synthetic, tiny_llm, tmp_path):
    """Checkpoints of a version that held out records (no "held_out_split" in run_settings.json) are not resumed
    with the question split: the held-out solutions would change mid-run."""
    from verifier_train.train.resume import RUN_SETTINGS, check_resume, write_run_settings

    for fraction, refused in ((0.2, True), (0.0, False)):
        ckpt = tmp_path / f"ckpt{fraction}"
        cfg = _cfg(tiny_llm, [synthetic["path"]], tmp_path / "out", eval_fraction=fraction)
        write_run_settings(cfg, ckpt, bf16=False)
        assert check_resume(cfg, ckpt, bf16=False) == ({}, None)
        old = json.loads((ckpt / RUN_SETTINGS).read_text())
        del old["held_out_split"]
        (ckpt / RUN_SETTINGS).write_text(json.dumps(old))
        if refused:
            with pytest.raises(ValueError, match=r"held_out_split \(checkpoints: 'record'; now: 'question'\)"):
                check_resume(cfg, ckpt, bf16=False)
        else:  # nothing held out: the split never mattered
            assert check_resume(cfg, ckpt, bf16=False) == ({}, None)
