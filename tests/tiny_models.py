"""Tiny local models for the tests: a BPE tokenizer trained on the fly and random-weight Qwen2/Llama LMs.

Nothing is downloaded. ``build_tiny_llm(dir)`` writes a transformers checkpoint with a chat template, so the
same directory works with transformers, lm-eval's HFLM and ``llm2 init-verifier``.
"""

from __future__ import annotations

import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = (
        "the a of to and is are has had how many much each every total left more less than apples eggs "
        "dollars hours she he they buys sells makes gives answer question step so then therefore"
    ).split()
    lines = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(4, 14)):
            parts.append(str(rng.randint(0, 999)) if rng.random() < 0.3 else rng.choice(words))
        lines.append(" ".join(parts) + rng.choice([".", "?", " = 12.", " The answer is 7."]))
    return lines


def build_tokenizer(vocab_size: int = 300, seed: int = 0, extra_token: str | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on a synthetic corpus, with a chat template.

    ``extra_token`` adds one more special token (a tokenizer that differs from the default one).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIALS + ([extra_token] if extra_token else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token=None,
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"] + ([extra_token] if extra_token else []),
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llm(
    out_dir: str | Path,
    *,
    arch: str = "qwen2",
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_scale: float = 1.0,
    tokenizer=None,
) -> Path:
    """Write a random-weight causal LM + tokenizer to ``out_dir`` (fp32 safetensors) and return the path.

    ``head_scale`` multiplies the LM-head weights: > 1 makes the next-token distribution peakier (more steps
    with a single plausible candidate).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    tok = tokenizer or build_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        model.get_output_embeddings().weight.mul_(head_scale)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
