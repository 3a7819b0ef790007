"""The fused LLM2 step for head verifiers (llm2_eval/fused.py): the same tokens as the two-model path.

The two-model path runs the same head on a separate copy of the LLM (its own backbone and KV cache,
:class:`llm2_eval.scoring.VerifierCache`); the fused path scores the candidates inside the LLM's own forward.
Tiny random models in float32; a head with large random weights so that the verifier flips many decisions.
"""

from __future__ import annotations

import pytest
import torch

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.fused import FusedHeadScorer, can_fuse
from llm2_eval.head_verifier import HeadVerifier, ScoreHead


@pytest.fixture(scope="module")
def models(tiny_llm):
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    torch.manual_seed(3)
    head = ScoreHead(a.config.hidden_size, "mlp", 16)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=2.0)
    return a, b, head.eval()


def _prompts():
    ids = torch.tensor([[0, 0, 5, 9, 14, 3], [7, 8, 9, 10, 11, 12], [0, 0, 0, 21, 22, 23]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("sample", [False, True])
def test_fused_step_equals_the_two_model_path(models, sample):
    a, b, head = models
    fused_ver, separate_ver = HeadVerifier(a, head), HeadVerifier(b, head)
    assert can_fuse(a, fused_ver) and not can_fuse(a, separate_ver)
    ids, mask = _prompts()
    cfg = DecodeConfig(alpha=0.05, beta=1.5, max_new_tokens=14, do_sample=sample, temperature=0.9, eos_token_ids=[2])
    fused = generate(a, ids, mask, cfg, verifier=fused_ver, seeds=[1, 2, 3])
    two = generate(a, ids, mask, cfg, verifier=separate_ver, seeds=[1, 2, 3])
    assert fused.tokens == two.tokens
    assert sum(s.flips for s in fused.stats) == sum(s.flips for s in two.stats) > 0
    assert all(s.verifier_tokens == 0 for s in fused.stats)
    # one forward per step: each step feeds max |V_t| tokens per row instead of 1 + a verifier forward
    assert sum(s.llm_tokens for s in fused.stats) < sum(s.llm_tokens + s.verifier_tokens for s in two.stats)


def test_fused_with_repeats_and_stop_strings_and_beta_zero(models, tiny_llm):
    from transformers import AutoTokenizer

    a, b, head = models
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    ids, mask = _prompts()
    cfg = DecodeConfig(alpha=0.05, beta=1.0, max_new_tokens=10, do_sample=True, temperature=1.0, stop=["the"])
    kw = dict(tokenizer=tok, seeds=list(range(6)), repeats=[2, 1, 3])
    fused = generate(a, ids, mask, cfg, verifier=HeadVerifier(a, head), **kw)
    two = generate(a, ids, mask, cfg, verifier=HeadVerifier(b, head), **kw)
    assert fused.tokens == two.tokens and fused.finish_reasons == two.finish_reasons
    plain_cfg = DecodeConfig(beta=0.0, max_new_tokens=10)
    assert generate(a, ids, mask, plain_cfg, verifier=HeadVerifier(a, head)).tokens == \
        generate(a, ids, mask, plain_cfg).tokens


def test_one_candidate_everywhere_is_plain_greedy(models):
    a, _, head = models
    ids, mask = _prompts()
    cfg = DecodeConfig(top_k=1, beta=3.0, max_new_tokens=8)  # |V_t| = 1: the fused forward is the plain feed
    got = generate(a, ids, mask, cfg, verifier=HeadVerifier(a, head))
    assert got.tokens == generate(a, ids, mask, DecodeConfig(beta=0.0, max_new_tokens=8)).tokens
    assert isinstance(FusedHeadScorer, type)


def test_a_zero_head_changes_nothing_in_float32(models):
    """A head that scores every candidate 0 never changes the LLM's choice (no flips); the fused forward (candidate
    slots packed into the batch) then writes the same tokens as plain greedy decoding. In bf16 it need not: the
    packed forward rounds differently, and near-ties can go the other way (experiments/scale/noise.sh measures it)."""
    a, _, _ = models
    zero = ScoreHead(a.config.hidden_size, "linear")
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    ids, mask = _prompts()
    cfg = DecodeConfig(alpha=0.01, beta=1.0, max_new_tokens=14)
    fused = generate(a, ids, mask, cfg, verifier=HeadVerifier(a, zero.eval()))
    assert sum(s.scored_steps for s in fused.stats) > 10 and sum(s.flips for s in fused.stats) == 0
    assert fused.tokens == generate(a, ids, mask, DecodeConfig(beta=0.0, max_new_tokens=14)).tokens
