"""The verifiers committed under ``verifiers/`` are complete PEFT adapter directories (issue: "commit it with its
training card under verifiers/<name>/"): every LoRA matrix of every layer and the score head are in the
safetensors file, the adapter stays under 20 MB, and the training card names the data it was trained on.
Reads only file headers; loading the adapter onto its real base model is what the README's commands do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "verifiers"
DIRS = sorted(p for p in ROOT.iterdir() if p.is_dir()) if ROOT.is_dir() else []


@pytest.mark.parametrize("vdir", DIRS, ids=[p.name for p in DIRS])
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
