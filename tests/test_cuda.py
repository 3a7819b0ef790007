"""Dual-process decoding on a CUDA device (skipped where there is none, as in CI).

The same guarantees as the CPU tests of ``test_decoding.py``, on the GPU path: exact agreement with the naive
reference and with transformers' greedy ``generate``, the verifier cache, seeded sampling that does not depend on
the device or the batch, shared-prefill repeats, and bf16.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.verifier import load_verifier
from test_decoding import PROMPTS, naive_decode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _load(tiny_llm, tiny_verifier, dtype, device):
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=dtype).to(device).eval()
    return tok, llm, load_verifier(tiny_verifier, dtype=dtype, device=device)


def _batch(tok, prompts, device):
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc.input_ids.to(device), enc.attention_mask.to(device)


@pytest.fixture(scope="module")
def cuda_models(tiny_llm, tiny_verifier):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return _load(tiny_llm, tiny_verifier, torch.float32, "cuda")


def test_cuda_greedy_equals_naive_reference_and_flips(cuda_models):
    tok, llm, ver = cuda_models
    cfg = DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=12, eos_token_ids=[tok.eos_token_id])
    out = generate(llm, *_batch(tok, PROMPTS, "cuda"), cfg, verifier=ver, tokenizer=tok)
    for p, got in zip(PROMPTS, out.tokens):
        assert got == naive_decode(tok, llm, ver, p, cfg), p
    assert sum(s.flips for s in out.stats) > 0


def test_cuda_beta_zero_equals_transformers_greedy(cuda_models):
    tok, llm, ver = cuda_models
    ids, attn = _batch(tok, PROMPTS, "cuda")
    ref = llm.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=10,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    out = generate(llm, ids, attn, DecodeConfig(beta=0.0, max_new_tokens=10, eos_token_ids=[tok.eos_token_id]),
                   verifier=ver)
    for i, got in enumerate(out.tokens):
        assert got == ref[i, : len(got)].tolist()


def test_cuda_sampling_matches_cpu_and_repeats(cuda_models, tiny_llm, tiny_verifier):
    tok, llm, ver = cuda_models
    cfg = DecodeConfig(alpha=0.1, beta=1.0, do_sample=True, temperature=1.0, max_new_tokens=8)
    ids, attn = _batch(tok, PROMPTS[:2], "cuda")
    seeds = [101, 102, 103, 201, 202]
    shared = generate(llm, ids, attn, cfg, verifier=ver, seeds=seeds, repeats=[3, 2])
    rows = torch.tensor([0, 0, 0, 1, 1], device="cuda")
    separate = generate(llm, ids[rows], attn[rows], cfg, verifier=ver, seeds=seeds)
    assert shared.tokens == separate.tokens
    assert len({tuple(t) for t in shared.tokens[:3]}) > 1
    # the per-row CPU generators make the draws device-independent (up to logits that differ in the last bits)
    ctok, cllm, cver = _load(tiny_llm, tiny_verifier, torch.float32, "cpu")
    cpu = generate(cllm, *_batch(ctok, PROMPTS[:2], "cpu"), cfg, verifier=cver, seeds=[101, 201])
    assert cpu.tokens == [shared.tokens[0], shared.tokens[3]]


def test_cuda_verifier_cache_and_bf16(cuda_models, tiny_llm, tiny_verifier):
    from transformers import DynamicCache

    tok, llm, ver = cuda_models
    ids, attn = _batch(tok, PROMPTS[1:2], "cuda")
    out = generate(llm, ids, attn, DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=9), verifier=ver,
                   tokenizer=tok, return_caches=True)
    _, vcache, cols = out.caches
    seq = torch.cat([ids, torch.tensor([out.tokens[0]], device="cuda")], dim=1)
    fresh = DynamicCache(config=ver.config)
    with torch.no_grad():
        ver(input_ids=seq[:, :cols], cache=fresh, use_cache=True)
    for got, want in zip(vcache.layers, fresh.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)
    btok, bllm, bver = _load(tiny_llm, tiny_verifier, torch.bfloat16, "cuda")
    out = generate(bllm, *_batch(btok, PROMPTS[:3], "cuda"), DecodeConfig(alpha=0.3, beta=1.0, max_new_tokens=6),
                   verifier=bver)
    assert [len(t) for t in out.tokens] == [6, 6, 6]
    ref = bllm.generate(*_batch(btok, PROMPTS[:1], "cuda")[:1], do_sample=False, max_new_tokens=6,
                        min_new_tokens=6, pad_token_id=btok.pad_token_id)
    plain = generate(bllm, *_batch(btok, PROMPTS[:1], "cuda"), DecodeConfig(beta=0.0, max_new_tokens=6,
                                                                            eos_token_ids=()))
    assert plain.tokens[0] == ref[0, -6:].tolist()
