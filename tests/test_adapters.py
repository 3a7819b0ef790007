"""LoRA verifiers saved as PEFT adapter directories (llm2_eval/adapters.py; ``llm2 train-verifier --lora
--lora-save adapter``) on tiny local models, CPU fp32: the directory, its two loading modes, lm-eval, bad input."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from tiny_models import build_tiny_llm



def _triplets(tok, path: Path, n: int = 16) -> Path:
    """Solutions with 3 (position, gold, negative) triplets each; the negative is a fixed shift of the gold id."""
    from verifier_train.records import chat_token_ids, response_start

    rng = random.Random(0)
    words = "the a of to and is are has had how many much each apples eggs dollars hours".split()
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            msgs = [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(6))},
                    {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(8))}]
            ids = chat_token_ids(tok, msgs)
            pos = rng.sample(range(response_start(tok, msgs), len(ids)), 3)
            f.write(json.dumps({"id": i, "messages": msgs,
                                "samples": [[p, ids[p], (ids[p] + 7) % len(tok)] for p in pos]}) + "\n")
    return path


def _train_cli(tiny_llm, data: Path, out: Path, *extra: str):
    from click.testing import CliRunner

    from llm2_eval.cli import main

    args = ["train-verifier", "--model", str(tiny_llm), "--data", str(data), "--output", str(out), "--fp32",
            "--no-gradient-checkpointing", "--global-batch", "8", "--micro-batch", "8", "--max-steps", "3",
            "--lr", "1e-2", "--head-lr", "1e-2", "--head-init", "normal", "--warmup-ratio", "0", "--eval-fraction",
            "0", "--lora", "--lora-r", "4", "--no-progress", *extra]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def trained(tiny_llm, tmp_path_factory):
    """The same LoRA training run (same seed, data, steps) saved once as an adapter, once merged."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("adapters")
    data = _triplets(AutoTokenizer.from_pretrained(tiny_llm), root / "triplets.jsonl")
    for name, extra in (("adapter", ["--lora-save", "adapter"]), ("merged", [])):
        res = _train_cli(tiny_llm, data, root / name, *extra)
        assert res.exit_code == 0, res.output
    return {"adapter": root / "adapter", "merged": root / "merged", "data": data, "root": root}


def _llm(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def _inputs(tiny_llm) -> torch.Tensor:
    """Two left-padded chat prompts (with padding, so masks and position ids matter)."""
    from transformers import AutoTokenizer

    from verifier_train.records import chat_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    rows = [chat_token_ids(tok, [{"role": "user", "content": c}], add_generation_prompt=True)
            for c in ("how many apples are left", "she has 12 eggs and buys 5 more each hours")]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _scores(verifier, ids, mask) -> torch.Tensor:
    from llm2_eval.verifier import verifier_scores

    with torch.inference_mode():
        return verifier_scores(verifier(input_ids=ids, attention_mask=mask))


def _decode(llm, verifier, ids, mask):
    from llm2_eval.decoding import DecodeConfig, generate

    return generate(llm, ids, mask, DecodeConfig(alpha=0.05, beta=8.0, max_new_tokens=24), verifier=verifier)


# ------------------------------------------------------------------------------------------------ the directory


def test_adapter_directory_is_small_and_holds_the_head(tiny_llm, trained):
    from safetensors.torch import load_file

    from llm2_eval.adapters import read_adapter_config

    a, m = trained["adapter"], trained["merged"]
    names = {p.name for p in a.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "llm2_verifier.json", "training_card.json",
            "tokenizer.json"} <= names
    assert not names & {"model.safetensors", "config.json"}  # no full copy of the weights
    cfg = read_adapter_config(a)
    assert cfg["task_type"] == "TOKEN_CLS" and cfg["head"] == "score"
    assert cfg["base_model_name_or_path"] == str(Path(tiny_llm).resolve())
    weights = load_file(str(a / "adapter_model.safetensors"))
    assert {"base_model.model.score.weight", "base_model.model.score.bias"} <= set(weights)
    assert any(k.endswith("lora_B.weight") and weights[k].abs().max() > 0 for k in weights)  # LoRA was trained
    assert not any("embed_tokens" in k for k in weights)
    size = (a / "adapter_model.safetensors").stat().st_size
    full = (m / "model.safetensors").stat().st_size
    assert size < full / 4, (size, full)  # rank 4 on a 64-wide model; a real model's ratio is far smaller
    card = json.loads((a / "training_card.json").read_text())
    assert card["settings"]["lora"] is True and card["settings"]["lora_save"] == "adapter"
    assert json.loads((a / "llm2_verifier.json").read_text())["llm2_verifier"]["num_labels"] == 1


def test_lora_save_adapter_needs_lora(tiny_llm, trained, tmp_path):
    from click.testing import CliRunner

    from llm2_eval.cli import main

    res = CliRunner().invoke(main, ["train-verifier", "--model", str(tiny_llm), "--data", str(trained["data"]),
                                    "--output", str(tmp_path / "o"), "--lora-save", "adapter", "--no-progress"])
    assert res.exit_code != 0 and "--lora-save adapter needs --lora" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ own base


def test_own_base_equals_the_merged_checkpoint_exactly(tiny_llm, trained):
    """Without the LLM (or with another one) the adapter is merged into its own base: in fp32 it is the merged
    checkpoint of the same run bit for bit, scores and decoded tokens alike."""
    from llm2_eval.adapters import SharedBaseVerifier
    from llm2_eval.verifier import load_verifier

    merged = load_verifier(trained["merged"], dtype="float32")
    own = load_verifier(trained["adapter"], dtype="float32")
    assert not isinstance(own, SharedBaseVerifier) and own.config.num_labels == 1
    ids, mask = _inputs(tiny_llm)
    s_m, s_o = _scores(merged, ids, mask), _scores(own, ids, mask)
    assert torch.equal(s_m, s_o) and s_m.abs().max() > 1e-3
    llm = _llm(tiny_llm)
    a, b = _decode(llm, merged, ids, mask), _decode(llm, own, ids, mask)
    assert a.tokens == b.tokens and [s.margin_sum for s in a.stats] == [s.margin_sum for s in b.stats]
    assert sum(s.flips for s in a.stats) > 0  # the verifier does steer this decode


def test_another_llm_gets_its_own_base(tiny_llm, trained, tmp_path):
    """An LLM that is not the adapter's base (other weights, same tokenizer) is left alone: the verifier loads
    the base from its path and shares nothing."""
    from transformers import AutoTokenizer

    from llm2_eval.adapters import SharedBaseVerifier
    from llm2_eval.verifier import load_verifier

    other_dir = build_tiny_llm(tmp_path / "other", seed=5, tokenizer=AutoTokenizer.from_pretrained(tiny_llm))
    other = _llm(other_dir)
    ver = load_verifier(trained["adapter"], dtype="float32", llm=other)
    assert not isinstance(ver, SharedBaseVerifier)
    assert ver.get_input_embeddings().weight.data_ptr() != other.get_input_embeddings().weight.data_ptr()
    assert not any("lora" in n for n, _ in other.named_parameters())
    ids, mask = _inputs(tiny_llm)
    assert torch.equal(_scores(ver, ids, mask), _scores(load_verifier(trained["merged"], dtype="float32"), ids, mask))


# ------------------------------------------------------------------------------------------------ shared base


def test_shared_base_keeps_one_copy_and_the_llm_unchanged(tiny_llm, trained):
    from llm2_eval.adapters import SharedBaseVerifier
    from llm2_eval.verifier import load_verifier

    llm, plain = _llm(tiny_llm), _llm(tiny_llm)
    before = {n: p.data_ptr() for n, p in llm.named_parameters()}
    ver = load_verifier(trained["adapter"], dtype="float32", llm=llm)
    assert isinstance(ver, SharedBaseVerifier)
    # every base weight of the verifier IS the LLM's (same storage); the only new tensors are LoRA's and the head's
    llm_ptrs = set(before.values())
    own = {n: p for n, p in ver.named_parameters() if p.data_ptr() not in llm_ptrs}
    assert own and all(".lora_" in n or ".score." in n for n in own), sorted(own)
    for name, p in ver.classifier.model.named_parameters():
        if ".lora_" not in name:
            assert p.data_ptr() == before["model." + name.replace(".base_layer", "")], name
    assert sum(p.numel() for p in own.values()) < sum(p.numel() for p in plain.model.parameters()) / 4

    ids, mask = _inputs(tiny_llm)
    with torch.inference_mode():
        want = plain(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(llm(input_ids=ids, attention_mask=mask).logits, want)
        _scores(ver, ids, mask)
        assert torch.equal(llm(input_ids=ids, attention_mask=mask).logits, want)  # adapters off again
        with pytest.raises(Exception):
            ver(input_ids=torch.full_like(ids, 10**6), attention_mask=mask)  # a failing verifier forward ...
        assert torch.equal(llm(input_ids=ids, attention_mask=mask).logits, want)  # ... leaves them off too


def test_shared_base_decodes_as_the_merged_verifier(tiny_llm, trained):
    """Same tokens as decoding with the merged checkpoint; scores equal up to fp32 rounding (LoRA unmerged computes
    ``x W + (x A) B`` instead of ``x (W + A B)``), and they are the adapter's scores, not the base's."""
    from llm2_eval.decoding import DecodeConfig, generate
    from llm2_eval.verifier import load_verifier

    llm, plain = _llm(tiny_llm), _llm(tiny_llm)
    merged = load_verifier(trained["merged"], dtype="float32")
    shared = load_verifier(trained["adapter"], dtype="float32", llm=llm)
    ids, mask = _inputs(tiny_llm)
    s_m, s_s = _scores(merged, ids, mask), _scores(shared, ids, mask)
    torch.testing.assert_close(s_s, s_m, rtol=0, atol=1e-5)
    with torch.inference_mode():  # with the adapters off the same module scores differently: they matter
        base_only = shared.classifier(input_ids=ids, attention_mask=mask).logits[..., 0]
    assert not torch.allclose(base_only, s_m, atol=1e-3)

    want, got = _decode(plain, merged, ids, mask), _decode(llm, shared, ids, mask)
    assert got.tokens == want.tokens and sum(s.flips for s in got.stats) > 0
    for a, b in zip(got.stats, want.stats):
        assert (a.flips, a.scored_steps) == (b.flips, b.scored_steps)
        assert a.margin_sum == pytest.approx(b.margin_sum, abs=1e-4)
    greedy = DecodeConfig(beta=0.0, max_new_tokens=24)
    assert generate(llm, ids, mask, greedy).tokens == generate(plain, ids, mask, greedy).tokens


def test_same_weights_at_another_path_are_shared(tiny_llm, trained, tmp_path):
    from llm2_eval.adapters import SharedBaseVerifier, read_adapter_config, shares_base
    from llm2_eval.verifier import load_verifier

    copy_dir = Path(shutil.copytree(tiny_llm, tmp_path / "copy"))
    llm = _llm(copy_dir)
    assert shares_base(read_adapter_config(trained["adapter"]), llm)
    assert isinstance(load_verifier(trained["adapter"], llm=llm), SharedBaseVerifier)
    other = _llm(copy_dir)
    with torch.no_grad():
        other.model.norm.weight.add_(1.0)  # one backbone tensor differs: not the base
    assert not shares_base(read_adapter_config(trained["adapter"]), other)


def test_lm_eval_model_loads_the_adapter_on_the_llm(tiny_llm, trained):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from llm2_eval.adapters import SharedBaseVerifier

    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(p, {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}))
            for p in ("how many apples are left", "she buys 12 eggs", "the answer")]
    args = dict(pretrained=str(tiny_llm), dtype="float32", batch_size=2, beta=8.0, alpha=0.05)
    with_adapter = get_model("llm2")(verifier=str(trained["adapter"]), **args)
    assert isinstance(with_adapter.verifier, SharedBaseVerifier)
    assert with_adapter.verifier.get_input_embeddings().weight.data_ptr() == \
        with_adapter.model.get_input_embeddings().weight.data_ptr()
    got = with_adapter.generate_until(reqs)
    assert got == get_model("llm2")(verifier=str(trained["merged"]), **args).generate_until(reqs)
    assert any(s.flips > 0 for s in with_adapter.last_decode.stats)


def test_adapter_without_tokenizer_uses_its_base_tokenizer(tiny_llm, trained, tmp_path):
    """A bare PEFT adapter (no tokenizer files) is checked against its base's tokenizer, decodes as the adapter
    with one, and is refused for an LLM with another vocabulary; with its base absent it relies on the LLM's."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model
    from tiny_models import build_tokenizer

    from llm2_eval.adapters import TOKENIZER_FILES, tokenizer_source
    from llm2_eval.model_args import check_verifier_first
    from llm2_eval.verifier import TokenizerMismatchError

    bare = Path(shutil.copytree(trained["adapter"], tmp_path / "bare",
                                ignore=shutil.ignore_patterns("checkpoints", "chat_template.jinja", *TOKENIZER_FILES)))
    assert tokenizer_source(trained["adapter"]) == str(trained["adapter"])
    assert tokenizer_source(bare) == str(tiny_llm)
    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=("how many apples are left", {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}))]
    args = dict(pretrained=str(tiny_llm), dtype="float32", batch_size=1, beta=8.0, alpha=0.05)
    assert get_model("llm2")(verifier=str(bare), **args).generate_until(reqs) == \
        get_model("llm2")(verifier=str(trained["adapter"]), **args).generate_until(reqs)

    other_llm = build_tiny_llm(tmp_path / "other", tokenizer=build_tokenizer(extra_token="<|x|>"))
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer vocabulary"):
        check_verifier_first(str(other_llm), str(bare), {})

    cfg_path = bare / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()),
                                    "base_model_name_or_path": str(tmp_path / "moved")}))
    assert tokenizer_source(bare) is None
    check_verifier_first(str(other_llm), str(bare), {})  # nothing to compare before loading; the load decides


# ------------------------------------------------------------------------------------------------ bad input


def _break(adapter: Path, where: Path, how: str) -> None:
    shutil.copytree(adapter, where, ignore=shutil.ignore_patterns("checkpoints"))
    cfg_path, weights = where / "adapter_config.json", where / "adapter_model.safetensors"
    cfg = json.loads(cfg_path.read_text())
    if how == "json":
        cfg_path.write_text('{"task_type": "TOKEN_CLS",\n  oops}')
    elif how == "task":
        cfg_path.write_text(json.dumps({**cfg, "task_type": "CAUSAL_LM"}))
    elif how == "base":
        cfg_path.write_text(json.dumps({**cfg, "base_model_name_or_path": str(where / "no-such-model")}))
    elif how == "missing":
        weights.unlink()
    elif how == "garbage":
        weights.write_bytes(b"not a safetensors file")
    elif how == "no_head":
        from safetensors.torch import load_file, save_file

        save_file({k: v for k, v in load_file(str(weights)).items() if ".score." not in k}, str(weights))
    elif how == "shape":
        from safetensors.torch import load_file, save_file

        sd = load_file(str(weights))
        save_file({k: (torch.zeros(v.shape[0], v.shape[1] + 1) if "lora_A" in k else v) for k, v in sd.items()},
                  str(weights))


@pytest.mark.parametrize("how, file, match", [
    ("json", "adapter_config.json", "not valid JSON"),
    ("task", "adapter_config.json", "task_type 'CAUSAL_LM'"),
    ("base", "adapter_config.json", "not found (base_model_name_or_path"),
    ("missing", "adapter_model.safetensors", "missing"),
    ("garbage", "adapter_model.safetensors", "cannot read as safetensors"),
    ("no_head", "adapter_model.safetensors", "no score-head weights"),
    ("shape", "adapter_model.safetensors", "does not fit the base model"),
])
def test_bad_adapter_dir_gets_a_one_line_error_naming_the_file(trained, tmp_path, how, file, match):
    from llm2_eval.adapters import AdapterError
    from llm2_eval.verifier import load_verifier

    bad = tmp_path / "bad"
    _break(trained["adapter"], bad, how)
    with pytest.raises(AdapterError) as err:
        load_verifier(bad, dtype="float32")
    msg = str(err.value)
    assert msg.startswith(str(bad / file)) and match in msg and "\n" not in msg, msg
