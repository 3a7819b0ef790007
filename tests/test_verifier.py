"""Verifier checkpoints: creation from an LLM, loading, tokenizer pairing (docs/method.md section 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from llm2_eval.verifier import TokenizerMismatchError, check_tokenizers_compatible, init_verifier, load_verifier
from tiny_models import build_tokenizer


def test_init_verifier_copies_llm_weights_and_adds_a_scalar_head(tiny_llm, tiny_verifier):
    cfg = json.loads((tiny_verifier / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForTokenClassification"]
    assert len(cfg["id2label"]) == 1 and cfg["classifier_dropout"] == 0.0
    assert (tiny_verifier / "model.safetensors").exists()
    assert (tiny_verifier / "tokenizer.json").exists()
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm)
    ver = AutoModelForTokenClassification.from_pretrained(tiny_verifier)  # plain transformers, no llm2 code
    assert ver.score.weight.shape == (1, llm.config.hidden_size)
    torch.testing.assert_close(ver.model.embed_tokens.weight, llm.model.embed_tokens.weight)
    torch.testing.assert_close(ver.model.layers[1].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight)
    ver.eval()
    out = ver(torch.tensor([[5, 6, 7]]))
    assert out.logits.shape == (1, 3, 1)


def test_init_verifier_is_seeded(tiny_llm, tmp_path):
    a = load_verifier(init_verifier(tiny_llm, tmp_path / "a", seed=3, head_init="normal"))
    b = load_verifier(init_verifier(tiny_llm, tmp_path / "b", seed=3, head_init="normal"))
    torch.testing.assert_close(a.score.weight, b.score.weight)
    assert not (tmp_path / "a.partial").exists()


def test_load_verifier_errors(tmp_path, tiny_llm):
    with pytest.raises(FileNotFoundError, match="verifier checkpoint not found"):
        load_verifier(tmp_path / "missing")
    with pytest.raises(ValueError, match="exactly one label"):
        load_verifier(AutoModelForTokenClassification.from_pretrained(tiny_llm, num_labels=2))


def test_tokenizer_mismatch_is_refused_with_a_clear_error(tiny_llm):
    same = AutoTokenizer.from_pretrained(tiny_llm)
    check_tokenizers_compatible(same, AutoTokenizer.from_pretrained(tiny_llm))
    other = build_tokenizer(extra_token="<|verifier_only|>")
    with pytest.raises(TokenizerMismatchError, match=r"only in the verifier tokenizer.*verifier_only"):
        check_tokenizers_compatible(same, other)
    shuffled = build_tokenizer(vocab_size=280)
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer vocabulary"):
        check_tokenizers_compatible(same, shuffled)


def test_cli_init_verifier(tiny_llm, tmp_path):
    out = tmp_path / "v"
    run = subprocess.run(
        [sys.executable, "-m", "llm2_eval.cli", "init-verifier", "--model", str(tiny_llm), "--output", str(out),
         "--dtype", "bfloat16"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(str(out))
    assert load_verifier(out).dtype == torch.bfloat16
    bad = subprocess.run(
        [sys.executable, "-m", "llm2_eval.cli", "init-verifier", "--model", str(tmp_path / "nope"), "--output",
         str(tmp_path / "x")],
        capture_output=True, text=True,
    )
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_zero_head_verifier_changes_no_decision(tiny_llm, tmp_path):
    from llm2_eval.decoding import DecodeConfig, generate

    vdir = init_verifier(tiny_llm, tmp_path / "zero", head_init="zero")
    ver = load_verifier(vdir, dtype=torch.float32)
    assert all(torch.count_nonzero(p) == 0 for p in ver.score.parameters())
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    enc = tok(["how many apples", "she buys 12 eggs and sells 3"], return_tensors="pt", padding=True)
    guided = generate(llm, enc.input_ids, enc.attention_mask, DecodeConfig(alpha=0.05, beta=10.0, max_new_tokens=10),
                      verifier=ver)
    plain = generate(llm, enc.input_ids, enc.attention_mask, DecodeConfig(beta=0.0, max_new_tokens=10))
    assert sum(s.scored_steps for s in guided.stats) > 0  # the verifier did run
    assert guided.tokens == plain.tokens and sum(s.flips for s in guided.stats) == 0
    with pytest.raises(ValueError, match="head_init"):
        init_verifier(tiny_llm, tmp_path / "bad", head_init="xavier")
