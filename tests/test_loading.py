"""The general loading helpers (llm2_eval/loading.py), the hub-id rule (llm2_eval/paths.py), the seed hash
(llm2_eval/candidates.py) and the rollout engine factory (verifier_train/rollouts/factory.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llm2_eval.candidates import context_seed, derive_seed, seed_hash
from llm2_eval.loading import build_verifier, eos_token_ids, head_name, load_causal_lm, resolve_dtype, same_model
from llm2_eval.paths import is_hub_id
from verifier_train.rollouts import EngineConfig, HFRolloutEngine, load_engine


@pytest.mark.parametrize("name", ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "org/model.v1_2-x"])
def test_names_that_may_be_hub_ids(name):
    assert is_hub_id(name)


@pytest.mark.parametrize("name", [
    "", "./model", "../model", ".cache/model", "/abs/model", "~/model", "a/b/c", "model/", "C:/models",
    "dir\\model", "my model", "a..b", "a--b", "-x", "x" * 97,
])
def test_names_that_can_only_be_local_paths(name):
    assert not is_hub_id(name)


def test_eos_token_ids_collects_ints_and_lists_sorted():
    tok = SimpleNamespace(eos_token_id=7)
    cfg = SimpleNamespace(eos_token_id=[9, 2])
    gen = SimpleNamespace(eos_token_id=None)
    assert eos_token_ids(tok, cfg, gen, None, object()) == (2, 7, 9)
    assert eos_token_ids() == ()


def test_resolve_dtype():
    assert resolve_dtype(None) == "auto" and resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="not supported"):
        resolve_dtype("int3")


def test_seed_hash_values_are_pinned():
    """The seeds of recorded runs: lm-eval sampling (context_seed) and exploration rollouts (derive_seed)."""
    assert context_seed(7, [1, 2, 3, 500], 0) == 8113227830835516780
    assert context_seed(-3, [9], 4) == 6330038814412567280
    assert context_seed(2**40, torch.arange(50), 1) == 299321909974558847
    assert derive_seed(0, "gsm8k-12", 5, 301, 2) == 5672975658224072013
    assert derive_seed("x", {"b": 1, "a": [1, 2]}) == 2696156247263202672
    assert 0 <= seed_hash(b"") < 2**63


def test_build_verifier_from_an_llm_and_from_its_config(tiny_llm):
    model = build_verifier(tiny_llm, seed=0, zero_head=True, use_cache=False)
    head = getattr(model, head_name(model))
    assert model.config.num_labels == 1 and model.config.classifier_dropout == 0.0 and not model.config.use_cache
    assert all(bool((p == 0).all()) for p in head.parameters())
    a = build_verifier(tiny_llm, seed=3)
    b = build_verifier(tiny_llm, seed=3)
    torch.testing.assert_close(getattr(a, head_name(a)).weight, getattr(b, head_name(b)).weight)
    with torch.device("meta"):
        empty = build_verifier(a.config)
    assert empty.config.num_labels == 1 and next(empty.parameters()).device.type == "meta"


def test_same_model_and_the_hf_engine_factory(tiny_llm, tmp_path):
    llm = load_causal_lm(tiny_llm, dtype="float32", device="cpu")
    assert same_model(tiny_llm, llm) and not same_model(tmp_path, llm)
    engine = load_engine(EngineConfig(model=str(tiny_llm), dtype="float32", device="cpu", batch_rows=4))
    assert isinstance(engine, HFRolloutEngine) and engine.batch_rows == 4
    assert engine.eos_token_ids == eos_token_ids(llm.config, llm.generation_config)
    with pytest.raises(ValueError, match="backend='tpu'"):
        load_engine(EngineConfig(model=str(tiny_llm), backend="tpu"))
