"""Packing negatives into one verifier sequence (verifier_train/packing.py; docs/method.md section 6, paper Eq. 4)."""

from __future__ import annotations

import pytest
import torch

from verifier_train.packing import PackedCollator, additive_mask, pack_solution, packed_allowed_mask
from verifier_train.train import pair_scores, pairwise_loss

MESSAGES = [
    {"role": "user", "content": "she buys 12 apples and gives 5 eggs to each of the 3 dollars. how many are left?"},
    {"role": "assistant", "content": "each has 5 so 3 times 5 is 15 then 12 less than 15 is 3. The answer is 3."},
]



def test_pack_solution_layout():
    ids = list(range(100, 120))
    samples = [[7, 107, 3], [2, 102, 4], [7, 107, 5], [11, 111, 6]]
    ex = pack_solution(ids, samples)
    # solution cut after the last pair's pos (lossless), negatives in pos order (ties in input order)
    assert ex.solution_length == 12
    assert ex.pair_pos == [2, 7, 7, 11]
    assert ex.input_ids == ids[:12] + [4, 3, 5, 6]
    assert ex.position_ids == list(range(12)) + [2, 7, 7, 11]
    assert ex.dropped_pairs == 0 and ex.num_pairs == 4 and len(ex) == 16


def test_pack_solution_truncation_keeps_most_pairs_within_budget():
    ids = list(range(50))
    samples = [[40, 40, 1], [5, 5, 1], [10, 10, 2], [10, 10, 3], [30, 30, 4]]
    # budget 14: pos 5,10,10 -> L=11, 3 negatives -> 14 tokens; adding pos 30 would need 31 + 4
    ex = pack_solution(ids, samples, max_length=14)
    assert ex.pair_pos == [5, 10, 10] and ex.solution_length == 11 and len(ex) == 14
    assert ex.dropped_pairs == 2
    ex = pack_solution(ids, samples, max_length=13)
    assert ex.pair_pos == [5, 10] and len(ex) == 13 and ex.dropped_pairs == 3
    ex = pack_solution(ids, samples, max_length=6)  # 5 + 1 + 1 = 7 > 6: nothing fits
    assert ex.num_pairs == 0 and ex.input_ids == [] and ex.dropped_pairs == 5
    full = pack_solution(ids, samples, max_length=46)  # 41 + 5
    assert full.num_pairs == 5 and len(full) == 46
    with pytest.raises(ValueError, match="outside"):
        pack_solution(ids[:5], [[5, 0, 1]])


def test_mask_negative_sees_only_its_prefix_and_itself():
    L, pos = 9, [1, 4, 4, 8]
    allowed = packed_allowed_mask(L, pos, total_length=L + len(pos) + 3)
    t = allowed.shape[0]
    assert allowed.shape == (t, t) and allowed.dtype == torch.bool
    # solution part: causal
    assert torch.equal(allowed[:L, :L], torch.ones(L, L, dtype=torch.bool).tril())
    assert not allowed[:L, L:].any()
    for j, p in enumerate(pos):
        row = allowed[L + j]
        assert row.nonzero().flatten().tolist() == list(range(p)) + [L + j]
    # padding rows: only themselves
    for r in range(L + len(pos), t):
        assert allowed[r].nonzero().flatten().tolist() == [r]


def test_collator_pads_and_indexes_pairs():
    a = pack_solution(list(range(10, 30)), [[3, 13, 1], [6, 16, 2], [6, 16, 0]])
    b = pack_solution(list(range(10, 14)), [[2, 12, 5]])
    batch = PackedCollator(pad_token_id=299)([a, b])
    assert batch["input_ids"].shape == (2, 10)
    assert batch["input_ids"][1].tolist() == [10, 11, 12, 5] + [299] * 6
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 2] + [0] * 6
    assert batch["allowed"].shape == (2, 1, 10, 10)
    assert batch["gold_index"].tolist() == [[3, 6, 6], [2, 0, 0]]
    assert batch["neg_index"].tolist() == [[7, 8, 9], [3, 0, 0]]
    assert batch["pair_mask"].tolist() == [[True, True, True], [True, False, False]]
    # the negative of b at index 3 sees tokens 0, 1 and itself; padding sees itself only
    assert batch["allowed"][1, 0, 3].nonzero().flatten().tolist() == [0, 1, 3]
    assert batch["allowed"][1, 0, 7].nonzero().flatten().tolist() == [7]
    padded = PackedCollator(pad_token_id=0, pad_to_multiple_of=8)([a])
    assert padded["input_ids"].shape == (1, 16)
    m = additive_mask(batch["allowed"], torch.bfloat16)
    assert m.dtype == torch.bfloat16 and m.shape == (2, 1, 10, 10)
    assert (m[batch["allowed"]] == 0).all()
    assert (m[~batch["allowed"]] == torch.finfo(torch.bfloat16).min).all()


def test_pairwise_loss_is_mean_over_real_pairs():
    g = torch.tensor([[2.0, 0.0, 9.0], [1.0, 5.0, 5.0]])
    n = torch.tensor([[1.0, 1.0, -9.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = -torch.nn.functional.logsigmoid(torch.tensor([1.0, -1.0, -2.0])).mean()
    assert torch.allclose(pairwise_loss(g, n, mask), expected)
    assert torch.allclose(pairwise_loss(g, n, mask, "sum"), expected * 3)
    assert pairwise_loss(g, n, mask, "none").shape == (3,)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_one_sequence_per_pair(tiny_verifier, attn):
    """Paper Eq. 4 computed on packed solutions == computed with two plain causal sequences per pair (fp32)."""
    from transformers import AutoTokenizer

    from llm2_eval.verifier import load_verifier, verifier_scores
    from verifier_train.records import chat_token_ids, response_start

    tok = AutoTokenizer.from_pretrained(tiny_verifier)
    model = load_verifier(tiny_verifier, dtype="float32", attn_implementation=attn)
    with torch.no_grad():  # a head with visible scores (the fresh head is nearly zero)
        model.score.weight.normal_(0, 1.0)
    ids = chat_token_ids(tok, MESSAGES)
    start = response_start(tok, MESSAGES)
    g = torch.Generator().manual_seed(0)
    positions = sorted(torch.randint(start, len(ids), (7,), generator=g).tolist())
    samples_a = [[p, ids[p], (ids[p] + 1 + k) % len(tok)] for k, p in enumerate(positions)]
    samples_a.append([positions[2], ids[positions[2]], (ids[positions[2]] + 50) % len(tok)])  # two negs, one pos
    short = MESSAGES[:1] + [{"role": "assistant", "content": "3 times 5 is 15."}]
    ids_b = chat_token_ids(tok, short)
    samples_b = [[len(ids_b) - 3, ids_b[-3], 7], [len(ids_b) - 5, ids_b[-5], 8]]
    records = [(ids, samples_a), (ids_b, samples_b)]

    batch = PackedCollator(pad_token_id=tok.pad_token_id)([pack_solution(i, s) for i, s in records])
    with torch.no_grad():
        s_gold, s_neg = pair_scores(model, batch, torch.float32)
    packed_loss = pairwise_loss(s_gold, s_neg, batch["pair_mask"])

    ref_gold, ref_neg = [], []
    with torch.no_grad():
        for tokens, samples in records:
            for pos, gold, neg in sorted(samples, key=lambda s: s[0]):
                seqs = torch.tensor([tokens[:pos] + [gold], tokens[:pos] + [neg]])
                sc = verifier_scores(model(input_ids=seqs))
                ref_gold.append(sc[0, -1])
                ref_neg.append(sc[1, -1])
    ref_gold, ref_neg = torch.stack(ref_gold), torch.stack(ref_neg)
    ref_loss = -torch.nn.functional.logsigmoid(ref_gold - ref_neg).mean()

    mask = batch["pair_mask"]
    got_gold, got_neg = s_gold[mask], s_neg[mask]
    assert got_gold.shape == ref_gold.shape == (len(samples_a) + len(samples_b),)
    assert ref_gold.std() > 0.1 and (ref_gold - ref_neg).abs().max() > 0.1  # non-trivial scores
    torch.testing.assert_close(got_gold, ref_gold, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_neg, ref_neg, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, ref_loss, atol=1e-6, rtol=1e-5)
