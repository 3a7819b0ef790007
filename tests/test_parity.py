"""Parity options with the authors' released data builder and trainer (issue 11, "parity options").

- one candidate rule (alpha set AND top-k set) for decoding and exploration;
- ``--strategy sample``: duplicate draws kept (``--keep-duplicates``, default), end-of-turn ids never negatives,
  ``--mode expert``, a second model restricting every mode to tokens plausible under both;
- ``llm2 train-verifier --loss-normalization pairs|official``.

CPU only, tiny random models (tests/tiny_models.py); every exploration is two short examples without rollouts.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from tiny_models import build_tiny_llm

from llm2_eval.candidates import plausible_candidates, resolve_alpha
from verifier_train.explore import ExploreConfig, candidate_mask, derive_seed, explore, explore_command, sample_scores
from verifier_train.records import chat_token_ids
from verifier_train.rollouts import HFRolloutEngine

QUESTIONS = [
    ("she has 3 apples and buys 4 more. how many apples?", "3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("he had 12 eggs and sells 5. how many eggs are left?", "12 - 5 = <<12-5=7>>7 eggs are left.\n#### 7"),
]



def never_correct(text, gold, tokens):
    """Stub answer checker: no response reaches the answer."""
    return False


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("parity")
    llm = build_tiny_llm(root / "llm", seed=5)
    tok = AutoTokenizer.from_pretrained(llm)
    second = build_tiny_llm(root / "second", seed=6, tokenizer=tok)
    data = root / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    model = AutoModelForCausalLM.from_pretrained(llm).eval()
    return SimpleNamespace(
        root=root, llm=str(llm), second=str(second), data=str(data), tok=tok, model=model,
        engine=HFRolloutEngine(model),
        second_engine=HFRolloutEngine(AutoModelForCausalLM.from_pretrained(second).eval()),
        eos=sorted({tok.eos_token_id, model.generation_config.eos_token_id} - {None}),
    )


def _cfg(env, out, **kw):
    base = dict(model=env.llm, data=env.data, output=str(out), strategy="sample", positions="all", limit=2,
                max_rollout_tokens=3, progress=False, checker=never_correct)
    base.update(kw)
    return ExploreConfig(**base)


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _by_pos(samples):
    out: dict[int, list[int]] = {}
    for t, _, v in samples:
        out.setdefault(t, []).append(v)
    return out


def _masks(env, rec, with_second: bool):
    """The dense candidate mask of each explored position, rebuilt from the models: ``(ids, positions, mask, l1, l2)``."""
    ids = chat_token_ids(env.tok, rec["messages"])
    pos = rec["positions"]
    vocab = len(env.tok)
    l1 = env.engine.score(ids, pos)[:, :vocab].float()
    gold = torch.tensor([ids[t] for t in pos])
    mask = candidate_mask(l1, gold, None, 0)
    mask[:, env.eos] = False
    l2 = None
    if with_second:
        l2 = env.second_engine.score(ids, pos)[:, :vocab].float()
        mask &= candidate_mask(l2, gold, None, 0)
    return ids, pos, mask, l1, l2


# ------------------------------------------------------------------------------------------------ candidate rule


def test_candidate_rule_is_the_intersection_of_alpha_and_top_k():
    """``alpha`` and ``top_k`` together: the tokens that pass both (the authors' data builder), not top-k alone."""
    logits = torch.tensor([
        [9.0, 0.0, -1.0, -2.0, -3.0, -4.0],  # peaked: the alpha set (one token) is smaller than the top 3
        [1.0, 0.99, 0.98, 0.97, 0.96, 0.95],  # flat: the top 3 are smaller than the alpha set (all 6)
    ])
    ids, mask = plausible_candidates(logits, alpha=0.1, top_k=3)
    assert [ids[r][mask[r]].tolist() for r in range(2)] == [[0], [0, 1, 2]]
    # each filter alone, as before
    ids, mask = plausible_candidates(logits, top_k=3)
    assert mask.all() and ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    ids, mask = plausible_candidates(logits)
    assert mask.sum(-1).tolist() == [1, 6]
    assert resolve_alpha(None, 0) == 0.1 and resolve_alpha(None, 5) is None and resolve_alpha(0.3, 5) == 0.3
    # exploration's candidate mask is the same set (minus the gold token)
    dense = candidate_mask(logits, torch.tensor([0, 2]), 0.1, 3)
    assert [dense[r].nonzero().flatten().tolist() for r in range(2)] == [[], [0, 1]]
    s = ExploreConfig(model="m", data="d", output="o", top_k=3).settings()
    assert s["alpha"] is None and ExploreConfig(model="m", data="d", output="o").settings()["alpha"] == 0.1


def test_decoding_applies_alpha_and_top_k_together(tiny_llm, tiny_verifier):
    """A top-k wider than every alpha set changes nothing; before, top-k replaced alpha (every step had k
    candidates)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm2_eval.decoding import DecodeConfig, generate
    from llm2_eval.verifier import load_verifier

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    ver = load_verifier(tiny_verifier, dtype=torch.float32)
    enc = tok(["how many apples has she", "the total of eggs is"], return_tensors="pt", padding=True)
    runs = {}
    for name, kw in {"alpha": dict(alpha=0.3), "both": dict(alpha=0.3, top_k=len(tok)), "k": dict(top_k=2)}.items():
        cfg = DecodeConfig(beta=4.0, max_new_tokens=6, **kw)
        runs[name] = generate(llm, enc.input_ids, enc.attention_mask, cfg, verifier=ver, tokenizer=tok)
    assert runs["both"].tokens == runs["alpha"].tokens
    assert [s.candidates for s in runs["both"].stats] == [s.candidates for s in runs["alpha"].stats]
    assert all(s.candidates < s.steps * len(tok) for s in runs["both"].stats)
    assert all(s.candidates == 2 * s.steps for s in runs["k"].stats)  # top_k alone: pure top-k, as before


# ------------------------------------------------------------------------------------------- sample: duplicates


def test_sample_keeps_duplicate_draws_like_the_released_data(env, tmp_path, data_dir):
    """Default: every in-set draw is a pair (a token drawn twice is two pairs), as in the authors' released record
    (num_samples 2: exactly two pairs at every position, some of them twice the same); --no-keep-duplicates
    writes the same draws once each."""
    (released,) = _lines(data_dir / "llm2_release" / "readme_example.jsonl")
    per_pos = Counter(t for t, _, _ in released["samples"])
    assert set(per_pos.values()) == {2} and len(set(map(tuple, released["samples"]))) < len(released["samples"])

    kept = explore(_cfg(env, tmp_path / "kept.jsonl", num_samples=6))
    once = explore(_cfg(env, tmp_path / "once.jsonl", num_samples=6, keep_duplicates=False))
    dups = 0
    for a, b in zip(_lines(tmp_path / "kept.jsonl"), _lines(tmp_path / "once.jsonl")):
        assert a["settings"]["keep_duplicates"] is True and b["settings"]["keep_duplicates"] is False
        ka, kb = _by_pos(a["samples"]), _by_pos(b["samples"])
        assert set(ka) == set(kb) == {d["pos"] for d in a["draws"]}
        for t, tokens in ka.items():
            assert len(tokens) == 6  # every draw written
            assert kb[t] == list(dict.fromkeys(tokens))  # the same draws, each once, in draw order
            dups += len(tokens) - len(set(tokens))
    assert dups > 0 and kept["negatives"] > once["negatives"]


# ------------------------------------------------------------------------------------------ sample: end of turn


class _EosFavoured(HFRolloutEngine):
    """The tiny LLM with the end-of-turn logits raised above every other token at every scored position."""

    def __init__(self, model, eos):
        super().__init__(model)
        self.eos = list(eos)

    def score(self, token_ids, positions):
        out = super().score(token_ids, positions).clone()
        out[:, self.eos] = out.max(dim=-1, keepdim=True).values + 1.0
        return out


def test_end_of_turn_is_never_a_sampled_negative(env, tmp_path):
    """With end-of-turn the most probable token everywhere, the sample strategy never writes it as a negative and
    leaves it out of every candidate set; rollouts keep it as a candidate, judged by the response it ends."""
    engine = _EosFavoured(env.model, env.eos)
    explore(_cfg(env, tmp_path / "s.jsonl", mode="uniform", num_samples=16), engine=engine)
    recs = _lines(tmp_path / "s.jsonl")
    assert recs and all(v not in env.eos for r in recs for _, _, v in r["samples"])
    for rec in recs:
        ids = chat_token_ids(env.tok, rec["messages"])
        logits = engine.score(ids, rec["positions"])[:, : len(env.tok)]
        full = candidate_mask(logits, torch.tensor([ids[t] for t in rec["positions"]]), None, 0)
        assert full[:, env.eos].any(-1).all()  # end-of-turn was plausible at every position
        sizes = {d["pos"]: d["set_size"] for d in rec["draws"]}
        for i, t in enumerate(rec["positions"]):
            if t in sizes:
                assert sizes[t] == int(full[i].sum()) - int(full[i, env.eos].sum())

    out = tmp_path / "r.jsonl"
    explore(_cfg(env, out, strategy="rollout", positions="sample:3", candidates=4, rollouts=2), engine=engine)
    ends = [q for r in _lines(out) for q in r["qualities"] if q["token"] in env.eos]
    assert ends and all(q["rollouts"] == 0 and q["negative"] for q in ends)  # the truncated response misses


# ---------------------------------------------------------------------------------------- sample: second model


def test_second_model_restricts_base_and_uniform_to_tokens_plausible_under_both(env, tmp_path):
    for mode in ("base", "uniform"):
        alone = tmp_path / f"{mode}_alone.jsonl"
        both = tmp_path / f"{mode}_both.jsonl"
        explore(_cfg(env, alone, mode=mode, num_samples=4))
        explore(_cfg(env, both, mode=mode, num_samples=4, contrast_model=env.second))
        smaller = 0
        for ra, rb in zip(_lines(alone), _lines(both)):
            assert rb["settings"]["contrast_model"] == env.second and "contrast_model" not in ra["settings"]
            _, pos, mask, _, _ = _masks(env, rb, with_second=True)
            _, _, mask1, _, _ = _masks(env, ra, with_second=False)
            for t, _, v in rb["samples"]:
                assert bool(mask[pos.index(t), v])
            sizes_a = {d["pos"]: d["set_size"] for d in ra["draws"]}
            for d in ra["draws"]:
                assert d["set_size"] == int(mask1[pos.index(d["pos"])].sum())  # the LLM's set alone
            for d in rb["draws"]:
                assert d["set_size"] == int(mask[pos.index(d["pos"])].sum())  # the shared set
                smaller += d["set_size"] < sizes_a[d["pos"]]
        assert smaller > 0  # the second model did remove candidates


def test_expert_mode_samples_from_the_second_model(env, tmp_path):
    """Every draw reproduced from softmax(log p_2) over the shared plausible set with the run's seeds; the LLM's
    own distribution would have drawn differently."""
    l1r, l2r = torch.randn(3, 20), torch.randn(3, 20)
    torch.testing.assert_close(sample_scores("expert", l1r, l2r, 0.5), torch.log_softmax(l2r, -1))
    with pytest.raises(ValueError, match="second model"):
        sample_scores("expert", l1r, None, 1.0)
    with pytest.raises(ValueError, match="second model"):
        ExploreConfig(model="m", data="d", output="o", strategy="sample", mode="expert")
    with pytest.raises(ValueError, match="only --strategy sample"):
        ExploreConfig(model="m", data="d", output="o", contrast_model="x")

    out = tmp_path / "expert.jsonl"
    cfg = _cfg(env, out, mode="expert", num_samples=5, contrast_model=env.second, seed=3)
    explore(cfg)
    differs = 0
    for rec in _lines(out):
        _, pos, mask, l1, l2 = _masks(env, rec, with_second=True)
        got = _by_pos(rec["samples"])
        for i, t in enumerate(pos):
            if not mask[i].any():
                assert t not in got
                continue
            draws = {}
            for name, scores in (("expert", torch.log_softmax(l2[i], -1)), ("base", torch.log_softmax(l1[i], -1))):
                g = torch.Generator().manual_seed(derive_seed(cfg.seed, rec["id"], t, "sample"))
                probs = torch.softmax(scores.masked_fill(~mask[i], -float("inf")), -1)
                draws[name] = torch.multinomial(probs, 5, replacement=True, generator=g).tolist()
            assert got[t] == draws["expert"]
            differs += draws["base"] != draws["expert"]
    assert differs > 0


def test_cli_offers_expert_and_keep_duplicates(env, tmp_path):
    out = tmp_path / "cli.jsonl"
    res = CliRunner().invoke(explore_command, [
        "--model", env.llm, "--data", env.data, "--output", str(out), "--strategy", "sample", "--mode", "expert",
        "--contrast-model", env.second, "--no-keep-duplicates", "--alpha", "0.05", "--top-k", "40", "--limit", "1",
        "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    (rec,) = _lines(out)
    s = rec["settings"]
    assert (s["mode"], s["keep_duplicates"], s["alpha"], s["top_k"]) == ("expert", False, 0.05, 40)
    assert rec["samples"] and all(len(v) == len(set(v)) <= 2 for v in _by_pos(rec["samples"]).values())
    res = CliRunner().invoke(explore_command, [
        "--model", env.llm, "--data", env.data, "--output", str(tmp_path / "x.jsonl"), "--strategy", "sample",
        "--mode", "expert", "--no-progress",
    ])
    assert res.exit_code != 0 and "Error: mode 'expert' needs a second model (--contrast-model)" in res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------------------------ loss normalisation


@pytest.fixture(scope="module")
def pair_file(tiny_llm, tmp_path_factory):
    """Eight solutions with 1..8 pairs each (micro-batches with padded pair slots), random negatives."""
    from transformers import AutoTokenizer

    from verifier_train.records import response_start

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    rng = random.Random(0)
    words = "the a of to and is are has had how many apples eggs dollars she he they buys sells".split()
    records = []
    for i in range(8):
        msgs = [{"role": "user", "content": " ".join(rng.choices(words, k=6))},
                {"role": "assistant", "content": " ".join(rng.choices(words, k=12)) + "."}]
        ids, start = chat_token_ids(tok, msgs), response_start(tok, msgs)
        pos = rng.sample(range(start, len(ids)), i + 1)
        records.append({"id": i, "messages": msgs,
                        "samples": [[p, ids[p], rng.choice([t for t in range(len(tok)) if t != ids[p]])] for p in pos]})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _batches(tiny_llm, pair_file, sizes):
    from transformers import AutoTokenizer

    from verifier_train.packing import PackedCollator
    from verifier_train.train import load_pair_data

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    data = load_pair_data([pair_file], tok)
    feats, out, i = list(data.train), [], 0
    for n in sizes:
        out.append(PackedCollator(tok.pad_token_id)(feats[i : i + n]))
        i += n
    return out


def test_slots_reduction_divides_by_padded_pair_slots():
    from verifier_train.train import pairwise_loss

    g, n = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]]), torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    losses = -torch.nn.functional.logsigmoid(torch.tensor([1.0, 2.0, 0.5]))
    assert float(pairwise_loss(g, n, mask, "slots")) == pytest.approx(float(losses.sum()) / 6)
    assert float(pairwise_loss(g, n, mask, "mean")) == pytest.approx(float(losses.mean()))


def test_official_normalisation_is_the_mean_of_slot_normalised_micro_batches(tiny_llm, tiny_verifier, pair_file,
                                                                              tmp_path):
    """Two accumulated micro-batches: 'official' sums to mean_i(sum_i / (B_i x Pmax_i)) (the authors' trainer),
    'pairs' to the sum over all real pairs / their number; they differ when micro-batches hold padded slots."""
    from transformers import TrainingArguments

    from llm2_eval.verifier import load_verifier
    from verifier_train.train import pair_scores, pairwise_loss
    from verifier_train.train.trainer import VerifierTrainer

    model = load_verifier(tiny_verifier, dtype="float32")
    batches = _batches(tiny_llm, pair_file, (3, 5))
    with torch.no_grad():
        scores = [pair_scores(model, b) for b in batches]
    real = sum(float(pairwise_loss(g, n, b["pair_mask"], "sum")) for (g, n), b in zip(scores, batches))
    n_real = sum(int(b["pair_mask"].sum()) for b in batches)
    slot_means = [float(pairwise_loss(g, n, b["pair_mask"], "slots")) for (g, n), b in zip(scores, batches)]
    expected = {"pairs": real / n_real, "official": sum(slot_means) / 2}
    assert expected["official"] < expected["pairs"] - 1e-3  # padded slots shrink the authors' loss
    args = TrainingArguments(output_dir=str(tmp_path / "t"), report_to=[], use_cpu=True)
    for norm, want in expected.items():
        trainer = VerifierTrainer(model=model, args=args, loss_normalization=norm)
        model.train()
        _, count = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
        with torch.no_grad():
            got = sum(float(trainer.compute_loss(model, b, num_items_in_batch=count)) for b in batches)
        assert got == pytest.approx(want, rel=1e-5), norm
    with pytest.raises(ValueError, match="loss_normalization"):
        VerifierTrainer(model=model, args=args, loss_normalization="padded")


def test_train_verifier_loss_normalization_option(tiny_llm, tiny_verifier, pair_file, tmp_path):
    """End to end: one step over the 8 solutions logs the authors' loss sum / (8 x 8 slots) with 'official', the
    mean over the real pairs by default; recorded in the training card; a bad value is a one-line CLI error."""
    from transformers import AutoTokenizer

    from llm2_eval.verifier import load_verifier
    from verifier_train.packing import PackedCollator
    from verifier_train.train import TrainConfig, load_pair_data, pair_scores, pairwise_loss, train_command
    from verifier_train.train import train_verifier

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    batch = PackedCollator(tok.pad_token_id)(load_pair_data([pair_file], tok).train)
    with torch.no_grad():
        g, n = pair_scores(load_verifier(tiny_verifier, dtype="float32"), batch)
    want = {"pairs": float(pairwise_loss(g, n, batch["pair_mask"], "mean")),
            "official": float(pairwise_loss(g, n, batch["pair_mask"], "slots"))}
    assert batch["pair_mask"].shape == (8, 8) and want["official"] < want["pairs"]
    for norm in ("pairs", "official"):
        out = tmp_path / norm
        kw = {} if norm == "pairs" else {"loss_normalization": norm}
        res = train_verifier(TrainConfig(
            init_from=str(tiny_verifier), data=[str(pair_file)], output=str(out), bf16=False,
            gradient_checkpointing=False, global_batch=8, micro_batch=8, lr=1e-3, warmup_ratio=0.0,
            eval_fraction=0.0, logging_steps=1, max_steps=1, progress=False, **kw))
        log = next(r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r)
        assert log["loss"] == pytest.approx(want[norm], abs=1e-5)
        card = json.loads((out / "training_card.json").read_text())
        assert json.dumps(card).count(f'"loss_normalization": "{norm}"') >= 1
        assert res.global_step == 1
    res = CliRunner().invoke(train_command, ["--init-from", str(tiny_verifier), "--data", str(pair_file),
                                             "--output", str(tmp_path / "bad"), "--loss-normalization", "padded"])
    assert res.exit_code == 2 and "Invalid value for '--loss-normalization'" in res.output
