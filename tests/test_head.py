"""Outcome labels (``llm2 explore --strategy outcome``) and head verifiers (``llm2 train-verifier --trainable head``).

Tiny random models, CPU, float32. The head trains on cached hidden states; the tests hold that path against the same
loss computed through the model (a :class:`~llm2_eval.head_verifier.HeadVerifier` forward), check the cache's reuse
and invalidation, and load the result as ``verifier=`` for decoding.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from llm2_eval.head_verifier import HeadVerifier, ScoreHead, is_head_dir, load_head_verifier
from llm2_eval.verifier import load_verifier
from verifier_train.explore import ExploreConfig, explore
from verifier_train.train import TrainConfig, train_verifier
from verifier_train.train.head import outcome_features, outcome_sequences, outcome_weights, pair_features


@pytest.fixture()
def questions(tmp_path):
    rows = [{"question": f"Sam has {i} apples and gets 5 more", "answer": f"{i} + 5\n#### {i + 5}"} for i in range(6)]
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _outcomes(tmp_path, tiny_llm, questions, **kw):
    out = tmp_path / "outcomes.jsonl"
    # stub checker: a sample is right when its first token is even (a coin flip per sample, deterministic per seed)
    summary = explore(ExploreConfig(model=str(tiny_llm), data=str(questions), output=str(out), strategy="outcome",
                                    gold="self", self_samples=4, self_max_tokens=12, dtype="float32", progress=False,
                                    checker=lambda text, gold, toks: len(text) % 2 == 0, **kw))
    return out, summary


def test_outcome_strategy_records_every_sample_with_its_outcome(tmp_path, tiny_llm, questions):
    out, summary = _outcomes(tmp_path, tiny_llm, questions)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 6 and summary["self_samples"] == 24
    assert sum(r["right"] for r in recs) == summary["outcome_right"]
    assert sum(summary["outcome_mix"].values()) == 6
    for r in recs:
        assert r["samples"] == [] and r["messages"][0]["role"] == "user" and len(r["outcomes"]) == 4
        for o in r["outcomes"]:
            assert o["correct"] == int(len(o["response"]) % 2 == 0 and o["finish"] == "eos" and bool(o["response"]))
    # resumable: a second run writes nothing new; the samples are those --gold self draws (same seeds)
    again = explore(ExploreConfig(model=str(tiny_llm), data=str(questions), output=str(out), strategy="outcome",
                                  gold="self", self_samples=4, self_max_tokens=12, dtype="float32", progress=False,
                                  checker=lambda text, gold, toks: len(text) % 2 == 0))
    assert again["resumed"] == 6 and again["examples"] == 0
    with pytest.raises(ValueError, match="--gold self"):
        ExploreConfig(model="m", data="d", output="o", strategy="outcome")


def test_outcome_weights_give_each_sample_and_side_equal_weight():
    seq = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])  # sample 0 has 4 tokens, samples 1 and 2 two each
    labels = torch.tensor([1.0, 0.0, 0.0])
    w = outcome_weights(seq, labels, ["q", "q", "q"], balance=False)
    per = torch.zeros(3).index_add_(0, seq, w)
    assert torch.allclose(per, per[0].expand(3)) and w.mean().item() == pytest.approx(1.0)
    wb = outcome_weights(seq, labels, ["q", "q", "q"], balance=True)
    perb = torch.zeros(3).index_add_(0, seq, wb)
    assert perb[0].item() == pytest.approx(perb[1].item() + perb[2].item())  # one right vs two wrong: equal sides


def test_cached_outcome_loss_and_head_gradients_equal_the_loss_through_the_model(tmp_path, tiny_llm, questions):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = _outcomes(tmp_path, tiny_llm, questions)
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    seqs = outcome_sequences([str(out)], tok)
    feats = outcome_features(llm, seqs, batch_tokens=64)  # several padded batches
    torch.manual_seed(0)
    head = ScoreHead(llm.config.hidden_size, "mlp", 8)
    w = outcome_weights(feats["seq"], torch.tensor([s["label"] for s in seqs]), [s["group"] for s in seqs], True)
    cached = F.binary_cross_entropy_with_logits(head(feats["h"]).squeeze(-1), feats["label"], weight=w)
    g_cached = torch.autograd.grad(cached, list(head.parameters()))
    ver = HeadVerifier(llm, head)
    scores = torch.cat([ver(input_ids=torch.tensor([s["ids"]])).logits[0, s["start"]: s["end"], 0] for s in seqs])
    through = F.binary_cross_entropy_with_logits(scores, feats["label"], weight=w)
    g_through = torch.autograd.grad(through, list(head.parameters()))
    assert torch.allclose(cached, through, atol=1e-5)
    for a, b in zip(g_cached, g_through):
        assert torch.allclose(a, b, atol=1e-5)
    assert len(feats["h"]) == sum(s["end"] - s["start"] for s in seqs)
    assert all(s["ids"][s["end"] - 1] == tok.eos_token_id for s in seqs if s["end"] < len(s["ids"]) + 1)


def test_cached_pair_features_give_the_scores_of_the_packed_forward(tiny_llm, tmp_path):
    from transformers import AutoModelForCausalLM

    from verifier_train.packing import PackedCollator, pack_solution
    from verifier_train.train.loss import pair_scores

    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    ex = [pack_solution(list(range(5, 25)), [[3, 8, 40], [7, 12, 41], [7, 12, 42]]),
          pack_solution(list(range(30, 42)), [[10, 40, 7]])]
    torch.manual_seed(1)
    head = ScoreHead(llm.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight)
    f = pair_features(llm, ex, batch=1)
    sg, sn = pair_scores(HeadVerifier(llm, head), PackedCollator()(ex))
    assert torch.allclose(head(f["h_gold"]).squeeze(-1), torch.cat([sg[0, :3], sg[1, :1]]), atol=1e-5)
    assert torch.allclose(head(f["h_neg"]).squeeze(-1), torch.cat([sn[0, :3], sn[1, :1]]), atol=1e-5)


def test_train_head_saves_a_small_verifier_reuses_and_invalidates_the_cache(tmp_path, tiny_llm, questions, capsys):
    out, _ = _outcomes(tmp_path, tiny_llm, questions)
    cache = tmp_path / "cache"

    def run(data, dest):
        return train_verifier(TrainConfig(model=str(tiny_llm), data=[str(data)], output=str(dest), trainable="head",
                                          objective="outcome", epochs=2, head_batch=32, bf16=False, progress=False,
                                          feature_cache=str(cache), eval_fraction=0.34))

    first = run(out, tmp_path / "v1")
    assert first.card["reused_cache"] is False and is_head_dir(tmp_path / "v1")
    assert sum(p.stat().st_size for p in (tmp_path / "v1").iterdir()) < 50_000
    assert run(out, tmp_path / "v2").card["reused_cache"] is True
    changed = tmp_path / "changed.jsonl"
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    recs[0]["outcomes"][0]["correct"] = 1 - recs[0]["outcomes"][0]["correct"]
    changed.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert run(changed, tmp_path / "v3").card["reused_cache"] is False
    assert len(list(cache.iterdir())) == 2
    assert "eval_bce" in first.metrics and first.card["eval_questions"] == 2
    # a fit of a few optimizer steps is named in a warning and the card (the default --head-batch is 4096)
    steps = math.ceil(2 * first.card["train_tokens"] / 32)
    assert first.card["steps"] == steps and (first.card["warnings"] == []) == (steps >= 20)
    few = train_verifier(TrainConfig(model=str(tiny_llm), data=[str(out)], output=str(tmp_path / "v4"),
                                     trainable="head", objective="outcome", epochs=2, bf16=False, progress=False,
                                     feature_cache=str(cache), eval_fraction=0.34))
    assert few.card["steps"] == 1 and "= 1 optimizer step(s)" in few.card["warnings"][0]
    assert "1 optimizer step(s)" in capsys.readouterr().err


def test_head_verifier_loads_on_the_llm_backbone_and_decodes(tmp_path, tiny_llm, questions):
    from transformers import AutoModelForCausalLM

    from llm2_eval.decoding import DecodeConfig, generate

    out, _ = _outcomes(tmp_path, tiny_llm, questions)
    train_verifier(TrainConfig(model=str(tiny_llm), data=[str(out)], output=str(tmp_path / "v"), trainable="head",
                               objective="outcome", epochs=3, head_batch=16, bf16=False, progress=False,
                               feature_cache=str(tmp_path / "cache"), eval_fraction=0.0))
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    ver = load_verifier(tmp_path / "v", llm=llm)
    assert isinstance(ver, HeadVerifier) and ver.backbone is llm.model  # shared, not copied
    ids = torch.tensor([[5, 6, 7, 8]])
    cfg0 = DecodeConfig(beta=0.0, max_new_tokens=6)
    plain = generate(llm, ids, torch.ones_like(ids), cfg0).tokens
    assert generate(llm, ids, torch.ones_like(ids), cfg0, verifier=ver).tokens == plain  # beta 0 = greedy
    got = generate(llm, ids, torch.ones_like(ids), DecodeConfig(beta=2.0, max_new_tokens=6), verifier=ver)
    assert len(got.tokens[0]) >= 1
    own = load_head_verifier(tmp_path / "v")  # without the LLM: its own copy of the base
    assert own.backbone is not llm.model
    assert torch.allclose(own(input_ids=ids).logits, ver(input_ids=ids).logits, atol=1e-5)


def test_outcome_objective_needs_outcome_files(tmp_path, tiny_llm, questions):
    with pytest.raises(ValueError, match="not an outcome record"):
        train_verifier(TrainConfig(model=str(tiny_llm), data=[str(questions)], output=str(tmp_path / "v"),
                                   trainable="head", objective="outcome", bf16=False, progress=False,
                                   feature_cache=str(tmp_path / "c")))


def test_outcome_loss_weighs_each_sample_once_whatever_its_length():
    from types import SimpleNamespace

    from verifier_train.train.outcome import OutcomeCollator, outcome_loss

    class Fixed(torch.nn.Module):  # scores 0 everywhere: BCE log 2 per token
        def forward(self, input_ids=None, attention_mask=None):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 1))

    batch = OutcomeCollator()([{"ids": [1] * 10, "start": 2, "end": 10, "label": 1.0},
                               {"ids": [1] * 4, "start": 3, "end": 4, "label": 0.0}])
    total, _ = outcome_loss(Fixed(), batch)
    assert total.item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    assert batch["outcome_mask"].sum().item() == 9 and batch["attention_mask"][1].sum().item() == 4


def test_balance_weights_reach_the_full_and_lora_outcome_loss(tmp_path, tiny_llm, questions):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from verifier_train.train.head import balance_weights
    from verifier_train.train.outcome import OutcomeCollator, load_outcome_data, outcome_loss

    w = balance_weights([1.0, 0.0, 0.0, 1.0, 1.0], ["a", "a", "a", "b", "b"])
    assert w.tolist() == pytest.approx([1.5, 0.75, 0.75, 1.0, 1.0])  # a: 1 right vs 2 wrong; b: one kind only

    class Fixed(torch.nn.Module):  # scores 0 everywhere: BCE log 2 per token
        def forward(self, input_ids=None, attention_mask=None):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 1))

    batch = OutcomeCollator()([{"ids": [1] * 5, "start": 1, "end": 5, "label": 1.0, "weight": 1.5},
                               {"ids": [1] * 3, "start": 1, "end": 3, "label": 0.0, "weight": 0.75}])
    total, _ = outcome_loss(Fixed(), batch)
    assert total.item() == pytest.approx(2.25 * torch.log(torch.tensor(2.0)).item())

    out, _ = _outcomes(tmp_path, tiny_llm, questions)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    for r in recs:  # one sample of each question flipped: every question becomes mixed (1 vs 3 or 2 vs 2)
        if all(o["correct"] == r["outcomes"][0]["correct"] for o in r["outcomes"]):
            r["outcomes"][0]["correct"] = 1 - r["outcomes"][0]["correct"]
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tok = AutoTokenizer.from_pretrained(str(tiny_llm))
    plain = load_outcome_data([str(out)], tok, max_length=4096, eval_fraction=0.0, seed=0)
    bal = load_outcome_data([str(out)], tok, max_length=4096, eval_fraction=0.0, seed=0, balance=True)
    assert {s["weight"] for s in plain.train} == {1.0}
    expected = balance_weights([s["label"] for s in bal.train], [s["group"] for s in bal.train])
    assert [s["weight"] for s in bal.train] == pytest.approx(expected.tolist())
    assert any(abs(s["weight"] - 1.0) > 1e-6 for s in bal.train)  # the file holds mixed questions


def test_full_verifier_trains_on_outcome_labels(tmp_path, tiny_llm, questions):
    out, _ = _outcomes(tmp_path, tiny_llm, questions)
    res = train_verifier(TrainConfig(model=str(tiny_llm), data=[str(out)], output=str(tmp_path / "v"),
                                     objective="outcome", epochs=2, global_batch=4, micro_batch=2, bf16=False,
                                     gradient_checkpointing=False, progress=False, eval_fraction=0.34, lr=1e-3))
    assert res.card["objective"] == "outcome" and res.card["train"]["samples"] == 16
    assert res.card["eval"]["samples"] == 8 and "eval_loss" in res.metrics
    ver = load_verifier(tmp_path / "v", dtype=torch.float32)
    assert ver(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 1)


def test_head_verifier_runs_as_the_lm_eval_verifier(tmp_path, tiny_llm, questions):
    from lm_eval.api.instance import Instance
    from safetensors.torch import load_file, save_file

    from llm2_eval.lm_eval_model import LLM2LM

    out, _ = _outcomes(tmp_path, tiny_llm, questions)
    train_verifier(TrainConfig(model=str(tiny_llm), data=[str(out)], output=str(tmp_path / "v"), trainable="head",
                               objective="outcome", epochs=1, head_batch=16, bf16=False, progress=False,
                               feature_cache=str(tmp_path / "cache"), eval_fraction=0.0))
    w = load_file(str(tmp_path / "v" / "head.safetensors"))
    w["linear.weight"] = torch.randn_like(w["linear.weight"]) * 5  # a head that certainly moves decisions
    save_file(w, str(tmp_path / "v" / "head.safetensors"))
    lm = LLM2LM(pretrained=str(tiny_llm), verifier=str(tmp_path / "v"), device="cpu", batch_size=1, alpha=0.05,
                beta=1.0, dtype="float32")
    assert isinstance(lm.verifier, HeadVerifier) and lm.verifier.backbone is lm.model.model
    req = Instance(request_type="generate_until", doc={}, idx=0,
                   arguments=("<|im_start|>user\nhow many apples<|im_end|>\n<|im_start|>assistant\n",
                              {"until": ["<|im_end|>"], "max_gen_toks": 12, "do_sample": False}))
    lm.generate_until([req])
    assert lm.last_decode.stats[0].scored_steps > 0
    w["linear.weight"][0, 0] = float("nan")
    save_file(w, str(tmp_path / "v" / "head.safetensors"))
    with pytest.raises(ValueError, match="NaN"):
        load_verifier(tmp_path / "v")


def test_a_bad_outcome_record_is_named_by_file_and_line(tmp_path, tiny_llm):
    from transformers import AutoTokenizer

    from verifier_train.train.head import outcome_sequences

    good = {"id": 1, "messages": [{"role": "user", "content": "1 + 1?"}],
            "outcomes": [{"response": "2", "correct": 1}, {"response": "3", "correct": 0}]}
    bad = dict(good, outcomes=[{"response": "2"}])  # no 'correct': once a KeyError deep in the reader
    path = tmp_path / "outcomes.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    with pytest.raises(ValueError, match=r"outcomes\.jsonl:2: outcomes\[0\] must be an object with a string "):
        outcome_sequences([str(path)], tok)
    path.write_text(json.dumps(good) + "\n")
    assert [s["label"] for s in outcome_sequences([str(path)], tok)] == [1.0, 0.0]


def test_init_verifier_head_only_zero_is_a_no_op_and_normal_moves_decisions(tmp_path, tiny_llm):
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from llm2_eval.cli import main as cli_main
    from llm2_eval.decoding import DecodeConfig, generate

    res = CliRunner().invoke(cli_main, ["init-verifier", "--model", str(tiny_llm), "--output", str(tmp_path / "z"),
                                        "--head-only"])
    assert res.exit_code == 0, res.output
    assert is_head_dir(tmp_path / "z") and (tmp_path / "z" / "head.safetensors").stat().st_size < 10_000
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    zero = load_verifier(tmp_path / "z", llm=llm)
    assert zero.backbone is llm.model  # the LLM's own backbone: the fused step
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    assert torch.count_nonzero(zero(input_ids=ids).logits) == 0
    cfg = DecodeConfig(alpha=0.01, beta=1.0, max_new_tokens=8)
    got = generate(llm, ids, torch.ones_like(ids), cfg, verifier=zero)
    assert sum(s.flips for s in got.stats) == 0 and sum(s.scored_steps for s in got.stats) > 0
    # refusals: a second write without --overwrite; a non-empty directory that is not a head verifier
    again = CliRunner().invoke(cli_main, ["init-verifier", "--model", str(tiny_llm), "--output", str(tmp_path / "z"),
                                          "--head-only", "--head-init", "normal"])
    assert again.exit_code != 0 and "pass --overwrite" in again.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    other = CliRunner().invoke(cli_main, ["init-verifier", "--model", str(tiny_llm), "--output",
                                          str(tmp_path / "other"), "--head-only"])
    assert other.exit_code != 0 and "never replaced" in other.output
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    # normal: seeded noise of about unit size
    for d in ("n1", "n2"):
        assert CliRunner().invoke(cli_main, ["init-verifier", "--model", str(tiny_llm), "--output", str(tmp_path / d),
                                             "--head-only", "--head-init", "normal", "--seed", "3"]).exit_code == 0
    with torch.no_grad():
        s1 = load_verifier(tmp_path / "n1", llm=llm)(input_ids=ids).logits
        assert torch.equal(s1, load_verifier(tmp_path / "n2", llm=llm)(input_ids=ids).logits)
    assert 0.1 < float(s1.std()) < 10
    cfg = DecodeConfig(alpha=0.01, beta=20.0, max_new_tokens=8)
    noisy = generate(llm, ids, torch.ones_like(ids), cfg, verifier=load_verifier(tmp_path / "n1", llm=llm))
    assert sum(s.flips for s in noisy.stats) > 0
    # --overwrite replaces a trained head whole: none of its files stay behind, nothing else is left next to it
    (tmp_path / "n1" / "training_card.json").write_text("{}")
    res = CliRunner().invoke(cli_main, ["init-verifier", "--model", str(tiny_llm), "--output", str(tmp_path / "n1"),
                                        "--head-only", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "n1").iterdir()) == ["head.safetensors", "llm2_head.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with torch.no_grad():
        assert torch.count_nonzero(load_verifier(tmp_path / "n1", llm=llm)(input_ids=ids).logits) == 0
    bad = CliRunner().invoke(cli_main, ["init-verifier", "--model", str(tiny_llm), "--output", str(tmp_path / "d"),
                                        "--head-only", "--dtype", "bfloat16"])
    assert bad.exit_code != 0 and "drop --dtype" in bad.output and not (tmp_path / "d").exists()
