"""The verifiers committed under ``verifiers/`` are complete (issue: "commit it with its training card under
verifiers/<name>/"): a PEFT adapter directory has every LoRA matrix of every layer and the score head in its
safetensors file; a head verifier directory has its trained head and the marker that names its base; each stays
under 20 MB and has a README and a training card naming the data it was trained on. Reads only files; loading onto
the real base model is what the READMEs' commands do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "verifiers"
DIRS = sorted(p for p in ROOT.iterdir() if p.is_dir()) if ROOT.is_dir() else []
ADAPTERS = [p for p in DIRS if (p / "llm2_verifier.json").is_file()]
HEADS = [p for p in DIRS if (p / "llm2_head.json").is_file()]


def test_every_committed_verifier_is_of_a_known_kind():
    assert DIRS and sorted(ADAPTERS + HEADS) == DIRS


@pytest.mark.parametrize("vdir", HEADS, ids=[p.name for p in HEADS])
def test_committed_head_is_complete(vdir: Path):
    from llm2_eval.head_verifier import load_head

    head, cfg = load_head(vdir)
    assert cfg["objective"] == "pairwise" and cfg["hidden_size"] == head.hidden_size
    assert any(p.abs().sum() > 0 for p in head.parameters())  # trained: a zero head changes nothing
    assert sum(f.stat().st_size for f in vdir.iterdir()) <= 20 * 2**20
    card = json.loads((vdir / "training_card.json").read_text())
    assert card["kind"] == "llm2-head-verifier" and card["train_pairs"] > 0 and card["eval_pairs"] > 0
    assert card["settings"]["data"] and (vdir / "README.md").is_file()


@pytest.mark.parametrize("vdir", ADAPTERS, ids=[p.name for p in ADAPTERS])
def test_committed_adapter_is_complete(vdir: Path):
    from safetensors import safe_open

    marker = json.loads((vdir / "llm2_verifier.json").read_text())["llm2_verifier"]
    assert marker["format"] == "peft-adapter" and marker["num_labels"] == 1
    cfg = json.loads((vdir / "adapter_config.json").read_text())
    weights = vdir / "adapter_model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20

    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
        head = f"base_model.model.{marker['head']}.weight"
        assert head in keys and f.get_slice(head).get_shape()[0] == 1
        layers = {k.split(".layers.")[1].split(".")[0] for k in keys if ".layers." in k}
        assert layers and layers == {str(i) for i in range(len(layers))}
        for layer in layers:
            for module in set(cfg["target_modules"]) - set(cfg["modules_to_save"] or []):  # the head is saved whole
                for ab in ("lora_A", "lora_B"):
                    hits = [k for k in keys if f".layers.{layer}." in k and f".{module}.{ab}." in k]
                    assert len(hits) == 1, (layer, module, ab)
                    if ab == "lora_A":
                        assert f.get_slice(hits[0]).get_shape()[0] == cfg["r"]

    card = json.loads((vdir / "training_card.json").read_text())
    assert card["settings"]["lora"] and card["settings"]["lora_save"] == "adapter"
    assert card["train"]["pairs"] > 0 and card["eval"]["pairs"] > 0
    assert (vdir / "README.md").is_file()
    assert not (vdir / "tokenizer.json").exists()  # the base's tokenizer is used (llm2_eval.adapters.tokenizer_source)
