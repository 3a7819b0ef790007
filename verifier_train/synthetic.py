"""A synthetic arithmetic world where the answer is known: the end-to-end learning check of LLM2.

The question this module answers: does the whole loop -- ``llm2 explore`` (rollout labels) ->
``llm2 train-verifier`` (pairwise loss) -> LLM2 decoding -- produce a verifier that helps? Each piece has unit
tests; only a world where the right decision is known shows that the pieces fit (a flipped label convention, a
position off by one between exploration and training, or a sign in the fusion all make the check fail).

The world (deterministic for a seed):

* Problems in the GSM8K JSONL format (``question``, ``answer`` ending in ``#### N``): a start value and two
  additions, e.g. ``Sam has 17 apples . Sam gets 5 more . Then Sam gets 8 more . How many apples does Sam have ?``
  with the answer ``17 + 5 = 22 .\\n22 + 8 = 30 .\\n#### 30``, so ``llm2 explore`` reads them unchanged.
* A WordPiece tokenizer (a number is its tens digit, then its ones digit) with a chat template, built locally.
* A tiny causal LM (Llama architecture) trained from scratch on solutions with a *systematic* error: an addition
  that needs a carry drops it with probability ``p_drop`` (``17 + 5 = 12``), and one that needs none slips its
  ones digit one too low with probability ``p_slip`` (``12 + 3 = 14``). With ``p_drop > 0.5`` greedy decoding is
  wrong at every carry (the tens digit), while the right digit keeps probability ``1 - p_drop``, inside the
  plausible set (``alpha = 0.1``); with ``p_slip < 0.5`` greedy is right where no carry is needed, with the slip
  plausible. Greedy is right only on problems without a carry (about one in eight).

A verifier that learned the right preference moves the carry steps onto the right tens digit (LLM2 far above
greedy); one trained with the preference reversed moves the no-carry steps onto the slipped ones digit (below
greedy: the errors never cancel). The loop itself is in :mod:`verifier_train.learning_check`.

Example::

    python benchmarks/learning.py --workdir /tmp/llm2-learning
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

from verifier_train.records import chat_token_ids, response_start

NAMES = ("Sam", "Ana", "Tom", "Mia", "Leo", "Ivy")
ITEMS = ("apples", "eggs", "books", "coins", "cards", "shells")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<unk>")
WORDS = (
    "user assistant has gets more . Then How many does have ? + = The answer is".split() + list(NAMES) + list(ITEMS)
)


@dataclass
class World:
    """The settings of the synthetic world.

    Attributes:
        start: inclusive range of the start value.
        addend: inclusive range of each added value.
        steps: additions per problem.
        p_drop: probability that the flawed LLM's training solutions drop a needed carry.
        p_slip: probability that they write the ones digit one too low where no carry is needed.
    """

    start: tuple[int, int] = (10, 39)
    addend: tuple[int, int] = (1, 9)
    steps: int = 2
    p_drop: float = 0.75
    p_slip: float = 0.25


def needs_carry(x: int, b: int) -> bool:
    """Whether ``x + b`` crosses a multiple of ten (the ones digits overflow)."""
    return x % 10 + b >= 10


def flawed_sum(x: int, b: int, rng: random.Random, world: World) -> int:
    """The value the flawed training solutions write for ``x + b``: a needed carry dropped with probability
    ``p_drop`` (``x + b - 10``), else, where no carry is needed, the ones digit one too low with probability
    ``p_slip`` (``x + b - 1``; the ones digit of such a sum is >= 1, so the tens digit stays). The two errors never
    cancel out over a chain (every error lowers the value), so a problem is right iff every step is."""
    if needs_carry(x, b):
        return x + b - 10 if rng.random() < world.p_drop else x + b
    return x + b - 1 if rng.random() < world.p_slip else x + b


def make_problem(rng: random.Random, world: World) -> dict[str, Any]:
    """One problem: ``{"question", "answer", "start", "addends"}`` with a GSM8K-style ``answer`` (``#### N``)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    x = rng.randint(*world.start)
    addends = [rng.randint(*world.addend) for _ in range(world.steps)]
    parts = [f"{name} has {x} {item} .", f"{name} gets {addends[0]} more ."]
    parts += [f"Then {name} gets {b} more ." for b in addends[1:]]
    parts.append(f"How many {item} does {name} have ?")
    return {"question": " ".join(parts), "answer": solution_text(x, addends) + f"\n#### {x + sum(addends)}",
            "start": x, "addends": addends}


def solution_text(x: int, addends: Sequence[int], values: Sequence[int] | None = None) -> str:
    """The solution lines ``x + b = value .`` (``values``: what is written at each step; default the right sums)."""
    lines = []
    for i, b in enumerate(addends):
        v = values[i] if values is not None else x + b
        lines.append(f"{x} + {b} = {v} .")
        x = v
    return "\n".join(lines)


def flawed_solution(problem: dict[str, Any], rng: random.Random, world: World) -> str:
    """A training solution of the flawed LLM: every step adds to the value written before (errors propagate)."""
    x, values = problem["start"], []
    for b in problem["addends"]:
        x = flawed_sum(x, b, rng, world)
        values.append(x)
    return solution_text(problem["start"], problem["addends"], values) + f"\nThe answer is {values[-1]} ."


def make_problems(n: int, seed: int, world: World | None = None) -> list[dict[str, Any]]:
    """``n`` problems from a seeded generator (the same ``(n, seed)`` always gives the same list)."""
    world = world or World()
    rng = random.Random(seed)
    return [make_problem(rng, world) for _ in range(n)]


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON Lines (GSM8K format: ``question`` and ``answer`` keys, extra keys ignored by readers)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------- tokenizer + LLM


def build_tokenizer():
    """A WordPiece ``PreTrainedTokenizerFast`` for the world: specials, the template words, the digits ``0``-``9``
    and their continuations ``##0``-``##9`` (``34`` is ``3`` + ``##4``: the tens digit is its own decision, the one
    a dropped carry gets wrong), punctuation; a ChatML-style chat template (end of turn ``<|im_end|>``, also EOS).

    The model that goes with it is a Llama: transformers 5 replaces the tokenizer of a saved Qwen2 checkpoint by
    its own Qwen2 tokenizer class on ``AutoTokenizer.from_pretrained``; for Llama it keeps ours.
    """
    vocab: dict[str, int] = {}
    for w in (*SPECIALS, *WORDS, *(str(i) for i in range(10)), *(f"##{i}" for i in range(10))):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # "3 ##4" -> "34", words joined by spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>", bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass
class LLMTraining:
    """How the flawed tiny LLM is trained (from scratch, CPU, about half a minute).

    The ones digit of a sum (``(x + b) mod 10``) is learned late: the loss plateaus for ~500 steps, then the
    table is learned within ~200 (measured: ones-digit probability 0.1 -> 0.99 between steps 500 and 700 at these
    settings), hence ~800 steps of small batches rather than fewer large ones.

    Attributes:
        problems: training solutions (fresh problems, each with its own flawed solution).
        epochs: passes over them.
        batch: sequences per optimizer step.
        lr: AdamW learning rate (20 warmup steps, then cosine decay to 10%).
        hidden, layers, heads: model size (Llama architecture, untied embeddings).
        seed: problems, flaws and initial weights.
    """

    problems: int = 2000
    epochs: int = 13
    batch: int = 32
    lr: float = 5e-3
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    seed: int = 1234


def train_flawed_llm(out_dir: str | Path, world: World | None = None, cfg: LLMTraining | None = None) -> Path:
    """Train the tiny flawed LLM of the world and save it (fp32 safetensors + tokenizer) to ``out_dir``.

    The loss is next-token cross-entropy on the assistant tokens of ``[user: question, assistant: flawed
    solution]`` through the chat template, so the model learns the template, the answer sentence and EOS.

    Returns:
        ``out_dir`` as a Path.
    """
    world, cfg = world or World(), cfg or LLMTraining()
    tok = build_tokenizer()
    rng = random.Random(cfg.seed)
    seqs: list[tuple[list[int], int]] = []
    for _ in range(cfg.problems):
        prob = make_problem(rng, world)
        msgs = [{"role": "user", "content": prob["question"]},
                {"role": "assistant", "content": flawed_solution(prob, rng, world)}]
        seqs.append((chat_token_ids(tok, msgs), response_start(tok, msgs)))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 4, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, max_position_embeddings=256,
        eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, start) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, start : len(s)] = torch.tensor(s[start:])
    steps = cfg.epochs * ((len(seqs) + cfg.batch - 1) // cfg.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(seqs), generator=gen)
        for b in range(0, len(seqs), cfg.batch):
            idx = order[b : b + cfg.batch]
            n = int(mask[idx].sum(-1).max())
            out = model(input_ids=ids[idx, :n], attention_mask=mask[idx, :n], labels=labels[idx, :n])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id, do_sample=False)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
