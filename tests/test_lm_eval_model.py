"""The ``llm2`` lm-eval model (an HFLM subclass) in-process."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from llm2_eval.verifier import TokenizerMismatchError, init_verifier
from tiny_models import build_tiny_llm, build_tokenizer

PROMPTS = ["how many apples are left", "she buys 12 eggs", "the answer"]


def requests(prompts, **gen):
    kwargs = {"until": ["\n\n"], "max_gen_toks": 10, "do_sample": False, **gen}
    return [Instance(request_type="generate_until", doc={}, arguments=(p, dict(kwargs)), idx=0) for p in prompts]


def make(tiny_llm, **args):
    return get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, **args)


def test_registered_next_to_builtin_models():
    from lm_eval.models.huggingface import HFLM

    from llm2_eval.lm_eval_model import LLM2LM

    assert get_model("llm2") is LLM2LM and issubclass(LLM2LM, HFLM)
    assert get_model("hf") is HFLM


def test_beta_zero_equals_hflm_greedy_with_chat_prompts(tiny_llm, tiny_verifier):
    hf = get_model("hf")(pretrained=str(tiny_llm), dtype="float32", batch_size=2, device="cpu")
    chats = [hf.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    want = hf.generate_until(requests(chats))
    for args in ({"verifier": str(tiny_verifier), "beta": 0}, {}):
        got = make(tiny_llm, **args).generate_until(requests(chats))
        assert got == want


def test_verifier_changes_decisions_and_reports_stats(tiny_llm, tiny_verifier):
    plain = make(tiny_llm, verifier=str(tiny_verifier), beta=0).generate_until(requests(PROMPTS))
    m = make(tiny_llm, verifier=str(tiny_verifier), beta=8.0, alpha=0.3)
    guided = m.generate_until(requests(PROMPTS))
    assert guided != plain
    assert any(s.flips > 0 for s in m.last_decode.stats)


def test_sampling_seeds_are_per_prompt_copy_and_reproducible(tiny_llm, tiny_verifier):
    reqs = requests([PROMPTS[0]] * 3 + [PROMPTS[1]], do_sample=True, temperature=1.0)
    a = make(tiny_llm, verifier=str(tiny_verifier), seed=7).generate_until(reqs)
    b = make(tiny_llm, verifier=str(tiny_verifier), seed=7).generate_until(reqs)
    assert a == b
    assert len(set(a[:3])) > 1  # copies of one prompt are independent samples
    c = get_model("llm2")(pretrained=str(tiny_llm), dtype="float32", batch_size=1, verifier=str(tiny_verifier),
                          seed=7).generate_until(reqs)
    assert c == a  # a sample does not depend on the batch size


@pytest.mark.parametrize(
    "args, match",
    [
        ({"alpha": "abc"}, "alpha='abc' is not a number"),
        ({"alpha": 1.5}, "alpha"),
        ({"beta": -1}, "beta"),
        ({"top_k": -2}, "top_k"),
        ({"max_candidates": 0}, "max_candidates"),
        ({"max_candidates": "x"}, "max_candidates='x' is not an integer"),
    ],
)
def test_bad_model_args(tiny_llm, args, match):
    with pytest.raises(ValueError, match=match):
        make(tiny_llm, **args)


def test_missing_verifier_and_mismatched_tokenizer(tiny_llm, tmp_path):
    with pytest.raises(FileNotFoundError, match="verifier checkpoint not found"):
        make(tiny_llm, verifier=str(tmp_path / "nope"))
    other_llm = build_tiny_llm(tmp_path / "other", tokenizer=build_tokenizer(extra_token="<|x|>"))
    other_ver = init_verifier(other_llm, tmp_path / "other_ver", head_init="normal")
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer vocabulary"):
        make(tiny_llm, verifier=str(other_ver))


def test_empty_prompt_and_unsupported_gen_kwargs(tiny_llm, tiny_verifier):
    m = make(tiny_llm, verifier=str(tiny_verifier))
    with pytest.raises(ValueError, match="empty prompt"):
        m.generate_until(requests([""]))
    with pytest.raises(ValueError, match="does not support the generation kwargs \\['num_beams'\\]"):
        m.generate_until(requests(["hi"], num_beams=4))


def test_trace_counts_flips_candidates_and_forwards(tiny_llm, tiny_verifier, tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trace = tmp_path / "t" / "trace.jsonl"
    m = make(tiny_llm, verifier=str(tiny_verifier), beta=8.0, alpha=0.3, trace=str(trace))
    reqs = requests(PROMPTS[:2])
    for i, r in enumerate(reqs):
        r.doc_id, r.task_name = i, "toy"
    m.generate_until(reqs)
    header, *lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert header["llm2_trace"] == 1 and all(x["run_id"] == header["run_id"] for x in lines)
    assert sorted((x["task"], x["doc_id"], x["repeat"]) for x in lines) == [("toy", 0, 0), ("toy", 1, 0)]
    # recompute from scratch: a flip is a step whose chosen token is not the LLM's argmax
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    llm = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).eval()
    for line in lines:
        prompt = tok(PROMPTS[line["doc_id"]]).input_ids
        assert m.tok_encode(PROMPTS[line["doc_id"]]) == prompt  # the tokenisation HFLM used
        seq = list(prompt)
        flips, cands = 0, 0
        with torch.no_grad():
            for t in _tokens_of(m, tok, reqs, line["doc_id"]):
                logits = llm(torch.tensor([seq])).logits[0, -1]
                p = logits.softmax(-1)
                cands += int((p >= 0.3 * p.max()).sum())
                flips += int(int(logits.argmax()) != t)
                seq.append(t)
        assert line["flips"] == flips and flips > 0
        assert line["steps"] == len(seq) - len(prompt)
        assert abs(line["mean_candidates"] - cands / line["steps"]) < 1e-9
        assert line["llm_token_forwards"] == len(prompt) + line["steps"] - 1
        assert line["verifier_token_forwards"] > len(prompt)


def _tokens_of(m, tok, reqs, doc_id):
    # the generated ids of one request, from the model's last decode (one batch of 2 rows, longest prompt first)
    order = sorted(range(len(reqs)), key=lambda i: -len(tok(reqs[i].args[0]).input_ids))
    return m.last_decode.tokens[order.index(doc_id)]


def test_repeats_decode_from_one_prefill_and_match_separate_requests(tiny_llm, tiny_verifier):
    m = make(tiny_llm, verifier=str(tiny_verifier), seed=3)
    reqs = requests([PROMPTS[0]] * 4, do_sample=True, temperature=1.0)
    shared = m.generate_until(reqs)
    st = m.last_decode.stats
    n_prompt = len(m.tok_encode(PROMPTS[0]))
    assert st[0].llm_tokens == n_prompt + st[0].steps - 1
    assert all(s.llm_tokens == s.steps - 1 for s in st[1:])  # the copies did not re-read the prompt
    one_by_one = make(tiny_llm, verifier=str(tiny_verifier), seed=3)
    separate = [one_by_one.generate_until([r])[0] for r in requests([PROMPTS[0]] * 4, do_sample=True,
                                                                      temperature=1.0)]
    assert shared == separate


def test_seed_generation_kwarg_overrides_the_model_seed(tiny_llm, tiny_verifier):
    m = make(tiny_llm, verifier=str(tiny_verifier), seed=5)
    a = m.generate_until(requests([PROMPTS[0]], do_sample=True, temperature=1.0, seed=1))
    m2 = make(tiny_llm, verifier=str(tiny_verifier), seed=99)
    b = m2.generate_until(requests([PROMPTS[0]], do_sample=True, temperature=1.0, seed=1))
    c = m2.generate_until(requests([PROMPTS[0]], do_sample=True, temperature=1.0, seed=2))
    assert a == b and a != c


def test_llm2_info_lines_reach_lm_evals_handler():
    """lm-eval handles only its own ``lm_eval`` logger: the model sends the ``llm2_eval`` records through that
    handler, at lm-eval's level (an info line such as 'N requests answered from sample_cache' is shown)."""
    import logging

    from llm2_eval.lm_eval_model import _log_like_lm_eval

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    ours, theirs = logging.getLogger("llm2_eval"), logging.getLogger("lm_eval")
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in (ours, theirs)]
    try:
        ours.handlers.clear()
        keep = Keep()
        theirs.handlers[:] = [keep]
        theirs.setLevel(logging.INFO)
        logging.getLogger("llm2_eval.sample_cache").debug("hidden at INFO")
        _log_like_lm_eval()
        _log_like_lm_eval()  # a second model in the same process adds nothing
        logging.getLogger("llm2_eval.lm_eval_model").info("llm2: 3 of 8 requests answered")
        logging.getLogger("llm2_eval.sample_cache").debug("hidden at INFO")
        assert keep.messages == ["llm2: 3 of 8 requests answered"] and ours.handlers == [keep]
        # an application that configured llm2_eval's logging itself keeps it
        own = Keep()
        ours.handlers[:] = [own]
        _log_like_lm_eval()
        assert ours.handlers == [own]
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
