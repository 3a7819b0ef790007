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
    other_ver = init_verifier(other_llm, tmp_path / "other_ver")
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer vocabulary"):
        make(tiny_llm, verifier=str(other_ver))


def test_empty_prompt_and_unsupported_gen_kwargs(tiny_llm, tiny_verifier):
    m = make(tiny_llm, verifier=str(tiny_verifier))
    with pytest.raises(ValueError, match="empty prompt"):
        m.generate_until(requests([""]))
    with pytest.raises(ValueError, match="does not support the generation kwargs \\['num_beams'\\]"):
        m.generate_until(requests(["hi"], num_beams=4))
