"""Pairwise training of the process verifier (``llm2 train-verifier``; paper Eq. 4, LLM2.md section 6).

Data: the JSON Lines of LLM2.md section 5 (what ``llm2 explore`` writes, and the authors' released files). Every
triplet is validated against the chat-template tokens of its solution (:func:`load_pair_data`).

Model: a 1-label token-classification verifier (LLM2.md section 2), initialised from the LLM (new score head) or
continued from a verifier checkpoint (``init_from``). All negatives of a solution are packed into one sequence
(:mod:`verifier_train.packing`), and the loss is

    L = mean over real pairs (t, gold, neg) of  -log sigmoid(s(x_<t, gold) - s(x_<t, neg))      (paper Eq. 4)

averaged over the real pairs of the whole global batch (all gradient-accumulation micro-batches and all processes;
the released code divides by padded slots, we do not).

Training runs through transformers' ``Trainer`` (:class:`VerifierTrainer`): bf16/fp32, gradient checkpointing,
gradient accumulation, cosine schedule with warmup, optional LoRA (peft; the score head stays fully trainable and
LoRA is merged into the final checkpoint), ``accelerate launch`` (DDP, DeepSpeed, FSDP), checkpoints every N steps
and resume. A held-out split reports pair accuracy (``s(gold) > s(neg)``) and loss; logs go to a rich progress bar
and to ``<output>/train_log.jsonl``. The final ``<output>`` is a verifier the ``llm2`` model loads directly, with its
tokenizer and ``training_card.json``.

Python API: ``train_verifier(TrainConfig(model=..., data=[...], output=...))``. CLI: ``train_command`` below.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from llm2_eval.verifier import head_name, verifier_scores
from verifier_train.packing import PackedCollator, PackedExample, additive_mask, pack_solution
from verifier_train.records import JsonlAppender, ReadStats, RecordError, chat_token_ids, check_samples, iter_records

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TRAIN_LOG = "train_log.jsonl"
TRAINING_CARD = "training_card.json"
CHECKPOINTS = "checkpoints"


# --------------------------------------------------------------------------------------------------------------------
# Configuration: every default in one place; the click options are generated from these fields.


def _opt(default: Any, help: str, **cli: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "cli": cli})
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass
class TrainConfig:
    """Settings of one verifier training run (defaults: the authors' released recipe, LLM2.md section 6).

    Batch sizes count solutions (packed sequences), not pairs. Gradient accumulation is derived:
    ``global_batch / (micro_batch * world_size)`` (must divide exactly).
    """

    data: list[str] = _opt([], "JSON Lines file of triplets (LLM2.md section 5); repeat for several files.",
                           multiple=True, required=True)
    output: str = _opt("", "Output directory: the final verifier, train_log.jsonl, training_card.json, checkpoints/.",
                       required=True)
    model: str | None = _opt(None, "LLM directory (or hub id) to initialise the verifier from (new score head).")
    init_from: str | None = _opt(None, "Continue from this verifier checkpoint instead of initialising from --model.")
    lr: float = _opt(2e-5, "Peak learning rate.")
    epochs: float = _opt(2.0, "Training epochs (ignored when --max-steps > 0).")
    global_batch: int = _opt(128, "Solutions per optimizer step, over all devices and accumulation steps.")
    micro_batch: int = _opt(4, "Solutions per device per forward (the accumulation is derived).")
    max_length: int = _opt(2048, "Packed length budget (solution tokens + negatives); pairs beyond it are dropped.")
    warmup_ratio: float = _opt(0.1, "Linear warmup, as a fraction of the training steps.")
    lr_scheduler: str = _opt("cosine", "Learning-rate schedule after warmup (a transformers scheduler name).")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = off).")
    bf16: bool | None = _opt(None, "bf16 mixed precision (--bf16) or fp32 (--fp32); default: bf16 when the device "
                             "supports it.", flag="--bf16/--fp32")
    gradient_checkpointing: bool = _opt(True, "Recompute activations in the backward pass to save memory.",
                                        flag="--gradient-checkpointing/--no-gradient-checkpointing")
    lora: bool = _opt(False, "Train LoRA adapters (peft) instead of all weights; merged into the final checkpoint.",
                      flag="--lora/--no-lora")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA alpha.")
    lora_dropout: float = _opt(0.0, "LoRA dropout.")
    lora_target: str = _opt("all-linear", "LoRA target modules: 'all-linear' or comma-separated module names.")
    save_steps: int = _opt(500, "Save a resumable checkpoint under <output>/checkpoints every N optimizer steps.")
    save_total_limit: int | None = _opt(2, "Keep at most this many intermediate checkpoints (0 = all).")
    resume: bool = _opt(False, "Continue from the last checkpoint in <output>/checkpoints (fresh start if none).",
                        flag="--resume/--no-resume")
    overwrite: bool = _opt(False, "Delete existing checkpoints in <output> instead of refusing to start.",
                           flag="--overwrite/--no-overwrite")
    eval_fraction: float = _opt(0.05, "Fraction of the records held out for evaluation (0 = none).")
    eval_steps: int = _opt(100, "Evaluate on the held-out split every N optimizer steps (and at the end).")
    eval_on_start: bool = _opt(False, "Also evaluate before the first step.", flag="--eval-on-start/--no-eval-on-start")
    logging_steps: int = _opt(10, "Log training loss / pair accuracy every N optimizer steps.")
    seed: int = _opt(0, "Seed of the score head, the held-out split and the data order.")
    on_error: str = _opt("fail", "A bad record: 'fail' (error naming file:line) or 'skip' (counted).",
                         choices=("fail", "skip"))
    max_steps: int = _opt(-1, "Stop after this many optimizer steps (> 0 overrides --epochs; for quick runs).")
    attn_implementation: str = _opt("sdpa", "Attention kernel: sdpa or eager (4-D masks rule out flash-attention).",
                                    choices=("sdpa", "eager"))
    num_workers: int = _opt(0, "DataLoader worker processes.")
    deepspeed: str | None = _opt(None, "DeepSpeed JSON config (also settable through `accelerate launch`).")
    fsdp: str | None = _opt(None, "FSDP options for transformers' Trainer, e.g. 'full_shard auto_wrap'.")
    progress: bool = _opt(True, "Show a rich progress bar.", flag="--progress/--no-progress")
    save_dtype: str = _opt("float32", "dtype of the final verifier's weights: float32 (the training master weights), "
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
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        for name in ("global_batch", "micro_batch", "save_steps", "eval_steps", "logging_steps", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length}: must be >= 2")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={self.eval_fraction}: must be in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs}: must be > 0 (or set max_steps)")


# --------------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class FileStats:
    """What reading one data file gave.

    Attributes:
        path: the file.
        records: records read and validated (skipped ones excluded).
        skipped: ``"file:line: reason"`` for every skipped record (``on_error="skip"``).
        pairs: triplets in the valid records.
        kept_pairs: pairs that fit the ``max_length`` budget.
        dropped_pairs: pairs dropped by truncation (``pairs - kept_pairs``).
        empty_records: valid records left without any pair (no triplets, or all truncated); not trained on.
    """

    path: str
    records: int = 0
    skipped: list[str] = field(default_factory=list)
    pairs: int = 0
    kept_pairs: int = 0
    dropped_pairs: int = 0
    empty_records: int = 0

    def summary(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["skipped_records"] = len(self.skipped)
        out["skipped"] = self.skipped[:20]
        return out


@dataclass
class PairData:
    """Packed solutions split into training and held-out sets.

    Attributes:
        train: packed solutions to train on.
        eval: held-out packed solutions (empty when ``eval_fraction == 0``).
        files: per-file statistics.
    """

    train: list[PackedExample]
    eval: list[PackedExample]
    files: list[FileStats]

    @property
    def train_pairs(self) -> int:
        return sum(e.num_pairs for e in self.train)

    @property
    def eval_pairs(self) -> int:
        return sum(e.num_pairs for e in self.eval)


def load_pair_data(
    paths: Sequence[str | os.PathLike],
    tokenizer: "PreTrainedTokenizerBase",
    *,
    vocab_size: int | None = None,
    max_length: int | None = 2048,
    on_error: str = "fail",
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> PairData:
    """Read, validate, pack and split triplet files (LLM2.md sections 5-6).

    Every triplet is checked against the chat-template tokens of its record
    (:func:`verifier_train.records.chat_token_ids`): ``pos`` inside the sequence, ``input_ids[pos] == gold_id``,
    ids inside the vocabulary, ``neg_id != gold_id``. The held-out split is by record, deterministic in ``seed``.

    Args:
        paths: JSON Lines files.
        tokenizer: the LLM's tokenizer (its chat template defines what ``pos`` indexes).
        vocab_size: upper bound for token ids (the model's embedding rows); default ``len(tokenizer)``.
        max_length: packed-length budget (see :func:`verifier_train.packing.pack_solution`).
        on_error: ``"fail"`` raises at the first bad record; ``"skip"`` counts it in :attr:`FileStats.skipped`.
        eval_fraction: fraction of the non-empty records held out (at least one when > 0 and there are >= 2).
        seed: seed of the split.

    Returns:
        :class:`PairData`.

    Raises:
        FileNotFoundError: a missing file.
        RecordError: (``on_error="fail"``) a malformed record or a triplet that does not match its tokens; the
            message names the file and line.
        ValueError: no trainable pair at all in the files.
    """
    limit = int(vocab_size) if vocab_size else len(tokenizer)
    packed: list[PackedExample] = []
    files: list[FileStats] = []
    for path in paths:
        fs = FileStats(path=str(path))
        rs = ReadStats()
        for rec in iter_records(path, on_error=on_error, stats=rs):  # type: ignore[arg-type]
            try:
                ids = chat_token_ids(tokenizer, rec.messages)
                problem = check_samples(ids, rec.samples, limit)
            except Exception as err:  # a chat template that rejects the messages
                problem = f"cannot apply the chat template: {err}"
            if problem is not None:
                if on_error == "skip":
                    rs.skipped.append(f"{path}:{rec.line}: {problem}")
                    continue
                raise RecordError(path, rec.line, problem)
            fs.records += 1
            fs.pairs += len(rec.samples)
            ex = pack_solution(ids, rec.samples, max_length)
            fs.kept_pairs += ex.num_pairs
            fs.dropped_pairs += ex.dropped_pairs
            if ex.num_pairs == 0:
                fs.empty_records += 1
                continue
            packed.append(ex)
        fs.skipped = list(rs.skipped)
        files.append(fs)
    if not packed:
        detail = "; ".join(f"{f.path}: {f.records} valid records, {len(f.skipped)} skipped" for f in files)
        raise ValueError(f"no trainable pair in the data ({detail})")
    order = list(range(len(packed)))
    random.Random(seed).shuffle(order)
    n_eval = 0
    if eval_fraction > 0 and len(packed) >= 2:
        n_eval = min(max(1, round(eval_fraction * len(packed))), len(packed) - 1)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(packed) if i not in held]
    held_out = [packed[i] for i in sorted(held)]
    return PairData(train=train, eval=held_out, files=files)


class PackedDataset(torch.utils.data.Dataset):
    """A list of :class:`PackedExample` as a map-style dataset (the collator makes tensors)."""

    def __init__(self, examples: Sequence[PackedExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> PackedExample:
        return self.examples[i]


# --------------------------------------------------------------------------------------------------------------------
# Scores and loss


def pair_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], attn_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verifier scores of the gold and negative token of every packed pair, one forward (LLM2.md section 6).

    Args:
        model: a 1-label token-classification verifier (or its peft/DDP wrapper).
        batch: a :class:`verifier_train.packing.PackedCollator` batch on the model's device.
        attn_dtype: dtype of the additive 4-D mask: the dtype attention runs in (the autocast dtype under mixed
            precision); default the model's parameter dtype.

    Returns:
        ``(s_gold, s_neg)``, float32 ``[B, Pmax]``; entries where ``batch["pair_mask"]`` is False are meaningless.
    """
    if attn_dtype is None:
        attn_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    mask = additive_mask(batch["allowed"], attn_dtype)
    out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
    scores = verifier_scores(out)  # [B, T] fp32
    return scores.gather(1, batch["gold_index"]), scores.gather(1, batch["neg_index"])


def pairwise_loss(
    s_gold: torch.Tensor, s_neg: torch.Tensor, pair_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Paper Eq. 4: ``-log sigmoid(s(gold) - s(neg))`` over the real pairs.

    Args:
        s_gold, s_neg: scores ``[..., P]`` (any float dtype; computed in float32).
        pair_mask: bool ``[..., P]``, True for real pairs.
        reduction: ``"mean"`` (over real pairs; 0 when there is none), ``"sum"`` or ``"none"`` (the real pairs'
            losses, flattened).

    Returns:
        A scalar, or a 1-D tensor for ``"none"``.
    """
    diff = (s_gold.float() - s_neg.float())[pair_mask]
    losses = -F.logsigmoid(diff)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / max(int(pair_mask.sum()), 1)
    raise ValueError(f"reduction={reduction!r}: use mean, sum or none")


def _eval_metrics(pred: Any) -> dict[str, float]:
    """compute_metrics for the Trainer: predictions ``[N, P, 2]`` (s_gold, s_neg), labels ``[N, P]`` (1 = real)."""
    import numpy as np

    scores = np.asarray(pred.predictions, dtype=np.float64)
    labels = np.asarray(pred.label_ids)
    real = labels == 1
    g, n = scores[..., 0][real], scores[..., 1][real]
    if g.size == 0:
        return {"loss": float("nan"), "pair_accuracy": float("nan"), "pairs": 0}
    d = g - n
    loss = np.logaddexp(0.0, -d).mean()  # -log sigmoid(d)
    return {"loss": float(loss), "pair_accuracy": float((d > 0).mean()), "pairs": int(g.size)}


# --------------------------------------------------------------------------------------------------------------------
# Trainer


class VerifierTrainer(Trainer):
    """transformers' Trainer with the pairwise loss of paper Eq. 4 over packed solutions.

    - ``get_batch_samples`` counts the real pairs of the whole accumulated global batch (all processes), and
      ``compute_loss`` divides each micro-batch's loss sum by it, so one optimizer step minimises the mean over
      the real pairs of the global batch exactly (``loss_is_scaled_for_ga``).
    - ``prediction_step`` returns ``(s_gold, s_neg)`` per pair; the held-out metrics (pair accuracy, loss over
      real pairs) are computed from all of them.
    - Training pair accuracy since the last log is added to the logs as ``pair_accuracy``.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # transformers < 5 reads this flag instead of loss_is_scaled_for_ga
        self.model_accepts_loss_kwargs = True
        self._pair_stats = torch.zeros(2, dtype=torch.float64)  # correct, count (since the last log)

    def attn_dtype(self, model: torch.nn.Module) -> torch.dtype:
        """dtype attention runs in: the mixed-precision dtype, else the parameters'."""
        if self.args.bf16:
            return torch.bfloat16
        if self.args.fp16:
            return torch.float16
        return next(p.dtype for p in model.parameters() if p.is_floating_point())

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # noqa: D102
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        n = sum(int(b["pair_mask"].sum()) for b in batch_samples)
        n = torch.tensor([float(n)], device=device)
        if self.accelerator.num_processes > 1:
            n = self.accelerator.gather(n).sum().reshape(1)
        return batch_samples, n[0].clamp(min=1.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        s_gold, s_neg = pair_scores(model, inputs, self.attn_dtype(model))
        mask = inputs["pair_mask"]
        total = pairwise_loss(s_gold, s_neg, mask, reduction="sum")
        if num_items_in_batch is not None and model.training:
            loss = total / num_items_in_batch * self.accelerator.num_processes
        else:
            loss = total / mask.sum().clamp(min=1)
        if model.training:
            with torch.no_grad():
                correct = (s_gold > s_neg)[mask].sum()
                self._pair_stats += torch.stack([correct, mask.sum()]).double().cpu()
        if return_outputs:
            return loss, {"s_gold": s_gold, "s_neg": s_neg}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: D102
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            s_gold, s_neg = pair_scores(model, inputs, self.attn_dtype(model))
        return None, torch.stack([s_gold, s_neg], dim=-1), inputs["pair_mask"].long()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:  # noqa: D102
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            stats = self._pair_stats.to(self.args.device)
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            if float(stats[1]) > 0:
                logs["pair_accuracy"] = round(float(stats[0] / stats[1]), 6)
                logs["pairs"] = int(stats[1])
            self._pair_stats.zero_()
        super().log(logs, *args, **kwargs)


class JsonLogCallback(TrainerCallback):
    """Appends every Trainer log (training and held-out metrics) as one JSON line to ``log_path``
    (``train_log.jsonl``): ``{"step", "epoch", "time", ...the logged values}``; main process only."""

    def __init__(self, log_path: str | os.PathLike) -> None:
        self.log_path = Path(log_path)
        self.writer: JsonlAppender | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.writer is None:
            self.writer = JsonlAppender(self.log_path, key="step")
        rec = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(time.time(), 3)}
        rec.update({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in logs.items()})
        self.writer.write(rec)

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RichProgressCallback(TrainerCallback):
    """A rich progress bar over optimizer steps (and held-out batches), with log lines printed above it."""

    def __init__(self) -> None:
        self.progress = None
        self.task = None
        self.eval_task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.progress is None:
            return
        if self.eval_task is None:
            total = len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") \
                else None
            self.eval_task = self.progress.add_task("eval", total=total, info="")
        self.progress.advance(self.eval_task)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        shown = {k: v for k, v in logs.items() if not k.endswith(("_runtime", "_per_second", "total_flos"))}
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        self.progress.console.print(f"step {state.global_step}: {text}")
        if "loss" in logs:
            info = f"loss {logs['loss']:.4f}"
            if "pair_accuracy" in logs:
                info += f" acc {logs['pair_accuracy']:.3f}"
            self.progress.update(self.task, info=info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    """What :func:`train_verifier` produced.

    Attributes:
        output_dir: the final verifier checkpoint (loadable by :func:`llm2_eval.verifier.load_verifier`).
        global_step: optimizer steps done in total (including those before a resume).
        metrics: final held-out metrics (``eval_loss``, ``eval_pair_accuracy``, ``eval_pairs``) and training
            summary (``train_loss``, ...).
        card: the content of ``training_card.json``.
    """

    output_dir: Path
    global_step: int
    metrics: dict[str, Any]
    card: dict[str, Any]


def bf16_supported() -> bool:
    """Whether bf16 mixed precision is sensible here: a bf16-capable GPU, or a CPU with AVX512-BF16 / AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cast_checkpoint(directory: str | os.PathLike, dtype: str) -> None:
    """Rewrite a saved checkpoint's floating-point weights in ``dtype`` (in place, file by file).

    Every ``*.safetensors`` file of ``directory`` is rewritten through a temporary file and an atomic rename;
    ``config.json``'s dtype and a shard index's ``total_size`` are updated to match. Integer tensors are kept.

    Args:
        directory: a ``save_pretrained`` directory.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.

    Raises:
        FileNotFoundError: ``directory`` holds no ``*.safetensors`` file.
        ValueError: an unknown ``dtype`` (from :func:`llm2_eval.verifier.resolve_dtype`).
    """
    from safetensors.torch import load_file, save_file

    from llm2_eval.verifier import resolve_dtype

    target = resolve_dtype(dtype)
    d = Path(directory)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {d} to cast to {dtype}")
    total = 0
    for f in files:
        tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in load_file(f).items()}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        tmp = f.with_name(f.name + ".partial")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, f)
    index = d / "model.safetensors.index.json"
    if index.exists():
        meta = json.loads(index.read_text(encoding="utf-8"))
        meta.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    cfg_path = d / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        key = "dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"
        cfg[key] = str(target).removeprefix("torch.")
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _load_model(cfg: TrainConfig) -> "PreTrainedModel":
    from transformers import AutoConfig, AutoModelForTokenClassification

    src = cfg.init_from or cfg.model
    mconf = AutoConfig.from_pretrained(str(src), num_labels=1)
    if cfg.init_from and getattr(mconf, "num_labels", None) != 1:
        raise ValueError(f"--init-from {cfg.init_from}: not a 1-label verifier checkpoint")
    mconf.classifier_dropout = 0.0
    mconf.use_cache = False
    torch.manual_seed(cfg.seed)  # the new score head's initialisation
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if not cfg.init_from:  # the load report would only say "lm_head unused, score head new", which is the plan
        hf_logging.set_verbosity_error()
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            str(src), config=mconf, dtype=torch.float32, attn_implementation=cfg.attn_implementation
        )
    except ValueError as err:
        raise ValueError(f"cannot build a token-classification verifier from {src}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def _apply_lora(cfg: TrainConfig, model: "PreTrainedModel"):
    from peft import LoraConfig, TaskType, get_peft_model

    head = head_name(model)
    target: Any = cfg.lora_target
    if target != "all-linear":
        target = [t.strip() for t in target.split(",") if t.strip()]
    lcfg = LoraConfig(
        task_type=TaskType.TOKEN_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=target, modules_to_save=[head],
    )
    return get_peft_model(model, lcfg)


def _training_args(cfg: TrainConfig, ckpt_dir: Path, has_eval: bool, bf16: bool):
    import inspect

    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    kw: dict[str, Any] = dict(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.micro_batch,
        per_device_eval_batch_size=cfg.micro_batch,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else -1,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit if cfg.save_total_limit and cfg.save_total_limit > 0 else None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps if has_eval else None,
        eval_on_start=bool(cfg.eval_on_start and has_eval),
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
    )
    ckpt_name = "activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"
    kw[ckpt_name] = cfg.gradient_checkpointing
    if cfg.gradient_checkpointing:
        kw[ckpt_name + "_kwargs"] = {"use_reentrant": False}
    if "warmup_ratio" in params:  # transformers 4.x
        kw["warmup_ratio"] = cfg.warmup_ratio
    else:  # transformers 5: a float < 1 is a ratio
        kw["warmup_steps"] = float(cfg.warmup_ratio)
    if cfg.deepspeed:
        kw["deepspeed"] = cfg.deepspeed
    if cfg.fsdp:
        kw["fsdp"] = cfg.fsdp
    if not torch.cuda.is_available() and "use_cpu" in params:
        kw["use_cpu"] = True
    return TrainingArguments(**kw)


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    found = get_last_checkpoint(str(ckpt_dir))
    return Path(found) if found else None


def _checkpoint_step(path: Path) -> int:
    state = path / "trainer_state.json"
    if state.exists():
        return int(json.loads(state.read_text()).get("global_step", 0))
    return int(path.name.rsplit("-", 1)[-1])


def _trim_log(path: Path, keep_up_to: int | None) -> None:
    """Start ``train_log.jsonl`` afresh (``keep_up_to=None``) or keep only lines of steps ``<= keep_up_to`` (resume),
    so a resumed run does not repeat the steps an interrupted run logged after its last checkpoint."""
    if not path.exists():
        return
    if keep_up_to is None:
        path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= keep_up_to:
                kept.append(line)
        except (ValueError, AttributeError, TypeError):
            continue
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def train_verifier(config: TrainConfig) -> TrainResult:
    """Train a process verifier with the pairwise loss (paper Eq. 4; LLM2.md section 6).

    Steps: read and validate the data (:func:`load_pair_data`), initialise the verifier from ``config.model`` (a
    new 1-output head) or ``config.init_from``, optionally wrap it with LoRA, train with :class:`VerifierTrainer`,
    evaluate on the held-out split, and save the final verifier (merged, safetensors, with tokenizer and
    ``training_card.json``) to ``config.output``. Logs go to ``<output>/train_log.jsonl``; resumable Trainer
    checkpoints to ``<output>/checkpoints``. Under ``accelerate launch`` every process runs this function.

    Args:
        config: the settings (:class:`TrainConfig`).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: bad settings, a global batch that the micro-batch x world size does not divide, a model that
            cannot become a 1-label token classifier, or data without any trainable pair.
        RecordError: a bad record with ``on_error="fail"`` (names the file and line).
        FileExistsError: checkpoints already in ``<output>`` without ``resume`` or ``overwrite``.
    """
    from transformers import AutoConfig, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    config.check()
    t0 = time.time()
    out = Path(config.output)
    ckpt_dir = out / CHECKPOINTS
    resume_from = _last_checkpoint(ckpt_dir) if config.resume else None
    rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch / torchrun
    main_proc = rank == 0
    console = _console()
    if not config.resume and _last_checkpoint(ckpt_dir) is not None:
        if not config.overwrite:
            raise FileExistsError(
                f"{ckpt_dir} already holds checkpoints: pass resume (--resume) to continue, overwrite (--overwrite) "
                "to start over, or choose another output directory"
            )
        if main_proc:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            (out / TRAIN_LOG).unlink(missing_ok=True)
    if config.resume and resume_from is None and main_proc:
        console.print(f"[yellow]--resume: no checkpoint in {ckpt_dir}, starting from scratch[/yellow]")
    if main_proc:  # the log holds this run's history: steps up to the resumed checkpoint, then this run's lines
        _trim_log(out / TRAIN_LOG, _checkpoint_step(resume_from) if resume_from else None)

    src = config.init_from or config.model
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    # validate the data before loading the weights: a bad line fails fast, even for a large model
    vocab = getattr(AutoConfig.from_pretrained(str(src)), "vocab_size", None) or len(tokenizer)
    data = load_pair_data(
        config.data, tokenizer, vocab_size=int(vocab), max_length=config.max_length, on_error=config.on_error,
        eval_fraction=config.eval_fraction, seed=config.seed,
    )
    model = _load_model(config)
    bf16 = bf16_supported() if config.bf16 is None else bool(config.bf16)
    args = _training_args(config, ckpt_dir, bool(data.eval), bf16)
    per_step = args.train_batch_size * max(args.world_size, 1)
    if config.global_batch % per_step:
        raise ValueError(
            f"global batch {config.global_batch} is not a multiple of micro batch {config.micro_batch} x "
            f"{args.world_size} process(es) x {max(args.n_gpu, 1)} GPU(s) per process = {per_step}"
        )
    args.gradient_accumulation_steps = config.global_batch // per_step
    world = max(args.world_size, 1)

    if main_proc:
        for fs in data.files:
            console.print(
                f"{fs.path}: {fs.records} records, {fs.kept_pairs}/{fs.pairs} pairs kept "
                f"({fs.dropped_pairs} dropped by max_length {config.max_length}), {len(fs.skipped)} records skipped, "
                f"{fs.empty_records} without pairs"
            )
        console.print(
            f"train: {len(data.train)} solutions / {data.train_pairs} pairs; held out: {len(data.eval)} / "
            f"{data.eval_pairs}; global batch {config.global_batch} = {config.micro_batch} x {world} x "
            f"{args.gradient_accumulation_steps} accumulation; {'bf16' if bf16 else 'fp32'}"
            + (f"; resuming from {resume_from}" if resume_from else "")
        )

    train_model = _apply_lora(config, model) if config.lora else model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    trainer = VerifierTrainer(
        model=train_model,
        args=args,
        train_dataset=PackedDataset(data.train),
        eval_dataset=PackedDataset(data.eval) if data.eval else None,
        data_collator=PackedCollator(pad_token_id=pad_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        processing_class=tokenizer,
        compute_metrics=_eval_metrics,
        callbacks=[JsonLogCallback(out / TRAIN_LOG)]
        + ([RichProgressCallback()] if config.progress and main_proc else []),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics: dict[str, Any] = dict(train_out.metrics)
    if data.eval:
        last = [h for h in trainer.state.log_history if "eval_pair_accuracy" in h]
        if last and last[-1].get("step") == trainer.state.global_step:  # the schedule just evaluated
            metrics.update({k: v for k, v in last[-1].items() if k.startswith("eval_")})
        else:
            metrics.update(trainer.evaluate())

    # final checkpoint: a plain 1-label token-classification verifier (LoRA merged), with tokenizer and card
    final = trainer.model
    if config.lora:
        final = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    final.config.use_cache = True
    final.config.llm2_verifier = {"base_model": str(config.model or config.init_from), "head": head_name(final),
                                  "num_labels": 1}
    if config.lora:
        if trainer.is_world_process_zero():
            final.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if config.save_dtype != "float32" and trainer.is_world_process_zero():
        try:
            cast_checkpoint(out, config.save_dtype)
        except FileNotFoundError as err:  # e.g. a DeepSpeed/FSDP save in another format: keep it as saved
            console.print(f"[yellow]--save-dtype {config.save_dtype}: {err}; the checkpoint stays as saved[/yellow]")
    card = {
        "kind": "llm2-verifier",
        "paper": "LLM2 (Yang et al., NAACL 2025), Eq. 4 pairwise loss",
        "base_model": config.model,
        "init_from": config.init_from,
        "data": [fs.summary() for fs in data.files],
        "train": {"solutions": len(data.train), "pairs": data.train_pairs},
        "eval": {"solutions": len(data.eval), "pairs": data.eval_pairs},
        "settings": {
            **dataclasses.asdict(config),
            "bf16": bf16,
            "world_size": world,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
        "resumed_from": str(resume_from) if resume_from else None,
        "global_step": trainer.state.global_step,
        "final_metrics": _jsonable(metrics),
        "wall_time_s": round(time.time() - t0, 3),
        "versions": _versions(),
    }
    if trainer.is_world_process_zero():
        tmp = out / (TRAINING_CARD + ".partial")
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / TRAINING_CARD)
        (out / "training_args.bin").unlink(missing_ok=True)
    return TrainResult(output_dir=out, global_step=trainer.state.global_step, metrics=metrics, card=card)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("llm2-eval", "transformers", "torch", "accelerate", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------------------------------
# CLI: one click option per TrainConfig field


def _click_options(fn):
    import typing

    hints = typing.get_type_hints(TrainConfig)
    for f in reversed(dataclasses.fields(TrainConfig)):
        meta = dict(f.metadata.get("cli", {}))
        name = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore
        kw: dict[str, Any] = {"help": f.metadata.get("help", ""), "show_default": True}
        flag = meta.pop("flag", None)
        if flag:
            decl = [flag, f.name]
            kw["default"] = default
            if default is None:
                kw["show_default"] = False
        elif meta.pop("multiple", False):
            decl = [name, f.name]
            kw.update(multiple=True, type=click.Path(dir_okay=False), required=meta.pop("required", False))
            kw["show_default"] = False
        else:
            decl = [name, f.name]
            choices = meta.pop("choices", None)
            hint = hints[f.name]
            base = {int: int, float: float, str: str}.get(hint if hint in (int, float, str) else None, None)
            if base is None:  # Optional[...] types
                args_ = [a for a in typing.get_args(hint) if a is not type(None)]
                base = args_[0] if args_ and args_[0] in (int, float, str) else str
            kw["type"] = click.Choice(choices) if choices else base
            kw["required"] = meta.pop("required", False)
            if kw["required"]:
                kw["show_default"] = False
            else:
                kw["default"] = default
        fn = click.option(*decl, **kw)(fn)
    return fn


@click.command("train-verifier")
@_click_options
def train_command(**kwargs: Any) -> None:
    """Train a process verifier with the pairwise loss (LLM2 paper Eq. 4, LLM2.md section 6).

    Example: ``llm2 train-verifier --model LLM_DIR --data triplets.jsonl --output verifier/``;
    multi-GPU / multi-node: ``accelerate launch [--config_file deepspeed_or_fsdp.yaml] -m llm2_eval.cli
    train-verifier ...`` (or ``torchrun --nproc_per_node N -m llm2_eval.cli train-verifier ...``).
    """
    kwargs["data"] = list(kwargs.get("data") or [])
    config = TrainConfig(**kwargs)
    try:
        result = train_verifier(config)
    except (RecordError, ValueError, FileExistsError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return
    m = result.metrics
    summary = {k: m[k] for k in ("eval_pair_accuracy", "eval_loss", "train_loss") if k in m}
    click.echo(json.dumps({"output": str(result.output_dir), "global_step": result.global_step, **summary}))
