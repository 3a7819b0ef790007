"""Dual-process decoding against a naive from-scratch reference (docs/method.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm2_eval.candidates import make_generators, plausible_candidates, sample_from_logits
from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.scoring import candidate_attention_mask
from llm2_eval.verifier import load_verifier

PROMPTS = [
    "how many apples",
    "she buys 12 eggs and sells 3 so then how many are left",
    "the",
    "each hour he makes 7 dollars",
    "they had 40 apples. The answer is",
]


@pytest.fixture(scope="module")
def models(tiny_llm, tiny_verifier):
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    ver = load_verifier(tiny_verifier, dtype=torch.float32)
    return tok, llm, ver


@pytest.fixture(scope="module")
def llama_models(tiny_llama):
    from llm2_eval.verifier import init_verifier

    vdir = init_verifier(tiny_llama, tiny_llama.parent / "llama_verifier", seed=5, head_init="normal")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return tok, llm, load_verifier(vdir, dtype=torch.float32)


@torch.no_grad()
def naive_decode(tok, llm, ver, prompt: str, cfg: DecodeConfig) -> list[int]:
    """Reference: recompute everything from scratch each step, one sequence, one candidate at a time."""
    seq = tok(prompt).input_ids
    out: list[int] = []
    dev = llm.device
    for _ in range(cfg.max_new_tokens):
        logits = llm(torch.tensor([seq], device=dev)).logits[0, -1].float()
        if ver is None or cfg.beta == 0:
            t = int(logits.argmax())
        else:
            if cfg.top_k:
                cands = logits.topk(cfg.top_k).indices
            else:
                p = logits.softmax(-1)
                cands = (p >= cfg.alpha * p.max()).nonzero().flatten()
                cands = cands[logits[cands].argsort(descending=True, stable=True)]
            if cfg.max_candidates:
                cands = cands[: cfg.max_candidates]
            z = logits[cands]
            if len(cands) > 1:
                # each candidate as its own full sequence (same length, so they can share one batch)
                rows = torch.tensor([seq + [int(c)] for c in cands], device=dev)
                s = ver(rows).logits[:, -1, 0].float()
                z = z + cfg.beta * s
            t = int(cands[z.argmax()])
        seq.append(t)
        out.append(t)
        if t in cfg.eos_token_ids:
            break
        if cfg.stop and any(s in tok.decode(out) for s in cfg.stop):
            break
    return out


def batch(tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_plausible_candidates_alpha_topk_cap_exclude():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    ids, mask = plausible_candidates(logits, alpha=0.2)
    p = logits.softmax(-1)
    for b in range(4):
        expect = set((p[b] >= 0.2 * p[b].max()).nonzero().flatten().tolist())
        got = ids[b][mask[b]].tolist()
        assert set(got) == expect and len(got) == len(expect)
        assert got[0] == int(logits[b].argmax())
        assert all(logits[b, got[i]] >= logits[b, got[i + 1]] for i in range(len(got) - 1))
    ids, mask = plausible_candidates(logits, top_k=5)
    assert mask.all() and ids.shape == (4, 5)
    assert torch.equal(ids, logits.topk(5).indices)
    ids, mask = plausible_candidates(logits, alpha=0.01, max_candidates=3)
    assert mask.sum(-1).max() <= 3 and torch.equal(ids[:, 0], logits.argmax(-1))
    gold = logits.argmax(-1)
    ids, mask = plausible_candidates(logits, alpha=0.2, exclude=gold)
    for b in range(4):
        got = ids[b][mask[b]].tolist()
        full = set((p[b] >= 0.2 * p[b].max()).nonzero().flatten().tolist())
        assert set(got) == full - {int(gold[b])}


def test_candidate_mask_sees_prefix_and_itself_only():
    attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    m = candidate_attention_mask(attn, n_cached=3, n_candidates=3, dtype=torch.float32)
    assert m.shape == (2, 1, 2 + 3, 5 + 3)
    allowed = m[:, 0] == 0
    # pending token at column 3 of row 0: sees real columns 2, 3 (not the left padding, not the future)
    assert allowed[0, 0].tolist() == [False, False, True, True, False, False, False, False]
    # candidate 1 of row 0: every real column and its own slot
    assert allowed[0, 3].tolist() == [False, False, True, True, True, False, True, False]
    assert allowed[1, 4].tolist() == [True] * 5 + [False, False, True]
    assert (m[~allowed[:, None]] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_greedy_equals_naive_reference(models, batch_size):
    tok, llm, ver = models
    cfg = DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=12, eos_token_ids=[tok.eos_token_id])
    prompts = PROMPTS[:batch_size]
    out = generate(llm, *batch(tok, prompts), cfg, verifier=ver, tokenizer=tok)
    flips = 0
    for p, got, st in zip(prompts, out.tokens, out.stats):
        assert got == naive_decode(tok, llm, ver, p, cfg), p
        flips += st.flips
    assert flips > 0, "the verifier never changed a decision: the test would not see a scoring bug"


def test_single_candidate_steps_skip_verifier_and_stay_exact(llama_models):
    tok, llm, ver = llama_models
    cfg = DecodeConfig(alpha=0.25, beta=6.0, max_new_tokens=16, eos_token_ids=[tok.eos_token_id])
    for prompts in (PROMPTS[:1], PROMPTS[1:4]):
        out = generate(llm, *batch(tok, prompts), cfg, verifier=ver, tokenizer=tok)
        for p, got in zip(prompts, out.tokens):
            assert got == naive_decode(tok, llm, ver, p, cfg)
    skipped = sum(s.skipped_steps for s in out.stats)
    scored = sum(s.scored_steps for s in out.stats)
    assert skipped > 0 and scored > 0


def test_row_subsets_with_mixed_candidate_counts_stay_exact(llama_models):
    """Only the rows with 2+ candidates are scored (the others defer their pending tokens), so rows read different
    numbers of verifier columns; every row still equals the naive reference, and each row's verifier cache holds
    exactly the key/values of its real tokens (docs/method.md section 3 step 6)."""
    from transformers import DynamicCache

    tok, llm, ver = llama_models
    cfg = DecodeConfig(alpha=0.4, beta=6.0, max_new_tokens=15)  # the last step scores rows 2-4 only
    ids, attn = batch(tok, PROMPTS)
    out = generate(llm, ids, attn, cfg, verifier=ver, tokenizer=tok, return_caches=True)
    for p, got in zip(PROMPTS, out.tokens):
        assert got == naive_decode(tok, llm, ver, p, cfg), p
    _, vcache, cols = out.caches
    assert isinstance(cols, list) and len(set(cols)) > 1, "rows should have read different numbers of columns"
    seq = torch.cat([ids, torch.tensor(out.tokens)], dim=1)
    mask = torch.cat([attn, torch.ones(len(PROMPTS), cfg.max_new_tokens, dtype=attn.dtype)], dim=1)
    for r, c in enumerate(cols):
        fresh = DynamicCache(config=ver.config)
        real = mask[r, :c].bool()
        with torch.no_grad():
            ver(input_ids=seq[r : r + 1, :c][:, real], cache=fresh, use_cache=True)
        for got, want in zip(vcache.layers, fresh.layers):
            torch.testing.assert_close(got.keys[r, :, :c][:, real], want.keys[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got.values[r, :, :c][:, real], want.values[0], atol=1e-5, rtol=1e-4)


def test_chosen_candidate_is_not_fed_again(models):
    """The chosen candidate's key/values from the scoring forward become the verifier's next real column: with two
    candidates at every step, one row reads its prompt once and then only its 2 candidate slots per step (no pending
    token), and the output still equals the naive reference."""
    tok, llm, ver = models
    cfg = DecodeConfig(top_k=2, beta=4.0, max_new_tokens=8)
    ids, attn = batch(tok, PROMPTS[2:3])
    out = generate(llm, ids, attn, cfg, verifier=ver, tokenizer=tok)
    st = out.stats[0]
    assert out.tokens[0] == naive_decode(tok, llm, ver, PROMPTS[2], cfg)
    assert st.scored_steps == st.steps == 8
    assert st.verifier_tokens == int(attn.sum()) + 2 * st.steps


def test_top_k_and_max_candidates_match_reference(models):
    tok, llm, ver = models
    for cfg in (
        DecodeConfig(top_k=3, beta=4.0, max_new_tokens=8),
        DecodeConfig(alpha=0.05, max_candidates=4, beta=4.0, max_new_tokens=8),
    ):
        out = generate(llm, *batch(tok, PROMPTS[:3]), cfg, verifier=ver, tokenizer=tok)
        for p, got, st in zip(PROMPTS[:3], out.tokens, out.stats):
            assert got == naive_decode(tok, llm, ver, p, cfg)
            assert st.candidates <= st.steps * (cfg.top_k or cfg.max_candidates)


def test_stop_strings_end_generation_like_reference(models):
    tok, llm, ver = models
    free = generate(llm, *batch(tok, PROMPTS[:1]), DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=12),
                    verifier=ver, tokenizer=tok)
    text = tok.decode(free.tokens[0])
    stop = text[len(tok.decode(free.tokens[0][:4])):][:2]  # a string that appears after the 4th token
    assert stop
    cfg = DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=12, stop=[stop])
    out = generate(llm, *batch(tok, PROMPTS[:3]), cfg, verifier=ver, tokenizer=tok)
    assert out.finish_reasons[0] == "stop" and stop in tok.decode(out.tokens[0])
    assert stop not in tok.decode(out.tokens[0][:-1])
    for p, got in zip(PROMPTS[:3], out.tokens):
        assert got == naive_decode(tok, llm, ver, p, cfg)


def test_beta_zero_and_no_verifier_equal_transformers_greedy(models):
    tok, llm, ver = models
    ids, attn = batch(tok, PROMPTS)
    ref = llm.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=10,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    for v, beta in ((ver, 0.0), (None, 0.25)):
        out = generate(llm, ids, attn, DecodeConfig(beta=beta, max_new_tokens=10, eos_token_ids=[tok.eos_token_id]),
                       verifier=v)
        for i, got in enumerate(out.tokens):
            assert got == ref[i, : len(got)].tolist()
        assert all(s.verifier_tokens == 0 for s in out.stats)


def test_verifier_cache_holds_exactly_the_real_sequence(models):
    tok, llm, ver = models
    ids, attn = batch(tok, PROMPTS[1:2])
    out = generate(llm, ids, attn, DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=9), verifier=ver,
                   tokenizer=tok, return_caches=True)
    _, vcache, cols = out.caches
    seq = torch.cat([ids, torch.tensor([out.tokens[0]])], dim=1)
    assert vcache.get_seq_length() == cols and ids.shape[1] < cols <= seq.shape[1]
    from transformers import DynamicCache

    fresh = DynamicCache(config=ver.config)
    with torch.no_grad():
        ver(input_ids=seq[:, :cols], cache=fresh, use_cache=True)
    for got, want in zip(vcache.layers, fresh.layers):
        assert got.keys.shape == want.keys.shape
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)


def test_sampling_is_reproducible_and_independent_of_the_batch(models):
    tok, llm, ver = models
    cfg = DecodeConfig(alpha=0.1, beta=1.0, do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=10)
    ids, attn = batch(tok, PROMPTS[:3])
    a = generate(llm, ids, attn, cfg, verifier=ver, seeds=[11, 12, 13])
    b = generate(llm, ids, attn, cfg, verifier=ver, seeds=[11, 12, 13])
    c = generate(llm, ids, attn, cfg, verifier=ver, seeds=[21, 22, 23])
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    alone = generate(llm, *batch(tok, PROMPTS[1:2]), cfg, verifier=ver, seeds=[12])
    assert alone.tokens[0] == a.tokens[1]


def test_sample_from_logits_respects_top_p_and_distribution():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gens = make_generators([0])
    draws = [int(sample_from_logits(z, 1.0, 0.7, gens)) for _ in range(400)]
    assert set(draws) <= {0, 1}  # 0.5 + 0.3 reaches 0.7: tokens 2 and 3 are cut
    share = draws.count(0) / len(draws)
    assert abs(share - 0.5 / 0.8) < 0.08
    z2 = torch.tensor([[0.0, float("-inf"), 0.0]])
    assert {int(sample_from_logits(z2, 1.0, 1.0, gens)) for _ in range(50)} == {0, 2}


def test_bf16_decoding_runs_and_stays_finite(tiny_llm, tiny_verifier):
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.bfloat16).eval()
    ver = load_verifier(tiny_verifier, dtype=torch.bfloat16)
    out = generate(llm, *batch(tok, PROMPTS[:2]), DecodeConfig(alpha=0.3, beta=1.0, max_new_tokens=6),
                   verifier=ver)
    assert [len(t) for t in out.tokens] == [6, 6]
    assert all(math.isfinite(s.margin_sum) for s in out.stats)


def test_bad_input_gives_clear_errors(models):
    tok, llm, ver = models
    with pytest.raises(ValueError, match="empty prompt in row"):
        generate(llm, torch.tensor([[tok.pad_token_id, 5]]), torch.tensor([[0, 0]]), DecodeConfig(), verifier=ver)
    with pytest.raises(ValueError, match="alpha"):
        DecodeConfig(alpha=0)
    with pytest.raises(ValueError, match="beta"):
        DecodeConfig(beta=-1)
    with pytest.raises(ValueError, match="temperature"):
        DecodeConfig(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="seeds"):
        generate(llm, *batch(tok, PROMPTS[:2]), DecodeConfig(do_sample=True), seeds=[1])


def test_repeats_share_the_prefill_and_equal_separate_seeded_runs(models):
    tok, llm, ver = models
    cfg = DecodeConfig(alpha=0.1, beta=1.0, do_sample=True, temperature=1.0, max_new_tokens=8)
    ids, attn = batch(tok, PROMPTS[:2])
    seeds = [101, 102, 103, 201, 202]
    shared = generate(llm, ids, attn, cfg, verifier=ver, seeds=seeds, repeats=[3, 2])
    assert len(shared.tokens) == 5
    rows = torch.tensor([0, 0, 0, 1, 1])
    separate = generate(llm, ids[rows], attn[rows], cfg, verifier=ver, seeds=seeds)
    assert shared.tokens == separate.tokens
    assert len({tuple(t) for t in shared.tokens[:3]}) > 1
    # the prompt is read once per distinct prompt, by each model
    prompt_lens = attn.sum(-1).tolist()
    llm_shared = sum(s.llm_tokens for s in shared.stats)
    llm_separate = sum(s.llm_tokens for s in separate.stats)
    assert llm_separate - llm_shared == 2 * prompt_lens[0] + 1 * prompt_lens[1]
    assert shared.stats[0].verifier_tokens >= prompt_lens[0] and shared.stats[1].llm_tokens < prompt_lens[0]
    greedy = generate(llm, ids, attn, DecodeConfig(alpha=0.3, beta=4.0, max_new_tokens=6), verifier=ver,
                      repeats=[2, 1])
    assert greedy.tokens[0] == greedy.tokens[1] == naive_decode(tok, llm, ver, PROMPTS[0], DecodeConfig(
        alpha=0.3, beta=4.0, max_new_tokens=6))
    with pytest.raises(ValueError, match="repeats"):
        generate(llm, ids, attn, cfg, repeats=[1])


def test_flips_count_verifier_changes_not_sampling_noise(models):
    tok, llm, ver = models
    ids, attn = batch(tok, PROMPTS[:2])
    cfg = DecodeConfig(alpha=0.05, beta=1e-9, do_sample=True, max_new_tokens=10)
    out = generate(llm, ids, attn, cfg, verifier=ver, seeds=[1, 2])
    assert sum(s.scored_steps for s in out.stats) > 0
    assert [s.flips for s in out.stats] == [0, 0]  # a negligible verifier changes nothing, whatever is sampled


def test_sliding_window_verifier_and_string_stop(tiny_llm, tmp_path, models):
    from transformers import AutoConfig

    from llm2_eval.verifier import init_verifier

    tok, llm, _ = models
    cfg = AutoConfig.from_pretrained(tiny_llm)
    cfg.use_sliding_window, cfg.sliding_window = True, 8
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    cfg.save_pretrained(tmp_path / "sw")
    for f in tiny_llm.iterdir():
        if f.name != "config.json":
            (tmp_path / "sw" / f.name).write_bytes(f.read_bytes())
    ver = load_verifier(init_verifier(tmp_path / "sw", tmp_path / "swv", head_init="normal"))
    with pytest.raises(ValueError, match="sliding-window attention \\(window 8"):
        generate(llm, *batch(tok, PROMPTS[1:2]), DecodeConfig(max_new_tokens=8), verifier=ver)
    out = generate(llm, *batch(tok, ["the"]), DecodeConfig(alpha=0.3, max_new_tokens=4), verifier=ver)
    assert len(out.tokens[0]) == 4
    free = generate(llm, *batch(tok, PROMPTS[:1]), DecodeConfig(beta=0, max_new_tokens=8))
    stop = tok.decode(free.tokens[0])[3:5]
    out = generate(llm, *batch(tok, PROMPTS[:1]), DecodeConfig(beta=0, max_new_tokens=8, stop=stop), tokenizer=tok)
    assert out.finish_reasons == ["stop"] and stop in tok.decode(out.tokens[0])
