"""A verifier training run, end to end (``llm2 train-verifier``; paper Eq. 4, docs/method.md section 6).

Data: the JSON Lines of docs/method.md section 5 (what ``llm2 explore`` writes, and the authors' released files), every
triplet validated against the chat-template tokens of its solution (:mod:`verifier_train.train.data`). Model: a
1-label token-classification verifier initialised from the LLM or continued from a verifier checkpoint
(:mod:`verifier_train.train.checkpoints`). Training runs through transformers' ``Trainer``
(:class:`~verifier_train.train.trainer.VerifierTrainer`): bf16/fp32, gradient checkpointing, gradient
accumulation, cosine schedule with warmup, optional LoRA, ``accelerate launch`` (DDP, DeepSpeed, FSDP),
checkpoints every N steps and resume. A held-out split reports pair accuracy and loss; logs go to a rich progress
bar and to ``<output>/train_log.jsonl``. The final ``<output>`` is a verifier the ``llm2`` model loads directly,
with its tokenizer and ``training_card.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from verifier_train.packing import PackedCollator
from verifier_train.records import check_chat_template, use_chat_template
from llm2_eval.paths import check_model_path
from verifier_train.train.checkpoints import (
    FINAL_STAGING,
    apply_lora,
    checkpoint_dirs,
    checkpoint_step,
    last_checkpoint,
    load_model,
    publish_final,
    save_final,
    trim_log,
)
from verifier_train.train.config import CHECKPOINTS, TRAIN_LOG, TRAINING_CARD, TrainConfig
from verifier_train.train.data import PackedDataset, load_pair_data
from verifier_train.train.loss import eval_metrics
from verifier_train.train.outcome import OutcomeCollator, load_outcome_data
from verifier_train.train.resume import check_output, check_resume, write_run_settings
from verifier_train.train.trainer import JsonLogCallback, RichProgressCallback, VerifierTrainer


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


def training_args(cfg: TrainConfig, ckpt_dir: Path, has_eval: bool, bf16: bool):
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


def _console():
    from rich.console import Console

    return Console(stderr=True)


def train_verifier(config: TrainConfig) -> TrainResult:
    """Train a process verifier with the pairwise loss (paper Eq. 4; docs/method.md section 6).

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
        FileExistsError: checkpoints already in ``<output>`` without ``resume`` or ``overwrite``, or an output
            that holds a model llm2 did not write (without ``overwrite``).
        FileNotFoundError: ``model`` / ``init_from`` is a local path that does not exist.

    Before anything is read or written, the output is checked (:func:`~verifier_train.train.resume.check_output`:
    never an input, never a foreign model without ``overwrite``), and a resume is checked against the settings its
    checkpoints were written with (:func:`~verifier_train.train.resume.check_resume`); incomplete checkpoints (a
    run killed while saving) are skipped with a warning.
    """
    from transformers import AutoConfig, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    config.check()
    if config.trainable == "head":
        from verifier_train.train.head_run import train_head

        out_dir, steps, metrics, card = train_head(config)
        return TrainResult(output_dir=out_dir, global_step=steps, metrics=metrics, card=card)
    if config.init_from:
        check_model_path(config.init_from, "--init-from")
    else:
        check_model_path(config.model, "--model")
    check_output(config)
    t0 = time.time()
    out = Path(config.output)
    ckpt_dir = out / CHECKPOINTS
    rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch / torchrun
    main_proc = rank == 0
    console = _console()
    skipped: list[str] = []
    resume_from = (
        last_checkpoint(ckpt_dir, on_skip=lambda p, why: skipped.append(f"{p.name}: {why}")) if config.resume else None
    )
    bf16 = bf16_supported() if config.bf16 is None else bool(config.bf16)
    resume_changes: dict[str, Any] = {}
    if resume_from is not None:  # compared before anything is written
        resume_changes, warning = check_resume(config, ckpt_dir, bf16)
        if warning and main_proc:
            console.print(f"[yellow]{warning}[/yellow]", soft_wrap=True, highlight=False)
    if skipped and main_proc:
        console.print(f"[yellow]--resume: skipped incomplete checkpoint(s) {'; '.join(skipped)}[/yellow]",
                      soft_wrap=True, highlight=False)
    if not config.resume and checkpoint_dirs(ckpt_dir):
        if not config.overwrite:
            raise FileExistsError(
                f"{ckpt_dir} already holds checkpoints: pass resume (--resume) to continue, overwrite (--overwrite) "
                "to start over, or choose another output directory"
            )
        if main_proc:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            (out / TRAIN_LOG).unlink(missing_ok=True)
    if config.resume and resume_from is None and main_proc:
        console.print(f"[yellow]--resume: no complete checkpoint in {ckpt_dir}, starting from scratch[/yellow]")
    if main_proc:  # the log holds this run's history: steps up to the resumed checkpoint, then this run's lines
        trim_log(out / TRAIN_LOG, checkpoint_step(resume_from) if resume_from else None)

    src = config.init_from or config.model
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    template = use_chat_template(tokenizer, config.chat_template)
    if config.chat_template:  # a broken template is named as such, not blamed on the data's first line
        check_chat_template(tokenizer, f"--chat-template {config.chat_template}")
    # validate the data before loading the weights: a bad line fails fast, even for a large model
    vocab = getattr(AutoConfig.from_pretrained(str(src)), "vocab_size", None) or len(tokenizer)
    outcome = config.objective == "outcome"
    if outcome:
        data = load_outcome_data(config.data, tokenizer, max_length=config.max_length,
                                 eval_fraction=config.eval_fraction, seed=config.seed)
    else:
        data = load_pair_data(
            config.data, tokenizer, vocab_size=int(vocab), max_length=config.max_length, on_error=config.on_error,
            eval_fraction=config.eval_fraction, seed=config.seed,
        )
    model = load_model(config)
    args = training_args(config, ckpt_dir, bool(data.eval), bf16)
    per_step = args.train_batch_size * max(args.world_size, 1)
    if config.global_batch % per_step:
        raise ValueError(
            f"global batch {config.global_batch} is not a multiple of micro batch {config.micro_batch} x "
            f"{args.world_size} process(es) x {max(args.n_gpu, 1)} GPU(s) per process = {per_step}"
        )
    args.gradient_accumulation_steps = config.global_batch // per_step
    world = max(args.world_size, 1)

    if main_proc:
        for w in data.warnings:
            console.print(f"[yellow]{w}[/yellow]", soft_wrap=True, highlight=False)
        for fs in data.files:
            console.print(json.dumps(fs.summary()) if outcome else (
                f"{fs.path}: {fs.records} records, {fs.kept_pairs}/{fs.pairs} pairs kept "
                f"({fs.dropped_pairs} dropped by max_length {config.max_length}), {len(fs.skipped)} records skipped, "
                f"{fs.empty_records} without pairs"
            ))
        console.print(
            f"train: {len(data.train)} solutions / {data.train_pairs} pairs; held out: {len(data.eval)} / "
            f"{data.eval_pairs}; global batch {config.global_batch} = {config.micro_batch} x {world} x "
            f"{args.gradient_accumulation_steps} accumulation; {'bf16' if bf16 else 'fp32'}"
            + (f"; resuming from {resume_from}" if resume_from else "")
        )

    train_model = apply_lora(config, model) if config.lora else model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    trainer = VerifierTrainer(
        model=train_model,
        head_lr=config.resolved_head_lr,
        loss_normalization=config.loss_normalization,
        args=args,
        train_dataset=PackedDataset(data.train),
        eval_dataset=PackedDataset(data.eval) if data.eval else None,
        data_collator=OutcomeCollator(pad_token_id=pad_id) if outcome else
        PackedCollator(pad_token_id=pad_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        processing_class=tokenizer,
        compute_metrics=None if outcome else eval_metrics,
        callbacks=[log_callback := JsonLogCallback(out / TRAIN_LOG)]
        + ([RichProgressCallback()] if config.progress and main_proc else []),
    )
    for name in ("FSDP", "DeepSpeed"):  # accelerate on CPU runs such a launch as plain DDP, saying nothing
        asked = os.environ.get(f"ACCELERATE_USE_{name.upper()}", "").lower() in ("1", "true")
        if main_proc and asked and not getattr(trainer, f"is_{name.lower()}_enabled"):
            console.print(f"[yellow]accelerate's {name} config is not in effect on {args.device}: plain DDP[/yellow]")
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    if main_proc:  # what a later --resume of these checkpoints is compared with
        write_run_settings(config, ckpt_dir, bf16)
    metrics: dict[str, Any] = {}
    if resume_from is not None and 0 < config.max_steps <= checkpoint_step(resume_from):
        # nothing left to train (the Trainer would take one step past max_steps): the checkpoint is the result
        from transformers.trainer_callback import TrainerState

        trainer._load_from_checkpoint(str(resume_from))
        trainer.state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
    else:
        metrics.update(trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics)
    if data.eval:
        last = [h for h in trainer.state.log_history if ("eval_loss" if outcome else "eval_pair_accuracy") in h]
        if last and last[-1].get("step") == trainer.state.global_step:  # the schedule just evaluated
            metrics.update({k: v for k, v in last[-1].items() if k.startswith("eval_")})
        else:
            metrics.update(trainer.evaluate())
    log_callback.on_train_end(None, None, None)  # the log's lock is released (evaluate() may have reopened it)

    stage = out / FINAL_STAGING  # the old verifier stays whole until the new one is complete
    if trainer.is_world_process_zero() and stage.exists():
        shutil.rmtree(stage)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    save_final(trainer, config, stage, tokenizer, console)
    trained_steps = trainer.state.global_step - (checkpoint_step(resume_from) if resume_from else 0)
    if trained_steps == 0:  # resumed at the last step: no loss was computed by this run (Trainer reports 0.0)
        metrics.pop("train_loss", None)
    card = {
        "kind": "llm2-verifier",
        "paper": "LLM2 (Yang et al., NAACL 2025), " + ("outcome supervision (OVM, Yu et al. 2023)" if outcome
                                                      else "Eq. 4 pairwise loss"),
        "base_model": config.model,
        "init_from": config.init_from,
        "chat_template": template or "the tokenizer's own",
        "data": [fs.summary() for fs in data.files],
        "objective": config.objective,
        "data_warnings": data.warnings,
        "train": {"solutions": len(data.train), ("samples" if outcome else "pairs"): data.train_pairs},
        "eval": {"solutions": len(data.eval), ("samples" if outcome else "pairs"): data.eval_pairs},
        "settings": {
            **dataclasses.asdict(config),
            "bf16": bf16,
            "head_lr": config.resolved_head_lr,
            "world_size": world,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
        "resumed_from": str(resume_from) if resume_from else None,
        "resume_changes": resume_changes or None,
        "global_step": trainer.state.global_step,
        "steps_this_run": trained_steps,
        "final_metrics": _jsonable(metrics),
        "wall_time_s": round(time.time() - t0, 3),
        "versions": _versions(),
    }
    if trainer.is_world_process_zero():
        (stage / TRAINING_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (stage / "training_args.bin").unlink(missing_ok=True)
        publish_final(stage, out)
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
