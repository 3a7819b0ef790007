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
import inspect
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import AutoConfig, AutoTokenizer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerState

from llm2_eval.paths import check_model_path
from verifier_train.packing import PackedCollator
from verifier_train.records import check_chat_template, use_chat_template
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
from verifier_train.train.head_run import train_head
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


def training_args(cfg: TrainConfig, ckpt_dir: Path, has_eval: bool, bf16: bool) -> TrainingArguments:
    """transformers' ``TrainingArguments`` of a run (batch, schedule, precision, logging, saving, evaluation,
    gradient checkpointing, DeepSpeed / FSDP), across transformers 4.x and 5 (argument names that changed)."""
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

    Steps: check the inputs and the output (:func:`_check_run`), read and validate the data (:func:`_read_data`)
    and the batch arithmetic (:func:`_training_args`), only then clear what ``overwrite`` replaces
    (:func:`_clear_output`), build the model and the trainer (:func:`_build_trainer`), train and evaluate (:func:`_train`), save the
    verifier with its card (:func:`_publish`).

    Before anything is read or written, the output is checked (:func:`~verifier_train.train.resume.check_output`:
    never an input, never a foreign model without ``overwrite``), and a resume is checked against the settings its
    checkpoints were written with (:func:`~verifier_train.train.resume.check_resume`); incomplete checkpoints (a
    run killed while saving) are skipped with a warning.
    """
    config.check()
    if config.trainable == "head":
        out_dir, steps, metrics, card = train_head(config)
        return TrainResult(output_dir=out_dir, global_step=steps, metrics=metrics, card=card)
    t0 = time.time()
    run = _check_run(config)
    tokenizer, template, data = _read_data(config)
    args = _training_args(config, run, data)  # a global batch that does not divide is refused before any deletion
    _clear_output(config, run)
    model = load_model(config)
    if run.main_proc:
        _print_data(config, run, data, args)
    trainer, log_callback = _build_trainer(config, run, model, args, data, tokenizer)
    if run.main_proc:  # what a later --resume of these checkpoints is compared with
        write_run_settings(config, run.ckpt_dir, run.bf16)
    metrics = _train(trainer, config, run, data)
    log_callback.on_train_end(None, None, None)  # the log's lock is released (evaluate() may have reopened it)
    card = _publish(trainer, config, run, data, tokenizer, template, args, metrics, t0)
    return TrainResult(output_dir=run.out, global_step=trainer.state.global_step, metrics=metrics, card=card)


@dataclass
class _Run:
    """Where a run writes and what it resumes (:func:`_check_run`).

    Attributes:
        out: the output directory; ckpt_dir: its ``checkpoints/``.
        main_proc: whether this process is rank 0 (``RANK``, set by accelerate launch / torchrun).
        console: rich console on stderr for the run's messages.
        bf16: whether the run uses bf16 (:attr:`TrainConfig.resolved_bf16`).
        resume_from: the checkpoint a resumed run continues (None: from scratch).
        resume_changes: settings a resume changed (:func:`~verifier_train.train.resume.check_resume`).
    """

    out: Path
    ckpt_dir: Path
    main_proc: bool
    console: Any
    bf16: bool
    resume_from: Path | None = None
    resume_changes: dict[str, Any] = field(default_factory=dict)

    def warn(self, text: str) -> None:
        """Print a warning on the main process."""
        if self.main_proc:
            self.console.print(f"[yellow]{text}[/yellow]", soft_wrap=True, highlight=False)


def _check_run(config: TrainConfig) -> _Run:
    """Check the inputs, the output and a resume before anything is read or written.

    Raises:
        FileNotFoundError: ``model`` / ``init_from`` is a local path that does not exist.
        FileExistsError: checkpoints in ``<output>`` without ``resume`` or ``overwrite`` (and the output checks of
            :func:`~verifier_train.train.resume.check_output`).
    """
    if config.init_from:
        check_model_path(config.init_from, "--init-from")
    else:
        check_model_path(config.model, "--model")
    check_output(config)
    out = Path(config.output)
    run = _Run(out=out, ckpt_dir=out / CHECKPOINTS, main_proc=int(os.environ.get("RANK", "0")) == 0,
               console=Console(stderr=True), bf16=config.resolved_bf16)
    skipped: list[str] = []
    if config.resume:
        run.resume_from = last_checkpoint(run.ckpt_dir, on_skip=lambda p, why: skipped.append(f"{p.name}: {why}"))
    if run.resume_from is not None:  # compared before anything is written
        run.resume_changes, warning = check_resume(config, run.ckpt_dir, run.bf16)
        if warning:
            run.warn(warning)
    if skipped:
        run.warn(f"--resume: skipped incomplete checkpoint(s) {'; '.join(skipped)}")
    if not config.resume and not config.overwrite and checkpoint_dirs(run.ckpt_dir):
        raise FileExistsError(
            f"{run.ckpt_dir} already holds checkpoints: pass resume (--resume) to continue, overwrite (--overwrite) "
            "to start over, or choose another output directory"
        )
    if config.resume and run.resume_from is None and run.main_proc:
        run.console.print(f"[yellow]--resume: no complete checkpoint in {run.ckpt_dir}, starting from scratch[/yellow]")
    return run


def _read_data(config: TrainConfig) -> tuple[Any, str | None, Any]:
    """The tokenizer, the chat template in use and the validated data (:func:`load_pair_data`, or
    :func:`load_outcome_data` for the outcome objective), read before any weight loads or any file is removed: a
    bad line fails fast, even for a large model, and leaves the output as it was.

    Raises:
        RecordError: a bad record with ``on_error="fail"``; ValueError: data without any trainable pair.
    """
    src = config.init_from or config.model
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    template = use_chat_template(tokenizer, config.chat_template)
    if config.chat_template:  # a broken template is named as such, not blamed on the data's first line
        check_chat_template(tokenizer, f"--chat-template {config.chat_template}")
    vocab = getattr(AutoConfig.from_pretrained(str(src)), "vocab_size", None) or len(tokenizer)
    if config.objective == "outcome":
        data = load_outcome_data(config.data, tokenizer, max_length=config.max_length,
                                 eval_fraction=config.eval_fraction, seed=config.seed, balance=config.balance)
    else:
        data = load_pair_data(
            config.data, tokenizer, vocab_size=int(vocab), max_length=config.max_length, on_error=config.on_error,
            eval_fraction=config.eval_fraction, seed=config.seed,
        )
    return tokenizer, template, data


def _clear_output(config: TrainConfig, run: _Run) -> None:
    """After the data passed validation: remove the checkpoints and log that ``overwrite`` replaces, and keep the
    log's history up to the resumed checkpoint (the whole log is dropped for a fresh run). Main process only."""
    if not run.main_proc:
        return
    if not config.resume and checkpoint_dirs(run.ckpt_dir):  # only with overwrite (_check_run refused otherwise)
        shutil.rmtree(run.ckpt_dir, ignore_errors=True)
        (run.out / TRAIN_LOG).unlink(missing_ok=True)
    trim_log(run.out / TRAIN_LOG, checkpoint_step(run.resume_from) if run.resume_from else None)


def _training_args(config: TrainConfig, run: _Run, data: Any):
    """:func:`training_args` with the gradient accumulation that makes ``global_batch``.

    Raises:
        ValueError: a global batch that micro batch x processes x GPUs per process does not divide.
    """
    args = training_args(config, run.ckpt_dir, bool(data.eval), run.bf16)
    per_step = args.train_batch_size * max(args.world_size, 1)
    if config.global_batch % per_step:
        raise ValueError(
            f"global batch {config.global_batch} is not a multiple of micro batch {config.micro_batch} x "
            f"{args.world_size} process(es) x {max(args.n_gpu, 1)} GPU(s) per process = {per_step}"
        )
    args.gradient_accumulation_steps = config.global_batch // per_step
    return args


def _print_data(config: TrainConfig, run: _Run, data: Any, args: Any) -> None:
    """Print the data's warnings, per-file statistics and the training plan (batch, precision, resume)."""
    console, outcome = run.console, config.objective == "outcome"
    for w in data.warnings:
        console.print(f"[yellow]{w}[/yellow]", soft_wrap=True, highlight=False)
    for fs in data.files:
        console.print(json.dumps(fs.summary()) if outcome else (
            f"{fs.path}: {fs.records} records, {fs.kept_pairs}/{fs.pairs} pairs kept "
            f"({fs.dropped_pairs} dropped by max_length {config.max_length}), {len(fs.skipped)} records skipped, "
            f"{fs.empty_records} without pairs"
        ))
    sizes = (f"train: {len(data.train)} samples; held out: {len(data.eval)} samples" if outcome else
             f"train: {len(data.train)} solutions / {data.train_pairs} pairs; held out: {len(data.eval)} / "
             f"{data.eval_pairs}")
    console.print(
        f"{sizes}; global batch {config.global_batch} = {config.micro_batch} x {max(args.world_size, 1)} x "
        f"{args.gradient_accumulation_steps} accumulation; {'bf16' if run.bf16 else 'fp32'}"
        + (f"; resuming from {run.resume_from}" if run.resume_from else "")
    )


def _build_trainer(config: TrainConfig, run: _Run, model: Any, args: Any, data: Any,
                   tokenizer: Any) -> tuple[VerifierTrainer, JsonLogCallback]:
    """The :class:`VerifierTrainer` (LoRA-wrapped model with ``lora``; packed or outcome collator) and its JSON log
    callback; transformers' printer and tqdm callbacks removed (the log and the rich bar replace them)."""
    outcome = config.objective == "outcome"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    log_callback = JsonLogCallback(run.out / TRAIN_LOG)
    trainer = VerifierTrainer(
        model=apply_lora(config, model) if config.lora else model,
        head_lr=config.resolved_head_lr,
        loss_normalization=config.loss_normalization,
        args=args,
        train_dataset=PackedDataset(data.train),
        eval_dataset=PackedDataset(data.eval) if data.eval else None,
        data_collator=OutcomeCollator(pad_token_id=pad_id) if outcome else
        PackedCollator(pad_token_id=pad_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        processing_class=tokenizer,
        compute_metrics=None if outcome else eval_metrics,
        callbacks=[log_callback] + ([RichProgressCallback()] if config.progress and run.main_proc else []),
    )
    for name in ("FSDP", "DeepSpeed"):  # accelerate on CPU runs such a launch as plain DDP, saying nothing
        asked = os.environ.get(f"ACCELERATE_USE_{name.upper()}", "").lower() in ("1", "true")
        if run.main_proc and asked and not getattr(trainer, f"is_{name.lower()}_enabled"):
            run.console.print(f"[yellow]accelerate's {name} config is not in effect on {args.device}: plain DDP[/yellow]")
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer, log_callback


def _train(trainer: VerifierTrainer, config: TrainConfig, run: _Run, data: Any) -> dict[str, Any]:
    """Train (from ``run.resume_from`` when resuming) and evaluate on the held-out split; the final metrics.

    A resume at or past ``max_steps`` trains nothing (the Trainer would take one step past it): the checkpoint is
    loaded as the result. The held-out metrics of the schedule's last evaluation are reused when it ran at the
    last step, else the held-out split is evaluated once more.
    """
    metrics: dict[str, Any] = {}
    resume_from = run.resume_from
    if resume_from is not None and 0 < config.max_steps <= checkpoint_step(resume_from):
        trainer._load_from_checkpoint(str(resume_from))
        trainer.state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
    else:
        metrics.update(trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics)
    if data.eval:
        key = "eval_loss" if config.objective == "outcome" else "eval_pair_accuracy"
        last = [h for h in trainer.state.log_history if key in h]
        if last and last[-1].get("step") == trainer.state.global_step:  # the schedule just evaluated
            metrics.update({k: v for k, v in last[-1].items() if k.startswith("eval_")})
        else:
            metrics.update(trainer.evaluate())
    return metrics


def _publish(trainer: VerifierTrainer, config: TrainConfig, run: _Run, data: Any, tokenizer: Any,
             template: str | None, args: Any, metrics: dict[str, Any], t0: float) -> dict[str, Any]:
    """Save the final verifier into a staging directory (the old verifier stays whole until the new one is
    complete), write its ``training_card.json`` and move it into ``<output>``; the card."""
    stage = run.out / FINAL_STAGING
    if trainer.is_world_process_zero() and stage.exists():
        shutil.rmtree(stage)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    save_final(trainer, config, stage, tokenizer, run.console)
    trained_steps = trainer.state.global_step - (checkpoint_step(run.resume_from) if run.resume_from else 0)
    if trained_steps == 0:  # resumed at the last step: no loss was computed by this run (Trainer reports 0.0)
        metrics.pop("train_loss", None)
    card = _training_card(config, run, data, template, args, trainer.state.global_step, trained_steps, metrics, t0)
    if trainer.is_world_process_zero():
        (stage / TRAINING_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (stage / "training_args.bin").unlink(missing_ok=True)
        publish_final(stage, run.out)
    return card


def _training_card(config: TrainConfig, run: _Run, data: Any, template: str | None, args: Any, global_step: int,
                   trained_steps: int, metrics: dict[str, Any], t0: float) -> dict[str, Any]:
    """The content of ``training_card.json``: method, base model, data statistics, settings, resume, metrics."""
    outcome = config.objective == "outcome"
    return {
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
            "bf16": run.bf16,
            "head_lr": config.resolved_head_lr,
            "world_size": max(args.world_size, 1),
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
        "resumed_from": str(run.resume_from) if run.resume_from else None,
        "resume_changes": run.resume_changes or None,
        "global_step": global_step,
        "steps_this_run": trained_steps,
        "final_metrics": _jsonable(metrics),
        "wall_time_s": round(time.time() - t0, 3),
        "versions": _versions(),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("llm2-eval", "transformers", "torch", "accelerate", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
