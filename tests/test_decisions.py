"""``llm2 decisions build|score`` (verifier_train/decisions): the decision benchmark and its scoring.

A scripted engine makes a world where the value of every candidate is known: the greedy solution is four tokens;
at each of them the LLM's own token and one alternative are plausible, and a response is right exactly when the
token chosen at the decision point is in GOOD. The own token is good at two positions, the alternative at the
other two, so the oracle gain is +0.5, a verifier that knows GOOD gains +0.5 at a large beta and a reversed one
loses 0.5. A tiny real model then runs the whole command line (hf backend).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiny_models import build_tokenizer

from llm2_eval.cli import main as llm2_cli
from verifier_train.decisions import BuildConfig, DecisionsError, build_decisions
from verifier_train.decisions.build import sample_points
from verifier_train.decisions.score import (Benchmark, evaluate, held_out_beta_gain, load_benchmark,
                                           split_half_oracle, verifier_scores_on)
from verifier_train.explore.significance import fisher_two_sided
from verifier_train.rollouts import EngineStats, Rollout, RolloutEngine


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture()
def data(tmp_path):
    rows = [{"question": f"How many apples {i}?", "answer": f"so 12 apples\n#### {i}"} for i in range(10)]
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


class Scripted(RolloutEngine):
    """Greedy solution OWN + EOS; logits put OWN[k] first and ALT[k] second at response position k."""

    def __init__(self, tok):
        ids = [i for i in range(10, len(tok)) if i not in tok.all_special_ids]
        self.own, self.alt = ids[:4], ids[4:8]
        self.good = {self.own[0], self.own[2], self.alt[1], self.alt[3]}
        self.eos = tok.eos_token_id
        self.vocab_size, self.max_context, self.eos_token_ids = len(tok), 4096, (self.eos,)
        self.stats = EngineStats()
        self.calls = []

    def score_many(self, items):
        out = []
        for ids, positions in items:
            start = len(ids) - len(self.own) - 1
            rows = torch.full((len(positions), self.vocab_size), -20.0)
            for r, t in enumerate(positions):
                k = t - start
                if k < len(self.own):
                    rows[r, self.own[k]], rows[r, self.alt[k]] = 2.0, 1.5
                else:
                    rows[r, self.eos] = 2.0
            out.append(rows)
        return out

    def rollouts_many(self, items, params):
        self.calls.append(sum(len(r.seeds) for _, reqs in items for r in reqs))
        res = []
        for _, reqs in items:
            group = []
            for r in reqs:
                toks = [self.eos] if r.continuation else self.own + [self.eos]
                group.append([Rollout(tokens=list(toks), finish_reason="eos") for _ in r.seeds])
                self.stats.rollouts += len(r.seeds)
            res.append(group)
        return res


def _check(engine):
    # right iff the last response token (the candidate: rollouts add nothing but EOS) is good
    return lambda text, gold, toks: bool(toks) and toks[-1] in engine.good


def _build(tok, data, out, engine, **kw):
    cfg = BuildConfig(model="scripted", data=str(data), output=str(out), questions=kw.pop("questions", 3),
                      points=kw.pop("points", 12), rollouts=4, dev_size=5, backend="hf", **kw)
    return build_decisions(cfg, engine=engine, tokenizer=tok, check=_check(engine))


def test_build_writes_every_candidate_value(tok, data, tmp_path):
    eng = Scripted(tok)
    summary = _build(tok, data, tmp_path / "b.jsonl", eng)
    assert summary["questions"] == 3 and summary["decision_positions"] == 12 and summary["points"] == 12
    bench = load_benchmark(tmp_path / "b.jsonl")
    assert bench.settings["questions"] == 3 and "points" not in bench.settings
    for q in bench.questions.values():
        assert q["greedy_correct"] is False  # the solution ends on own[3], a bad token
        assert [p[0] for p in q["positions"]] == list(range(q["response_start"], q["response_start"] + 4))
    for p in bench.points:
        assert len(p["candidates"]) == 2
        for c in p["candidates"]:
            right = c["token"] in eng.good
            assert (c["correct"], c["rollouts"], c["greedy_correct"]) == (4 if right else 0, 4, right)
    first, second = bench.points[0]["candidates"]
    assert first["logprob"] - second["logprob"] == pytest.approx(0.5, abs=1e-4)  # most probable first


def test_build_resumes_and_extends_the_same_sample(tok, data, tmp_path):
    out = tmp_path / "b.jsonl"
    eng = Scripted(tok)
    _build(tok, data, out, eng, points=5)
    first = [json.loads(line)["id"] for line in out.read_text().splitlines() if '"point"' in line]
    again = Scripted(tok)
    _build(tok, data, out, again, points=5)
    assert again.calls == []  # nothing left to do: no greedy solution, no rollout
    more = Scripted(tok)
    _build(tok, data, out, more, points=9)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines() if '"point"' in line]
    assert ids[:5] == first and len(ids) == len(set(ids)) == 9
    qs = list(load_benchmark(out).questions.values())
    assert set(map(tuple, sample_points(qs, 5, 0))) < set(map(tuple, sample_points(qs, 9, 0)))


def test_build_refuses_other_settings_and_foreign_files(tok, data, tmp_path):
    out = tmp_path / "b.jsonl"
    _build(tok, data, out, Scripted(tok), points=2)
    before = out.read_bytes()
    with pytest.raises(DecisionsError, match="other settings.*rollouts"):
        cfg = BuildConfig(model="scripted", data=str(data), output=str(out), questions=3, points=2, rollouts=8,
                          dev_size=5)
        build_decisions(cfg, engine=Scripted(tok), tokenizer=tok)
    assert out.read_bytes() == before
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"my": "notes"}\n')
    with pytest.raises(DecisionsError, match="not a decision benchmark"):
        _build(tok, data, notes, Scripted(tok))
    assert notes.read_text() == '{"my": "notes"}\n'
    with pytest.raises(DecisionsError, match="wide-alpha"):
        BuildConfig(model="m", data="d", output="o", alpha=0.1, wide_alpha=0.5)


def test_scores_oracle_and_reversed_verifiers(tok, data, tmp_path):
    eng = Scripted(tok)
    _build(tok, data, tmp_path / "b.jsonl", eng, questions=4, points=16)
    bench = load_benchmark(tmp_path / "b.jsonl")

    def scores(sign):
        return {p["id"]: [sign * float(c["token"] in eng.good) for c in p["candidates"]] for p in bench.points}

    llm = evaluate(bench, None, [])
    assert llm["all"]["oracle"]["mean"] == pytest.approx(0.5)
    assert llm["all"]["oracle_split"]["mean"] == pytest.approx(0.5)  # values without noise: any half knows them
    assert llm["points_that_matter"] == 16  # 4 vs 0 of 4 rollouts: two-sided Fisher p = 0.029
    good = evaluate(bench, scores(1.0), [0.1, 10.0])
    assert good["all"]["betas"]["0.1"]["gain"]["mean"] == 0  # beta too small to flip a 0.5 logit gap
    assert good["all"]["betas"]["10.0"]["gain"]["mean"] == pytest.approx(0.5)
    assert good["all"]["betas"]["10.0"]["greedy_gain"]["mean"] == pytest.approx(0.5)
    assert good["all"]["betas"]["10.0"]["changed"] == pytest.approx(0.5)
    assert good["all"]["best_beta"] == "10.0"
    lo, hi = good["all"]["betas"]["10.0"]["gain"]["ci95"]
    assert lo <= 0.5 <= hi
    assert good["all"]["held_out_beta"]["gain"]["mean"] == pytest.approx(0.5)  # every question agrees on 10
    assert good["all"]["held_out_beta"]["chosen"] == {"0.1": 0, "10.0": 4}
    bad = evaluate(bench, scores(-1.0), [10.0])
    assert bad["all"]["betas"]["10.0"]["gain"]["mean"] == pytest.approx(-0.5)


def test_held_out_beta_is_chosen_without_the_question_it_scores():
    # over all points "b" is best (mean 2/3 vs 1/3), but only because of question z: chosen on the other questions,
    # x and y get "b" (gain 0 there) and z gets "a" (gain -1 there).
    per_beta = {"a": {"x": [1.0], "y": [1.0], "z": [-1.0]}, "b": {"x": [0.0], "y": [0.0], "z": [2.0]}}
    r = held_out_beta_gain(per_beta)
    assert r["chosen"] == {"a": 1, "b": 2}  # leaving x out: a 0/2 vs b 2/2 -> b; same for y; leaving z out -> a
    assert r["gain"]["mean"] == pytest.approx(-1 / 3, abs=1e-4)  # below both betas' own means (1/3, 2/3)
    assert r["gain"]["points"] == 3 and r["gain"]["questions"] == 3
    # a question without points is skipped, and a grid tie goes to the earlier beta
    tie = held_out_beta_gain({"a": {"x": [0.5], "w": []}, "b": {"x": [0.5], "w": []}})
    assert tie["chosen"] == {"a": 1, "b": 0} and tie["gain"]["points"] == 1


def test_split_half_oracle_removes_the_noise_the_oracle_selects_on():
    # every candidate has the same true value 0.5, so the true oracle gains nothing; with 16 sampled rollouts each,
    # the best measured value beats the LLM's token by chance (the plain oracle's bias), the split-half one does not.
    rng = np.random.default_rng(0)
    bench = Benchmark("synthetic", {"alpha": 0.1})
    for k in range(4000):
        qid = f"q{k // 4}"
        bench.questions.setdefault(qid, {"id": qid})
        cands = [{"token": t, "logprob": -0.1 * t, "correct": int(rng.binomial(16, 0.5)), "rollouts": 16,
                  "greedy_correct": False} for t in range(3)]
        bench.points.append({"id": f"p{k}", "question": qid, "candidates": cands})
    llm = evaluate(bench, None, [])
    assert llm["all"]["oracle"]["mean"] > 0.09  # E[max of 3 draws] - E[one draw] is ~0.1 at 16 rollouts (SE 0.002)
    assert abs(llm["all"]["oracle_split"]["mean"]) < 0.01  # SE ~0.002
    assert "oracle_split" not in llm["matter"]  # those points are chosen with the same rollouts: not unbiased there
    assert split_half_oracle(bench.points[:3], 0.1, seed=3) == split_half_oracle(bench.points[:3], 0.1, seed=3)


def test_split_half_oracle_keeps_sure_gains_with_odd_and_mixed_rollout_counts():
    def point(pid, *cands):
        return {"id": pid, "question": "q", "candidates": [
            {"token": t, "logprob": lp, "correct": c, "rollouts": n} for t, (lp, c, n) in enumerate(cands)]}

    sure_odd = point("odd", (0.0, 0, 5), (-1.0, 5, 5))  # halves of 2 and 3: the other token is always better
    mixed = point("mixed", (0.0, 0, 16), (-1.0, 7, 7), (-9.0, 16, 16))  # the third is not plausible at alpha 0.1
    own_best = point("own", (0.0, 3, 3), (-1.0, 0, 16))
    short = point("short", (0.0, 4, 8), (-1.0, 8, 8), (-2.0, 0, 1))  # a plausible candidate with 1 rollout
    out = split_half_oracle([sure_odd, mixed, own_best, short], 0.1, splits=7)
    assert out["odd"] == 1.0 and out["mixed"] == 1.0 and out["own"] == 0.0
    assert out["short"] == 0.0  # no split of 1 rollout: the point reads 0 (never a gain it cannot show)


def test_pairwise_accuracy_counts_only_significant_pairs(tok, data, tmp_path):
    eng = Scripted(tok)
    cfg = dict(questions=2, points=8)
    _build(tok, data, tmp_path / "b.jsonl", eng, **cfg)
    bench = load_benchmark(tmp_path / "b.jsonl")
    # 4 of 4 vs 0 of 4 is significant (two-sided Fisher p = 0.029)
    assert fisher_two_sided(4, 4, 0, 4) < 0.05 <= fisher_two_sided(4, 4, 1, 4)
    know = {p["id"]: [float(c["token"] in eng.good) for c in p["candidates"]] for p in bench.points}
    r = evaluate(bench, know, [1.0])
    assert r["points_that_matter"] == 8 and r["all"]["pairs"]["accuracy"] == 1.0 and r["all"]["pairs"]["pairs"] == 8
    flat = {k: [0.0 for _ in v] for k, v in know.items()}
    assert evaluate(bench, flat, [1.0])["all"]["pairs"]["accuracy"] == 0.5  # ties count one half


def test_verifier_scores_equal_one_sequence_per_candidate(tiny_llm, tiny_verifier, tmp_path):
    """The packed scoring of a question's candidates equals scoring each prefix + candidate on its own (fp32)."""
    from transformers import AutoTokenizer

    from llm2_eval.verifier import load_verifier
    from verifier_train.rollouts import HFRolloutEngine
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    rows = [{"question": f"how many eggs {i}", "answer": f"12 eggs\n#### {i}"} for i in range(6)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    cfg = BuildConfig(model=str(tiny_llm), data=str(data), output=str(tmp_path / "b.jsonl"), questions=2, points=6,
                      rollouts=2, dev_size=3, max_rollout_tokens=12, alpha=0.5, wide_alpha=0.2, backend="hf")
    build_decisions(cfg, engine=HFRolloutEngine(llm), tokenizer=tok)
    bench = load_benchmark(cfg.output)
    ver = load_verifier(tiny_verifier, dtype=torch.float32)
    got = verifier_scores_on(bench, ver, batch=2)
    for p in bench.points:
        ids = bench.questions[p["question"]]["token_ids"][: p["pos"]]
        for c, s in zip(p["candidates"], got[p["id"]]):
            with torch.no_grad():
                ref = ver(input_ids=torch.tensor([ids + [c["token"]]])).logits[0, -1, 0].item()
            assert math.isclose(s, ref, rel_tol=1e-4, abs_tol=1e-4)
    # a head verifier's scores equal its head applied to the hidden states computed once for all heads
    from llm2_eval.head_verifier import HeadVerifier, ScoreHead
    from verifier_train.decisions.score import candidate_hidden_states

    head = ScoreHead(llm.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight)
    hs = candidate_hidden_states(bench, llm, batch=1)
    direct = verifier_scores_on(bench, HeadVerifier(llm, head), batch=2)
    for pid, h in hs.items():
        assert torch.allclose(head(h).squeeze(-1), torch.tensor(direct[pid]), atol=1e-4)


def test_command_line_builds_and_scores(tiny_llm, tiny_verifier, tmp_path):
    rows = [{"question": f"how many eggs {i}", "answer": f"12 eggs\n#### {i}"} for i in range(6)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bench.jsonl"
    r = CliRunner().invoke(llm2_cli, ["decisions", "build", "--model", str(tiny_llm), "--data", str(data),
                                      "--output", str(out), "--questions", "2", "--points", "4", "--rollouts", "2",
                                      "--dev-size", "3", "--max-rollout-tokens", "10", "--alpha", "0.5",
                                      "--wide-alpha", "0.2", "--backend", "hf", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["points"] >= 1
    rep = tmp_path / "rep.json"
    r = CliRunner().invoke(llm2_cli, ["decisions", "score", "--benchmark", str(out), "--verifier", str(tiny_verifier),
                                      "--betas", "0.5,2", "--output", str(rep)])
    assert r.exit_code == 0, r.output
    assert "oracle gain" in r.output and "beta   2.0" in r.output
    assert set(json.loads(rep.read_text())["verifiers"][str(tiny_verifier)]["all"]["betas"]) == {"0.5", "2.0"}
    r = CliRunner().invoke(llm2_cli, ["decisions", "score", "--benchmark", str(data)])
    assert r.exit_code != 0 and "not a decision benchmark" in r.output
