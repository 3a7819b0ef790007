"""The settings of ``llm2 train-verifier``: one dataclass, every default in one place (docs/method.md section 6).

Each field carries its help text (and Click details) in its metadata (:func:`verifier_train.cli_options.option`);
:mod:`verifier_train.train.cli` generates the command's options from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from verifier_train.cli_options import option

TRAIN_LOG = "train_log.jsonl"
TRAINING_CARD = "training_card.json"
CHECKPOINTS = "checkpoints"
#: default ``head_lr`` = this x ``lr`` (measured: docs/learning-check.md, "Head learning rate")
HEAD_LR_FACTOR = 50.0


def bf16_supported() -> bool:
    """Whether bf16 mixed precision is sensible here: a bf16-capable GPU, or a CPU with AVX512-BF16 / AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class TrainConfig:
    """Settings of one verifier training run (defaults: the authors' released recipe, docs/method.md section 6).

    Batch sizes count solutions (packed sequences), not pairs. Gradient accumulation is derived:
    ``global_batch / (micro_batch * world_size)`` (must divide exactly).
    """

    data: list[str] = option(  # noqa: RUF009 (option() returns a dataclasses.field)
        help="JSON Lines file of triplets (docs/method.md section 5); repeat for several files.", factory=list,
        multiple=True, required=True, path=True)
    output: str = option("", "Output directory: the final verifier, train_log.jsonl, training_card.json, checkpoints/.",
                         required=True)
    model: str | None = option(None, "LLM directory (or hub id) to initialise the verifier from (new score head).")
    init_from: str | None = option(None, "Continue from this verifier checkpoint instead of initialising from --model.")
    chat_template: str | None = option(None, "Jinja chat-template file the data's positions were made with (default: "
                                       "the tokenizer's own); recorded in the training card and saved with the "
                                       "verifier's tokenizer.")
    head_init: str = option("zero", "The new score head of --model: 'zero' (all scores 0 until trained, so the "
                            "untrained verifier changes nothing) or 'normal' (transformers' random init). Ignored "
                            "with --init-from.", choices=("zero", "normal"))
    lr: float = option(2e-5, "Peak learning rate.")
    head_lr: float | None = option(None, f"Peak learning rate of the score head (default: {HEAD_LR_FACTOR:g} x --lr). "
                                   "A zero head passes no gradient to the backbone until it moves.")
    epochs: float = option(2.0, "Training epochs (ignored when --max-steps > 0).")
    global_batch: int = option(128, "Solutions per optimizer step, over all devices and accumulation steps.")
    micro_batch: int = option(4, "Solutions per device per forward (the accumulation is derived).")
    max_length: int = option(2048, "Packed length budget (solution tokens + negatives); pairs beyond it are dropped.")
    warmup_ratio: float = option(0.1, "Linear warmup, as a fraction of the training steps.")
    lr_scheduler: str = option("cosine", "Learning-rate schedule after warmup (a transformers scheduler name).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 = off).")
    loss_normalization: str = option("pairs", "Pairwise-loss normalisation: 'pairs' (mean over the real pairs of the "
                                     "global batch) or 'official' (the authors': per micro-batch, sum over real "
                                     "pairs / (solutions x max pairs) slots, then averaged; steps scaled by "
                                     "real/padded slots). See verifier_train/train/loss.py.",
                                     choices=("pairs", "official"))
    bf16: bool | None = option(None, "bf16 mixed precision (--bf16) or fp32 (--fp32); default: bf16 when the device "
                               "supports it.", name="--bf16/--fp32")
    gradient_checkpointing: bool = option(True, "Recompute activations in the backward pass to save memory.")
    lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights; see --lora-save for the final save.")
    lora_save: str = option("merged", "With --lora, the final verifier: 'merged' (a plain full checkpoint) or "
                            "'adapter' (a PEFT adapter directory with the score head, a few MB, loaded on its base "
                            "model's weights: shared with the LLM when it is the base).", choices=("merged", "adapter"))
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target: str = option("all-linear", "LoRA target modules: 'all-linear' or comma-separated module names.")
    trainable: str = option("full", "What trains: 'full' (all weights), 'lora' (as --lora) or 'head' (a score head on "
                            "the frozen LLM's cached hidden states: a few kB, trained in minutes; "
                            "verifier_train/train/head.py).", choices=("full", "lora", "head"))
    objective: str = option("pairwise", "'pairwise' (paper Eq. 4, triplet files) or 'outcome' (BCE of every "
                            "response token's score against its sample's outcome, files of llm2 explore --strategy "
                            "outcome).", choices=("pairwise", "outcome"))
    head: str = option("linear", "--trainable head: the head, 'linear' or 'mlp' (one GELU layer of --head-hidden).",
                       choices=("linear", "mlp"))
    head_hidden: int = option(256, "--head mlp: its hidden size.")
    head_dropout: float = option(0.0, "--trainable head: dropout on the hidden state the head reads, while training.")
    head_batch: int = option(4096, "--trainable head: tokens (outcome) or pairs (pairwise) per optimizer step.")
    balance: bool = option(False, "--objective outcome: give the right and the wrong samples of a question equal "
                           "weight.")
    feature_cache: str | None = option(None, "--trainable head: where cached hidden states live (default "
                                       "~/.cache/llm2-eval/features; reused by runs with the same model and data).")
    save_steps: int = option(500, "Save a resumable checkpoint under <output>/checkpoints every N optimizer steps.")
    save_total_limit: int | None = option(2, "Keep at most this many intermediate checkpoints (0 = all).")
    resume: bool = option(False, "Continue from the last checkpoint in <output>/checkpoints (fresh start if none).")
    overwrite: bool = option(False, "Delete existing checkpoints in <output> instead of refusing to start (and write "
                             "over a model in <output> that llm2 did not write; an input is never an output).")
    eval_fraction: float = option(0.05, "Fraction of the questions (records with one prompt) held out for "
                                  "evaluation (0 = none).")
    eval_steps: int = option(100, "Evaluate on the held-out split every N optimizer steps (and at the end).")
    eval_on_start: bool = option(False, "Also evaluate before the first step.")
    logging_steps: int = option(10, "Log training loss / pair accuracy every N optimizer steps.")
    seed: int = option(0, "Seed of the score head, the held-out split and the data order.")
    on_error: str = option("fail", "A bad record: 'fail' (error naming file:line) or 'skip' (counted).",
                           choices=("fail", "skip"))
    max_steps: int = option(-1, "Stop after this many optimizer steps (> 0 overrides --epochs; for quick runs).")
    attn_implementation: str = option("sdpa", "Attention kernel: sdpa or eager (4-D masks rule out flash-attention).",
                                      choices=("sdpa", "eager"))
    num_workers: int = option(0, "DataLoader worker processes.")
    deepspeed: str | None = option(None, "DeepSpeed JSON config (also settable through `accelerate launch`).")
    fsdp: str | None = option(None, "FSDP options for transformers' Trainer, e.g. 'full_shard auto_wrap'.")
    progress: bool = option(True, "Show a rich progress bar.")
    save_dtype: str = option("float32", "dtype of the final verifier's weights: float32 (the training master weights), "
                             "bfloat16 or float16 (half the disk; what decoding loads anyway).",
                             choices=("float32", "bfloat16", "float16"))

    def check(self) -> None:
        """Validate the settings.

        Raises:
            ValueError: naming the first bad setting.
        """
        if not self.data:
            raise ValueError("no data: give at least one JSON Lines file")
        if not self.output:
            raise ValueError("no output directory")
        if not self.model and not self.init_from:
            raise ValueError("give --model (an LLM to initialise from) or --init-from (a verifier checkpoint)")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error={self.on_error!r}: use 'fail' or 'skip'")
        if self.loss_normalization not in ("pairs", "official"):
            raise ValueError(f"loss_normalization={self.loss_normalization!r}: use 'pairs' or 'official'")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ValueError(f"head_lr={self.head_lr}: must be > 0")
        if self.lora_save not in ("merged", "adapter"):
            raise ValueError(f"lora_save={self.lora_save!r}: use 'merged' or 'adapter'")
        if self.lora_save == "adapter" and not self.lora:
            raise ValueError("--lora-save adapter needs --lora (only LoRA training has an adapter to save)")
        if self.head_init not in ("zero", "normal"):
            raise ValueError(f"head_init={self.head_init!r}: use 'zero' or 'normal'")
        for name in ("global_batch", "micro_batch", "save_steps", "eval_steps", "logging_steps", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length}: must be >= 2")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={self.eval_fraction}: must be in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.trainable not in ("full", "lora", "head"):
            raise ValueError(f"trainable={self.trainable!r}: use full, lora or head")
        if self.objective not in ("pairwise", "outcome"):
            raise ValueError(f"objective={self.objective!r}: use pairwise or outcome")
        if self.trainable == "lora":
            self.lora = True
        if self.trainable == "head" and (self.lora or self.init_from):
            raise ValueError("--trainable head trains a head on the frozen LLM (--model): no --lora, no --init-from")
        if int(self.head_batch) < 1 or int(self.head_hidden) < 1 or not 0.0 <= float(self.head_dropout) < 1.0:
            raise ValueError("head_batch and head_hidden must be >= 1 and head_dropout in [0, 1)")
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs}: must be > 0 (or set max_steps)")

    @property
    def resolved_head_lr(self) -> float:
        """The score head's peak learning rate in effect (``head_lr``, else ``HEAD_LR_FACTOR * lr``)."""
        return float(self.head_lr) if self.head_lr is not None else HEAD_LR_FACTOR * float(self.lr)

    @property
    def resolved_bf16(self) -> bool:
        """Whether the run uses bf16: ``bf16``, or when not set (None), :func:`bf16_supported`."""
        return bf16_supported() if self.bf16 is None else bool(self.bf16)
