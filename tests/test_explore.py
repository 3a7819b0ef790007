"""``llm2 explore`` (verifier_train/explore.py): labels, triplet consistency, resume, shards, sample modes, bad input.

CPU only, tiny random models (tests/tiny_models.py) and stub answer checkers; every run is a few examples with
rollouts of a few tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from tiny_models import build_tiny_llm

from llm2_eval.candidates import plausible_candidates
from llm2_eval.decoding import DecodeConfig, generate
from verifier_train.explore import (
    ExploreConfig,
    ExploreInputError,
    derive_seed,
    explore,
    explore_command,
    gsm8k_solution_text,
    in_shard,
    parse_positions,
    parse_shard,
    rollout_seed,
    sample_scores,
    select_positions,
    shard_output_path,
    summary_path,
)
from verifier_train.explore.labels import is_negative, worse_than_gold_p
from verifier_train.explore.significance import can_be_significant, fisher_less_p
from verifier_train.records import check_samples, chat_token_ids, iter_records, response_start
from verifier_train.rollouts import HFRolloutEngine

QUESTIONS = [
    ("she has 3 apples and buys 4 more. how many apples?", "3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("he had 12 eggs and sells 5. how many eggs are left?", "12 - 5 = <<12-5=7>>7 eggs are left.\n#### 7"),
    ("they make 2 dollars each hour for 6 hours. how much in total?", "2 * 6 = <<2*6=12>>12 dollars.\n#### 12"),
    ("a total of 10 apples is shared by 2. how many each?", "10 / 2 = <<10/2=5>>5 apples each.\n#### 5"),
    ("she gives 1 of her 9 eggs away. how many are left?", "9 - 1 = <<9-1=8>>8 eggs.\n#### 1,008"),
]



def parity_checker(text, gold, tokens):
    """Stub: a rollout 'reaches the answer' iff its first generated token id is even."""
    return bool(tokens) and tokens[0] % 2 == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("explore")
    llm = build_tiny_llm(root / "llm", seed=5)
    contrast = build_tiny_llm(root / "contrast", seed=6, tokenizer=AutoTokenizer.from_pretrained(llm))
    data = root / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return SimpleNamespace(
        root=root, llm=str(llm), contrast=str(contrast), data=str(data),
        tok=AutoTokenizer.from_pretrained(llm), model=AutoModelForCausalLM.from_pretrained(llm).eval(),
        contrast_model=AutoModelForCausalLM.from_pretrained(contrast).eval(),
    )


def _cfg(env, out, **kw):
    base = dict(model=env.llm, data=env.data, output=str(out), positions="sample:2", candidates=2, rollouts=2,
                max_rollout_tokens=3, progress=False, checker=parity_checker)
    base.update(kw)
    return ExploreConfig(**base)


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _strip_timing(rec):
    return {k: v for k, v in rec.items() if k != "seconds"}


@pytest.fixture(scope="module")
def controlled(env):
    out = env.root / "controlled" / "out.jsonl"
    cfg = _cfg(env, out, positions="sample:3", candidates=3, rollouts=3, limit=2, gold_rollouts=True)
    summary = explore(cfg)
    return SimpleNamespace(cfg=cfg, out=out, summary=summary, records=_lines(out))


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _eos(env):
    return sorted({env.tok.eos_token_id, env.model.generation_config.eos_token_id} - {None})


# --------------------------------------------------------------------------------------------------- exact labels


def test_labels_exact_on_controlled_case(env, controlled):
    """Every quality equals an independent recomputation: the same rollouts (seeds of rollout_seed) generated one
    prompt per row without any prefix sharing, judged by the stub; negatives are exactly q < tau (Eq. 5-6)."""
    cfg = controlled.cfg
    assert [r["id"] for r in controlled.records] == [1, 2]
    n_checked = 0
    for rec in controlled.records:
        ids = chat_token_ids(env.tok, rec["messages"])
        rows, seeds, keys = [], [], []
        for q in rec["qualities"] + rec["gold_qualities"]:
            for j in range(cfg.rollouts):
                rows.append(ids[: q["pos"]] + [q["token"]])
                seeds.append(rollout_seed(cfg.seed, rec["id"], q["pos"], q["token"], j))
                keys.append((q["pos"], q["token"]))
        width = max(map(len, rows))
        inp = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        dcfg = DecodeConfig(beta=0, do_sample=True, temperature=0.7, max_new_tokens=cfg.max_rollout_tokens,
                            eos_token_ids=_eos(env))
        out = generate(env.model, inp, mask, dcfg, seeds=seeds)
        wins: dict = {}
        cut: dict = {}
        for key, toks, why in zip(keys, out.tokens, out.finish_reasons):
            wins[key] = wins.get(key, 0) + int(parity_checker("", "", toks))
            cut[key] = cut.get(key, 0) + int(why == "length")
        expected_samples = []
        for q in rec["qualities"]:
            k = wins[(q["pos"], q["token"])]
            assert q["correct"] == k and q["rollouts"] == 3 and q["q"] == pytest.approx(k / 3)
            assert q["truncated"] == cut[(q["pos"], q["token"])]
            assert q["negative"] == (k / 3 < cfg.tau)
            if q["negative"]:
                expected_samples.append([q["pos"], ids[q["pos"]], q["token"]])
            n_checked += 1
        for q in rec["gold_qualities"]:
            assert q["token"] == ids[q["pos"]] and q["correct"] == wins[(q["pos"], q["token"])]
        assert rec["samples"] == expected_samples
    assert n_checked == controlled.summary["candidates"] > 0
    assert controlled.summary["rollouts"] == 3 * (controlled.summary["candidates"] + controlled.summary["positions"])
    labels = [q["negative"] for r in controlled.records for q in r["qualities"]]
    assert any(labels) and not all(labels), "the stub should give both labels on this case"


def test_relative_labels_rank_candidates_against_gold(env, controlled, tmp_path):
    """--label relative: q(gold) with the same rollouts, negatives iff q(v) <= q(gold) - margin, positions with
    q(gold) < min_gold_quality not judged (no candidate rollouts); the qualities equal the absolute run's."""
    cfg = _cfg(env, tmp_path / "rel.jsonl", positions="sample:3", candidates=3, rollouts=3, limit=2,
               label="relative", margin=0.3, min_gold_quality=0.6)
    summary = explore(cfg)
    records = _lines(cfg.output)
    absolute = {(r["id"], q["pos"], q["token"]): q["q"] for r in controlled.records
                for q in r["qualities"] + r["gold_qualities"]}
    judged = unjudged = 0
    for rec in records:
        q_gold = {q["pos"]: q["q"] for q in rec["gold_qualities"]}
        assert sorted(q_gold) == rec["positions"]
        assert rec["unjudged_positions"] == sorted(t for t, q in q_gold.items() if q < 0.6)
        unjudged += len(rec["unjudged_positions"])
        ids = chat_token_ids(env.tok, rec["messages"])
        expected = []
        for q in rec["qualities"]:
            assert q["pos"] not in rec["unjudged_positions"]
            assert q["q"] == absolute[(rec["id"], q["pos"], q["token"])]
            assert q["negative"] == (q["q"] <= q_gold[q["pos"]] - 0.3 + 1e-9)
            if q["negative"]:
                expected.append([q["pos"], ids[q["pos"]], q["token"]])
            judged += 1
        assert {q["pos"] for q in rec["qualities"]} == set(rec["positions"]) - set(rec["unjudged_positions"])
        assert rec["samples"] == expected
    assert unjudged > 0 and judged > 0, "the stub should leave some positions unjudged and judge others"
    assert summary["unjudged_positions"] == unjudged
    assert summary["rollouts"] == 3 * (summary["positions"] + summary["candidates"])
    assert records[0]["settings"]["label"] == "relative" and "tau" not in records[0]["settings"]
    assert "label" not in controlled.records[0]["settings"]  # the default rule writes the settings as before
    with pytest.raises(ValueError, match="margin"):
        _cfg(env, tmp_path / "x.jsonl", label="relative", margin=1.5)


# ---------------------------------------------------------------------------------------- the significant rule


def _brute_less_p(a, na, b, nb):
    """P(#successes in the first na of na + nb rollouts <= a) when every placement of the a + b successes is equally
    likely (H0 of Fisher's test), by enumerating the placements: independent of the closed form."""
    from fractions import Fraction
    from itertools import combinations

    total, k = na + nb, a + b
    hits = [sum(i < na for i in c) <= a for c in combinations(range(total), k)]
    return Fraction(sum(hits), len(hits))


def test_fisher_less_p_known_values():
    """Hand-computed tails, a brute-force enumeration, the two-tail identity and SciPy where available."""
    assert fisher_less_p(0, 4, 4, 4) == pytest.approx(1 / 70)  # C(8,4) = 70: only one table this extreme
    assert fisher_less_p(1, 4, 4, 4) == pytest.approx(5 / 70)  # C(5,1) C(3,3) / 70
    assert fisher_less_p(0, 4, 3, 4) == pytest.approx(5 / 70)  # C(3,0) C(5,4) / 70
    assert fisher_less_p(0, 3, 3, 3) == pytest.approx(1 / 20)
    assert fisher_less_p(0, 16, 16, 16) == pytest.approx(1 / 601080390)
    assert fisher_less_p(3, 4, 4, 4) == 0.5  # one failed rollout of 4: never significant
    for m in range(1, 17):  # a one-rollout difference at equal m: p = 1/2 exactly
        for c in range(m):
            assert fisher_less_p(c, m, c + 1, m) == 0.5
    assert fisher_less_p(4, 4, 0, 4) == 1.0 and fisher_less_p(2, 4, 2, 4) > 0.5
    assert fisher_less_p(0, 0, 3, 4) == fisher_less_p(1, 4, 0, 0) == 1.0  # an empty group: no evidence
    for na in range(1, 5):
        for nb in range(1, 5):
            for a in range(na + 1):
                for b in range(nb + 1):
                    p = fisher_less_p(a, na, b, nb)
                    assert p == pytest.approx(float(_brute_less_p(a, na, b, nb)), abs=1e-12), (a, na, b, nb)
                    # P(X <= a) + P(X >= a) = 1 + P(X = a); the reverse test's p is P(X >= a)
                    point = _brute_less_p(a, na, b, nb) - (_brute_less_p(a - 1, na, b + 1, nb) if a else 0)
                    assert p + fisher_less_p(b, nb, a, na) == pytest.approx(1 + float(point), abs=1e-12)
    with pytest.raises(ValueError, match="correct"):
        fisher_less_p(5, 4, 0, 4)
    stats = pytest.importorskip("scipy.stats")
    for a, na, b, nb in [(0, 4, 4, 4), (2, 6, 5, 6), (3, 16, 12, 16), (11, 16, 16, 16), (1, 3, 7, 9)]:
        want = stats.fisher_exact([[a, na - a], [b, nb - b]], alternative="less").pvalue
        assert fisher_less_p(a, na, b, nb) == pytest.approx(want, rel=1e-9)


def test_significant_rule_on_counts(env, tmp_path):
    """One failed rollout of 4 against 4/4 is a relative-rule negative (margin 0.25) but not a significant one; 0/16
    vs 16/16 is; at m = 4 and 0.05 only 0/4 vs 4/4 is; known outcomes (end-of-turn, 0 rollouts) compare exactly."""
    sig = _cfg(env, tmp_path / "s.jsonl", label="significant")
    rel = _cfg(env, tmp_path / "r.jsonl", label="relative", margin=0.25)

    def neg(cfg, cand, gold):
        return is_negative(cand[0] / max(cand[1], 1), gold[0] / max(gold[1], 1), cfg, counts=cand, gold_counts=gold)

    assert neg(rel, (3, 4), (4, 4)) and not neg(sig, (3, 4), (4, 4))
    assert neg(sig, (0, 16), (16, 16)) and neg(sig, (11, 16), (16, 16)) and not neg(sig, (12, 16), (16, 16))
    four = [(cv, cg) for cv in range(5) for cg in range(5) if neg(sig, (cv, 4), (cg, 4))]
    assert four == [(0, 4)]
    loose = _cfg(env, tmp_path / "l.jsonl", label="significant", significance=0.1)
    assert sorted((cv, cg) for cv in range(5) for cg in range(5) if neg(loose, (cv, 4), (cg, 4))) == [
        (0, 3), (0, 4), (1, 4)]
    assert neg(sig, (0, 0), (1, 4)) and not neg(sig, (1, 0), (4, 4)) and not neg(sig, (0, 0), (0, 4))
    assert neg(sig, (3, 4), (1, 0)) and not neg(sig, (4, 4), (1, 0)) and neg(sig, (0, 0), (1, 0))
    assert worse_than_gold_p((0, 4), (4, 4)) == pytest.approx(1 / 70)
    assert not can_be_significant(3, 4, 4, 0.05) and can_be_significant(4, 4, 4, 0.05)
    assert can_be_significant(3, 4, 4, 0.1) and not can_be_significant(2, 4, 4, 0.1)
    with pytest.raises(ValueError, match="counts"):
        is_negative(0.0, 1.0, sig)
    with pytest.raises(ValueError, match="significance"):
        _cfg(env, tmp_path / "x.jsonl", label="significant", significance=1.0)


def test_relabel_script_counts(tmp_path):
    """experiments/heldout/relabel.py on a hand-made record: the relative and significant verdicts of known counts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "relabel", Path(__file__).resolve().parents[1] / "experiments" / "heldout" / "relabel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pairs = [(4, 3), (4, 0), (4, 1), (3, 0), (2, 1), (4, 4)]  # (gold correct, candidate correct), of 4 each
    rec = {"id": 1, "qualities": [], "gold_qualities": []}
    for t, (cg, cv) in enumerate(pairs):
        rec["gold_qualities"].append({"pos": t, "q": cg / 4, "correct": cg, "rollouts": 4})
        rec["qualities"].append({"pos": t, "q": cv / 4, "correct": cv, "rollouts": 4, "negative": cv < cg})
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    got = mod.relabel(path, margin=0.25, levels=(0.05, 0.1))
    assert got["judged_candidates"] == 6 and got["negatives_in_file"] == 5 and got["relative_margin_0.25"] == 5
    assert got["relative_one_rollout_gap"] == 2
    assert got["significant"]["0.05"] == {"negatives": 1, "also_relative": 1, "positions_still_rolled_out": 4}
    assert got["significant"]["0.1"] == {"negatives": 3, "also_relative": 3, "positions_still_rolled_out": 5}


def test_significant_labels_explore_with_the_test(env, controlled, tmp_path):
    """--label significant on a tiny model: the qualities are the absolute run's (same seeds), a candidate is a
    negative iff the brute-force one-sided p of its counts against the gold token's is <= the level, positions where
    no candidate outcome could pass are not rolled out, and the settings name the rule and its level (a resume with
    another level is refused)."""
    level = 0.3  # at m = 3: a difference of 2+ rollouts passes (p 0.2 or 0.05), one never does (p 0.5)
    cfg = _cfg(env, tmp_path / "sig.jsonl", positions="sample:3", candidates=3, rollouts=3, limit=2,
               label="significant", significance=level, min_gold_quality=0.0)
    summary = explore(cfg)
    records = _lines(cfg.output)
    absolute = {(r["id"], q["pos"], q["token"]): q["q"] for r in controlled.records
                for q in r["qualities"] + r["gold_qualities"]}
    judged, negatives, unjudged = 0, 0, 0
    for rec in records:
        gold = {q["pos"]: (q["correct"], q["rollouts"]) for q in rec["gold_qualities"]}
        assert sorted(gold) == rec["positions"]
        hopeless = sorted(t for t, (c, m) in gold.items() if min(_brute_less_p(0, 3, c, m), 1) > level)
        assert rec["unjudged_positions"] == hopeless
        unjudged += len(hopeless)
        ids = chat_token_ids(env.tok, rec["messages"])
        expected = []
        for q in rec["qualities"]:
            assert q["pos"] not in hopeless and q["rollouts"] == 3
            assert q["q"] == absolute[(rec["id"], q["pos"], q["token"])]
            p = _brute_less_p(q["correct"], 3, *gold[q["pos"]])
            assert q["p_worse"] == pytest.approx(float(p)) and q["negative"] == (p <= level)
            if q["negative"]:
                expected.append([q["pos"], ids[q["pos"]], q["token"]])
            judged += 1
        assert rec["samples"] == expected
        negatives += len(expected)
    assert unjudged > 0 and judged > negatives > 0, "the stub should skip a position and give both labels"
    assert summary["unjudged_positions"] == unjudged and summary["negatives"] == negatives
    assert summary["rollouts"] == 3 * (summary["positions"] + summary["candidates"])
    settings = records[0]["settings"]
    assert settings["label"] == "significant" and settings["significance"] == level
    assert "tau" not in settings and "margin" not in settings
    with pytest.raises(ValueError, match="significance"):
        explore(_cfg(env, tmp_path / "sig.jsonl", positions="sample:3", candidates=3, rollouts=3, limit=2,
                     label="significant", significance=0.05, min_gold_quality=0.0))


def test_candidates_are_plausible_draws(env, controlled):
    """Each explored position has min(n, |V_t \\ gold|) distinct candidates from the plausible set of a plain forward."""
    for rec in controlled.records:
        ids = chat_token_ids(env.tok, rec["messages"])
        logits = _logits(env.model, ids)
        tried: dict = {}
        for q in rec["qualities"]:
            tried.setdefault(q["pos"], []).append(q["token"])
        assert sorted(tried) == rec["positions"] and len(rec["positions"]) == min(3, rec["candidate_positions"])
        for t, toks in tried.items():
            cid, cmask = plausible_candidates(logits[t - 1 : t], alpha=0.1, exclude=torch.tensor([ids[t]]))
            allowed = set(cid[0][cmask[0]].tolist())
            assert len(set(toks)) == len(toks) == min(3, len(allowed))
            assert set(toks) <= allowed and ids[t] not in toks


@pytest.mark.parametrize("verdict", [True, False])
def test_constant_checkers_give_all_or_no_negatives(env, tmp_path, verdict):
    s = explore(_cfg(env, tmp_path / "o.jsonl", limit=1, checker=lambda text, gold, toks: verdict))
    (rec,) = _lines(tmp_path / "o.jsonl")
    assert rec["qualities"] and all(q["q"] == (1.0 if verdict else 0.0) for q in rec["qualities"])
    assert len(rec["samples"]) == (0 if verdict else len(rec["qualities"])) == s["negatives"]


def test_default_checker_reads_the_response_text(env, tmp_path):
    """With the real GSM8K checker the response includes the gold prefix: at the last digits of the answer the
    prefix already holds 'The answer is', so the extracted answer is what the candidate makes it."""
    s = explore(_cfg(env, tmp_path / "o.jsonl", limit=1, checker=None, positions="all", candidates=1, rollouts=1,
                     max_rollout_tokens=1))
    assert s["candidates"] > 0 and s["negatives"] <= s["candidates"]
    (rec,) = _lines(tmp_path / "o.jsonl")
    assert rec["gold_answer"] == "7"


# ------------------------------------------------------------------------------------ triplets vs chat template


def test_triplets_consistent_with_chat_template(env, controlled):
    for rec, (q, a) in zip(controlled.records, QUESTIONS):
        assert rec["messages"] == [{"role": "user", "content": q}, {"role": "assistant", "content": gsm8k_solution_text(a)}]
        content = rec["messages"][1]["content"]
        assert "<<" not in content and "####" not in content and content.endswith("The answer is 7.")
        ids = chat_token_ids(env.tok, rec["messages"])
        rs = response_start(env.tok, rec["messages"])
        end = ids.index(env.tok.eos_token_id, rs)  # the assistant's end-of-turn (excluded by default)
        assert rec["response_start"] == rs and rec["response_positions"] == end - rs
        assert env.tok.decode(ids[rs:end]) == content
        assert check_samples(ids, [tuple(s) for s in rec["samples"]], len(env.tok)) is None
        for t, g, v in rec["samples"]:
            assert rs <= t < end and ids[t] == g and v != g
        for q in rec["qualities"]:
            assert q["gold_id"] == ids[q["pos"]] and rs <= q["pos"] < end


def test_output_reloads_in_training_reader(env, controlled):
    recs = list(iter_records(controlled.out))
    assert [r.extra["id"] for r in recs] == [1, 2]
    assert sum(len(r.samples) for r in recs) == controlled.summary["negatives"]
    for r in recs:
        assert check_samples(chat_token_ids(env.tok, r.messages), r.samples, len(env.tok)) is None
        assert "qualities" in r.extra and r.extra["settings"]["strategy"] == "rollout"


def test_summary_written_next_to_output(controlled):
    s = json.loads(summary_path(controlled.out).read_text())
    assert summary_path(controlled.out).name == "out.summary.json"
    for k in ("examples", "positions", "candidates", "negatives", "rollouts", "generated_tokens", "wall_seconds",
              "rollouts_per_s", "tokens_per_s", "examples_per_s", "skipped_lines", "settings"):
        assert k in s
    assert s["finished"] and s["examples"] == 2 and s["settings"]["tau"] == 0.5
    assert s["generated_tokens"] == sum(r["generated_tokens"] for r in controlled.records) > 0


# ------------------------------------------------------------------------------------------------------ resume


def test_resume_after_crash(env, tmp_path):
    ref_out = tmp_path / "ref.jsonl"
    explore(_cfg(env, ref_out, limit=4))
    reference = _lines(ref_out)
    assert [r["id"] for r in reference] == [1, 2, 3, 4]

    def crashing(text, gold, toks):
        if gold == "12":  # the third example
            raise RuntimeError("simulated crash")
        return parity_checker(text, gold, toks)

    out = tmp_path / "run.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        explore(_cfg(env, out, limit=4, checker=crashing))
    assert [r["id"] for r in _lines(out)] == [1, 2]
    with out.open("a") as f:  # killed in the middle of writing the next line
        f.write('{"id": 3, "messages": [{"role": "us')
    s = explore(_cfg(env, out, limit=4))
    assert s["resumed"] == 2 and s["examples"] == 2
    got = _lines(out)
    assert [_strip_timing(r) for r in got] == [_strip_timing(r) for r in reference]
    again = explore(_cfg(env, out, limit=4))
    assert again["resumed"] == 4 and again["examples"] == 0 and len(_lines(out)) == 4
    with pytest.raises(ValueError, match="tau"):
        explore(_cfg(env, out, limit=4, tau=0.3))


# ---------------------------------------------------------------------------------------------------- sharding


def test_shard_assignment_is_a_partition():
    for n in (1, 2, 3, 7):
        for j in range(50):
            assert sum(in_shard(j, (i, n)) for i in range(n)) == 1
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    names = {shard_output_path("o/out.jsonl", (i, 3)).name for i in range(3)}
    assert names == {"out.shard0-of-3.jsonl", "out.shard1-of-3.jsonl", "out.shard2-of-3.jsonl"}
    assert shard_output_path("o/out.jsonl", (0, 1)) == Path("o/out.jsonl")


def test_shards_cover_every_example_once(env, tmp_path):
    out = tmp_path / "out.jsonl"
    whole = explore(_cfg(env, tmp_path / "whole.jsonl", strategy="sample", positions="all"))
    ids, records = [], {}
    for i in range(3):
        s = explore(_cfg(env, out, strategy="sample", positions="all", shard=(i, 3)))
        assert Path(s["output"]).name == f"out.shard{i}-of-3.jsonl"
        for r in _lines(s["output"]):
            ids.append(r["id"])
            records[r["id"]] = _strip_timing(r)
    assert sorted(ids) == [1, 2, 3, 4, 5] == sorted(set(ids))  # 5 over 3 shards: 2, 2, 1
    assert whole["examples"] == 5
    assert {r["id"]: _strip_timing(r) for r in _lines(tmp_path / "whole.jsonl")} == records
    # their summaries add up to the whole's (llm2 explore-shards)
    from verifier_train.explore.shards import merge_shard_summaries

    merged = merge_shard_summaries(out, 3)
    for k in ("selected", "examples", "response_positions", "candidate_positions", "positions", "candidates",
              "negatives", "rollouts", "generated_tokens"):
        assert merged[k] == whole[k], k
    assert merged["negative_rate"] == pytest.approx(whole["negative_rate"]) and merged["finished"]
    assert merged["outputs"] == [str(tmp_path / f"out.shard{i}-of-3.jsonl") for i in range(3)]
    from click.testing import CliRunner

    from llm2_eval.cli import main

    res = CliRunner().invoke(main, ["explore-shards", str(out), "--shards", "3", "--write"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out.summary.json").read_text())["negatives"] == whole["negatives"]
    assert "--data " + str(tmp_path / "out.shard2-of-3.jsonl") in res.stderr
    (tmp_path / "out.shard1-of-3.summary.json").rename(tmp_path / "moved.json")  # a shard not run (or lost)
    with pytest.raises(FileNotFoundError, match=r"out.shard1-of-3.summary.json: no summary of --shard 1/3"):
        merge_shard_summaries(out, 3)
    # more shards than examples: the extra shards are empty, the union still covers every example once
    seen = []
    for i in range(7):
        s = explore(_cfg(env, tmp_path / "seven.jsonl", strategy="sample", positions="all", limit=2, shard=(i, 7)))
        seen += [r["id"] for r in _lines(s["output"])]
        assert s["selected"] == (1 if i < 2 else 0)
    assert seen == [1, 2] and merge_shard_summaries(tmp_path / "seven.jsonl", 7)["examples"] == 2
    sub = explore(_cfg(env, tmp_path / "sub.jsonl", strategy="sample", start=1, limit=3, shard=(1, 2)))
    assert [r["id"] for r in _lines(sub["output"])] == [2, 4]  # indices 1..3, odd ones


# ------------------------------------------------------------------------------------------------- sample strategy


@pytest.mark.parametrize("mode", ["base", "uniform", "contrast"])
def test_sample_strategy_modes(env, tmp_path, mode):
    kw = dict(strategy="sample", mode=mode, positions="all", num_samples=3, limit=2)
    if mode == "contrast":
        kw.update(contrast_model=env.contrast, gamma=0.5)
    s = explore(_cfg(env, tmp_path / "o.jsonl", **kw))
    recs = _lines(tmp_path / "o.jsonl")
    assert s["rollouts"] == 0 and s["negatives"] == sum(len(r["samples"]) for r in recs) > 0
    for rec in recs:
        ids = chat_token_ids(env.tok, rec["messages"])
        l1 = _logits(env.model, ids)
        l2 = _logits(env.contrast_model, ids)
        per_pos: dict = {}
        for t, g, v in rec["samples"]:
            assert ids[t] == g != v
            for logits in (l1, l2) if mode == "contrast" else (l1,):
                cid, cmask = plausible_candidates(logits[t - 1 : t], alpha=0.1, exclude=torch.tensor([g]))
                assert v in set(cid[0][cmask[0]].tolist())
            per_pos.setdefault(t, []).append(v)
        assert all(len(v) <= 3 for v in per_pos.values())  # duplicate draws are kept (tests/test_parity.py)
        assert rec["settings"]["mode"] == mode and "qualities" not in rec
    assert check_samples(ids, [tuple(x) for x in recs[-1]["samples"]], len(env.tok)) is None


def test_sample_scores_formulas():
    l1 = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    l2 = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    lp1, lp2 = torch.log_softmax(l1, -1), torch.log_softmax(l2, -1)
    assert torch.equal(sample_scores("uniform", l1, None, 1.0), torch.zeros(1, 4))
    torch.testing.assert_close(sample_scores("base", l1, None, 1.0), lp1)
    torch.testing.assert_close(sample_scores("contrast", l1, l2, 0.5), lp1 + 0.5 * (lp1 - lp2))
    # logits and log-probs give the same contrast distribution (softmax is shift-invariant per row)
    p = torch.softmax(sample_scores("contrast", l1, l2, 2.0), -1)
    torch.testing.assert_close(p, torch.softmax(l1 + 2.0 * (l1 - l2), -1))
    with pytest.raises(ValueError):
        sample_scores("contrast", l1, None, 1.0)


# ---------------------------------------------------------------------------------------------------- bad input


def _bad_file(env, path):
    long_q = " ".join(["how many apples does she have"] * 60)
    lines = [
        json.dumps({"question": QUESTIONS[0][0], "answer": QUESTIONS[0][1]}),
        '{"question": "broken',
        json.dumps({"question": "no answer field"}),
        json.dumps({"question": "q", "answer": "no final line"}),
        json.dumps({"question": long_q, "answer": "1 + 1 = 2.\n#### 2"}),
        "",
        json.dumps({"id": "q7", "question": QUESTIONS[1][0], "answer": QUESTIONS[1][1]}),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_fail_names_the_line(env, tmp_path):
    data = _bad_file(env, tmp_path / "bad.jsonl")
    with pytest.raises(ExploreInputError, match=r"bad\.jsonl:2: not valid JSON"):
        explore(_cfg(env, tmp_path / "o.jsonl", data=str(data), strategy="sample", max_context=200))
    res = CliRunner().invoke(explore_command, ["--model", env.llm, "--data", str(data), "--output",
                                              str(tmp_path / "c.jsonl"), "--strategy", "sample", "--no-progress"])
    assert res.exit_code != 0 and "bad.jsonl:2" in res.output


def test_bad_input_skip_counts_lines(env, tmp_path):
    data = _bad_file(env, tmp_path / "bad.jsonl")
    s = explore(_cfg(env, tmp_path / "o.jsonl", data=str(data), strategy="sample", max_context=200, on_error="skip"))
    assert s["skipped"] == 4 and s["examples"] == 2
    lines = {int(x[len(str(data)) + 1 :].split(":")[0]) for x in s["skipped_lines"]}
    assert lines == {2, 3, 4, 5}
    reasons = " ".join(s["skipped_lines"])
    for part in ("not valid JSON", "missing field 'answer'", "no parseable gold answer", "exceed the model context"):
        assert part in reasons
    assert [r["id"] for r in _lines(tmp_path / "o.jsonl")] == [1, "q7"]


# --------------------------------------------------------------------------------------------------- --gold self


def test_gold_self_keeps_first_correct_solution(env, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(env.llm).eval()
    # many end tokens, so that sampled solutions finish within the small budget
    model.generation_config.eos_token_id = sorted({env.tok.eos_token_id, *range(0, len(env.tok), 3)})
    calls = []

    def second_is_right(text, gold, toks):
        calls.append(text)
        return len(calls) == 2

    cfg = _cfg(env, tmp_path / "o.jsonl", gold="self", self_samples=6, self_max_tokens=12, limit=1,
               checker=second_is_right, positions="sample:1", rollouts=1, candidates=1)
    s = explore(cfg, engine=HFRolloutEngine(model))
    (rec,) = _lines(tmp_path / "o.jsonl")
    assert rec["messages"][1]["content"] == calls[1] and s["self_samples"] == 6 and s["self_gold_failed"] == 0
    s2 = explore(_cfg(env, tmp_path / "none.jsonl", gold="self", self_samples=3, self_max_tokens=12, limit=2,
                      checker=lambda *a: False), engine=HFRolloutEngine(model))
    assert s2["self_gold_failed"] == 2 and s2["self_gold_failed_ids"] == [1, 2] and s2["examples"] == 0
    assert not (tmp_path / "none.jsonl").read_text()


@pytest.mark.parametrize("label", ["absolute", "relative", "significant"])
def test_gold_self_batches_questions_with_the_same_records(env, tmp_path, label):
    """--self-batch N samples N questions' solutions in one rollouts_many call (one vLLM batch), then sends the
    rollouts of all N solutions together, one call per phase (relative, significant: q(gold), then the candidates); the records
    are those of one question at a time (same seeds), and a bad line inside a batch, with on_error fail, is raised
    only after the lines before it are written."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(env.llm).eval()
    model.generation_config.eos_token_id = sorted({env.tok.eos_token_id, *range(0, len(env.tok), 3)})

    class Spy(HFRolloutEngine):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.calls = []

        def rollouts_many(self, items, params):
            self.calls.append(len(items))
            return super().rollouts_many(items, params)

    def even(text, gold, toks):  # a deterministic judge that accepts some samples and rejects others
        return len(toks) % 2 == 0

    kw = dict(gold="self", self_samples=3, self_max_tokens=12, limit=3, checker=even, positions="sample:2",
              rollouts=2, candidates=2, label=label, min_gold_quality=0.0)
    if label == "significant":  # at 2 rollouts only p 1/6 (0/2 vs 2/2) or 1/2 (a one-rollout difference) are possible
        kw["significance"] = 0.5
    one, many = Spy(model), Spy(model)
    s1 = explore(_cfg(env, tmp_path / "one.jsonl", self_batch=1, **kw), engine=one)
    s3 = explore(_cfg(env, tmp_path / "many.jsonl", self_batch=3, **kw), engine=many)
    assert [_strip_timing(r) for r in _lines(tmp_path / "one.jsonl")] == [
        _strip_timing(r) for r in _lines(tmp_path / "many.jsonl")]
    assert s1["self_gold_failed_ids"] == s3["self_gold_failed_ids"] and s1["examples"] == s3["examples"] >= 1
    assert many.calls[0] == 3 and one.calls[:3] == [1, 1, 1]
    phases = 1 if label == "absolute" else 2
    assert s3["rollouts"] == s1["rollouts"] > s1["self_samples"]
    assert s3["examples"] >= 2
    # a candidate phase only for the solutions with candidates left to roll out (significant: a position where no
    # outcome could pass is not rolled out, so some solutions have none)
    rolled = s3["examples"] if phases == 1 else sum(
        any(q["rollouts"] for q in r["qualities"]) for r in _lines(tmp_path / "many.jsonl"))
    assert rolled >= 1 and (label == "significant" or rolled == s3["examples"])
    assert many.calls == [3, s3["examples"]] + [rolled] * (phases - 1)  # every solution's rollouts: one call a phase
    # one question at a time: a call per solution and phase
    assert one.calls == [1] * (3 + s1["examples"] + rolled * (phases - 1))

    good = Path(env.data).read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good[0] + "\n{not json\n" + good[1] + "\n")
    always = dict(kw, checker=lambda *a: True, data=str(bad))
    with pytest.raises(ExploreInputError, match=r"bad\.jsonl:2: not valid JSON"):
        explore(_cfg(env, tmp_path / "b.jsonl", self_batch=3, **always), engine=Spy(model))
    assert [r["id"] for r in _lines(tmp_path / "b.jsonl")] == [1]


# ----------------------------------------------------------------------------------------------- CLI and helpers


def test_cli_vllm_missing(env, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    res = CliRunner().invoke(explore_command, ["--model", env.llm, "--data", env.data, "--output",
                                              str(tmp_path / "o.jsonl"), "--backend", "vllm", "--no-progress"])
    assert res.exit_code != 0 and "pip install llm2-eval[vllm]" in res.output


def test_cli_runs_and_prints_summary(env, tmp_path):
    res = CliRunner().invoke(explore_command, [
        "--model", env.llm, "--data", env.data, "--output", str(tmp_path / "o.jsonl"), "--limit", "1",
        "--positions", "stride:4", "--rollouts", "1", "--candidates", "1", "--max-rollout-tokens", "2",
        "--no-progress", "--shard", "0/1",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.splitlines()[0])
    assert summary["examples"] == 1 and summary["rollouts"] == summary["candidates"]


def test_cli_label_significant(env, tmp_path):
    out = tmp_path / "sig.jsonl"
    res = CliRunner().invoke(explore_command, [
        "--model", env.llm, "--data", env.data, "--output", str(out), "--limit", "1", "--positions", "stride:6",
        "--rollouts", "2", "--candidates", "1", "--max-rollout-tokens", "2", "--label", "significant",
        "--significance", "0.2", "--min-gold-quality", "0", "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    (rec,) = _lines(out)
    assert rec["settings"]["label"] == "significant" and rec["settings"]["significance"] == 0.2
    assert rec["gold_qualities"] and all("p_worse" in q for q in rec["qualities"])
    bad = CliRunner().invoke(explore_command, ["--model", env.llm, "--data", env.data, "--output",
                                               str(tmp_path / "b.jsonl"), "--label", "significant",
                                               "--significance", "0"])
    assert bad.exit_code != 0 and "significance" in bad.output


def test_positions_and_helpers():
    assert parse_positions("all") == ("all", 0.0)
    assert parse_positions("stride:4") == ("stride", 4.0)
    assert parse_positions("sample:0.25") == ("sample", 0.25)
    for bad in ("some", "stride:0", "stride:1.5", "sample:0", "sample:2.5"):
        with pytest.raises(ValueError):
            parse_positions(bad)
    pos = list(range(10, 30))
    assert select_positions("all", pos, 0) == pos
    assert select_positions("stride:5", pos, 0) == [10, 15, 20, 25]
    a = select_positions("sample:4", pos, 7)
    assert len(a) == 4 and a == sorted(a) and set(a) <= set(pos) and a == select_positions("sample:4", pos, 7)
    assert len(select_positions("sample:0.25", pos, 1)) == 5 and len(select_positions("sample:0.01", pos, 1)) == 1
    assert select_positions("sample:50", pos, 1) == pos
    assert gsm8k_solution_text("a = <<1+1=2>>2 b.\nc 1,000.\n#### 1,000") == "a = 2 b.\nc 1,000.\nThe answer is 1000."
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 1, 3)
    assert rollout_seed(0, "a", 5, 7, 1) != rollout_seed(0, "a", 5, 7, 2)
    with pytest.raises(ValueError):
        ExploreConfig(model="m", data="d", output="o", strategy="sample", mode="contrast")
    with pytest.raises(ValueError):
        ExploreConfig(model="m", data="d", output="o", positions="every:3")
    assert ExploreConfig(model="m", data="d", output="o").resolved_temperature == 0.7
    assert ExploreConfig(model="m", data="d", output="o", strategy="sample").resolved_temperature == 1.0


def test_math_format_and_end_of_turn_position(env, tmp_path):
    from verifier_train.explore import default_checker

    data = tmp_path / "math.jsonl"
    solution = "We add 3 and 4 to get 7, so the answer is $\\boxed{7}$."
    data.write_text(json.dumps({"problem": "how many apples are 3 and 4 apples?", "solution": solution}) + "\n")
    s = explore(_cfg(env, tmp_path / "o.jsonl", data=str(data), strategy="sample", positions="all", include_eot=True))
    (rec,) = _lines(tmp_path / "o.jsonl")
    assert rec["messages"][1]["content"] == solution and rec["gold_answer"] == "7" and s["examples"] == 1
    ids = chat_token_ids(env.tok, rec["messages"])
    end = ids.index(env.tok.eos_token_id, rec["response_start"])
    assert rec["response_positions"] == end - rec["response_start"] + 1  # the end-of-turn token included
    check = default_checker("math")
    assert check("so it is \\boxed{\\frac12}", "\\frac{1}{2}", []) and not check("\\boxed{3}", "7", [])
    assert default_checker("gsm8k")("The answer is 1,008.", "1008", [])


def test_exclude_dev_leaves_out_the_dev_slice(env, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("LLM2_DATA_DIR", str(data_dir))
    train = [json.loads(x) for x in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines() if x.strip()]
    dev_rows = [{"question": "  " + r["question"], "answer": "1 + 1 = 2\n#### 2"} for r in train[-3:]]
    mine = [{"question": q, "answer": a} for q, a in QUESTIONS[:2]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [dev_rows[0], *mine, *dev_rows[1:]]))
    out = tmp_path / "o.jsonl"
    s = explore(_cfg(env, out, data=str(data), strategy="sample", exclude_dev=True))
    assert s["excluded_dev"] == 3 and s["examples"] == 2
    assert [r["line"] for r in _lines(out)] == [2, 3]
    monkeypatch.delenv("LLM2_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="LLM2_DATA_DIR"):
        explore(_cfg(env, tmp_path / "o2.jsonl", data=str(data), strategy="sample", exclude_dev=True))


def test_prompt_task_uses_the_lm_eval_tasks_user_message(env, tmp_path):
    from llm2_eval.prompts import GSM8K_INSTRUCTION

    out = tmp_path / "o.jsonl"
    explore(_cfg(env, out, limit=2, strategy="sample", prompt="task"))
    recs = _lines(out)
    for rec, (q, _) in zip(recs, QUESTIONS):
        assert rec["messages"][0]["content"] == q.strip() + "\n\n" + GSM8K_INSTRUCTION
    assert recs[0]["settings"]["prompt"] == "task"
    spec = __import__("importlib.util").util.spec_from_file_location(
        "task_utils", Path(__file__).resolve().parents[1] / "tasks" / "utils.py")
    utils = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.gsm8k_prompt({"question": QUESTIONS[0][0]}) == recs[0]["messages"][0]["content"]


@pytest.mark.skipif(__import__("llm2_eval.cpu_kernels", fromlist=["x"]).prepack_supported(torch.float32) is not None,
                    reason="this torch build has no oneDNN linear ops")
def test_cpu_prepack_gives_the_same_records(env, controlled, tmp_path):
    """``--cpu-prepack`` (llm2_eval.cpu_kernels) changes only the kernels: the controlled case's records again."""
    cfg = _cfg(env, tmp_path / "out.jsonl", positions="sample:3", candidates=3, rollouts=3, limit=2,
               gold_rollouts=True, cpu_prepack=True)
    explore(cfg)
    assert [_strip_timing(r) for r in _lines(cfg.output)] == [_strip_timing(r) for r in controlled.records]
    with pytest.raises(ValueError, match="cpu_prepack: for the hf backend only"):
        ExploreConfig(model="m", data="d", output="o", backend="vllm", cpu_prepack=True)
