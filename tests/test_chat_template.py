"""``--chat-template``: data made with another chat template than the tokenizer's (docs/method.md sections 5 and 9).

The authors' one released record (../shared/data/llm2_release) was tokenised with their Llama template, which has
no default system block; a stock Llama-3.1/3.2-Instruct tokenizer adds one, which shifts every position. Here a
tiny random Llama with the Llama 3 vocabulary (../shared/tokenizers/llama3) carries a template with such a
system block: the record fails validation with an error that points to --chat-template, and passing the authors'
template validates all 28 triplets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from verifier_train.records import RecordError, chat_token_ids, position_shift, use_chat_template

SHARED = Path(__file__).resolve().parents[2] / "shared"

# A Llama 3 style template with a default system block, like the stock Instruct templates (written for this test).
SYSTEM_BLOCK_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 01 Dec 2026\n\n<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def release(data_dir):
    path = data_dir / "llm2_release" / "readme_example.jsonl"
    tok_dir = SHARED / "tokenizers" / "llama3"
    if not path.exists() or not tok_dir.exists():
        pytest.fail(f"test data missing: {path} or {tok_dir}")
    return path, tok_dir


@pytest.fixture(scope="module")
def llama3_model(release, tmp_path_factory):
    """A tiny random Llama with the Llama 3 vocabulary whose tokenizer adds a system block; and the authors'
    template (the Llama 3 tokenizer's own, without system block) as a file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    _, tok_dir = release
    root = tmp_path_factory.mktemp("llama3")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    authors = root / "authors_llama.jinja"
    authors.write_text(tok.chat_template, encoding="utf-8")
    tok.chat_template = SYSTEM_BLOCK_TEMPLATE
    tok.pad_token = tok.eos_token
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    return root / "llm", authors


def _record(release):
    return json.loads(release[0].read_text().splitlines()[0])


def test_release_record_validates_with_the_authors_template_only(release, llama3_model):
    from transformers import AutoTokenizer

    from verifier_train.train import load_pair_data

    llm, authors = llama3_model
    tok = AutoTokenizer.from_pretrained(llm)
    rec = _record(release)
    shift = position_shift(chat_token_ids(tok, rec["messages"]), [tuple(s) for s in rec["samples"]])
    assert shift is not None and shift > 0  # the system block puts every gold token later
    with pytest.raises(RecordError, match=rf"readme_example.jsonl:1: .*{shift} tokens later.*--chat-template"):
        load_pair_data([release[0]], tok)
    info = use_chat_template(tok, authors)
    assert info["path"] == str(authors) and len(info["sha256"]) == 64
    data = load_pair_data([release[0]], tok)
    assert data.files[0].records == 1 and data.files[0].pairs == data.train_pairs == 28
    with pytest.raises(FileNotFoundError, match="--chat-template"):
        use_chat_template(tok, authors.with_name("missing.jinja"))


def test_train_verifier_cli_with_chat_template(release, llama3_model, tmp_path):
    llm, authors = llama3_model
    base = [sys.executable, "-m", "llm2_eval.cli", "train-verifier", "--model", str(llm), "--data", str(release[0]),
            "--max-steps", "1", "--global-batch", "1", "--micro-batch", "1", "--eval-fraction", "0", "--fp32",
            "--no-gradient-checkpointing", "--no-progress"]
    bad = subprocess.run(base + ["--output", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode != 0 and "--chat-template" in bad.stderr and "Traceback" not in bad.stderr
    out = tmp_path / "v"
    ok = subprocess.run(base + ["--output", str(out), "--chat-template", str(authors)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    card = json.loads((out / "training_card.json").read_text())
    assert card["chat_template"]["path"] == str(authors) and card["train"]["pairs"] == 28
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == authors.read_text()


def test_explore_records_its_chat_template(tiny_llm, tmp_path):
    from transformers import AutoTokenizer

    from tiny_models import CHAT_TEMPLATE
    from verifier_train.explore import ExploreConfig, explore
    from verifier_train.records import check_samples

    template = tmp_path / "with_system.jinja"
    template.write_text("<|im_start|>system\nYou are a careful solver.<|im_end|>\n" + CHAT_TEMPLATE)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "she has 3 apples and buys 4 more", "answer": "3 + 4 = 7\n#### 7"}) + "\n")
    out = tmp_path / "o.jsonl"
    explore(ExploreConfig(model=str(tiny_llm), data=str(data), output=str(out), strategy="sample", positions="all",
                          chat_template=str(template), progress=False))
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["settings"]["chat_template"]["path"] == str(template) and rec["samples"]
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    samples = [tuple(s) for s in rec["samples"]]
    assert check_samples(chat_token_ids(tok, rec["messages"]), samples, len(tok)) is not None
    use_chat_template(tok, template)
    assert check_samples(chat_token_ids(tok, rec["messages"]), samples, len(tok)) is None
