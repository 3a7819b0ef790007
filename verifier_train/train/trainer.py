"""The Trainer of the verifier: transformers' ``Trainer`` with the pairwise loss, and its log callbacks.

:class:`VerifierTrainer` scales the loss so that one optimizer step minimises the mean over the real pairs of
the whole global batch (all accumulation steps and processes), or the authors' slot-normalised loss
(``loss_normalization="official"``, :mod:`verifier_train.train.loss`); :class:`JsonLogCallback` writes
``train_log.jsonl``; :class:`RichProgressCallback` shows a progress bar.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from llm2_eval.loading import head_name
from verifier_train.records import JsonlAppender
from verifier_train.train.outcome import outcome_loss
from verifier_train.train.loss import LOSS_NORMALIZATIONS, pair_scores, pairwise_loss


class VerifierTrainer(Trainer):
    """transformers' Trainer with the pairwise loss of paper Eq. 4 over packed solutions.

    - ``loss_normalization="pairs"`` (default): ``get_batch_samples`` counts the real pairs of the whole
      accumulated global batch (all processes), and ``compute_loss`` divides each micro-batch's loss sum by it,
      so one optimizer step minimises the mean over the real pairs of the global batch exactly
      (``loss_is_scaled_for_ga``).
    - ``loss_normalization="official"`` (the authors' trainer): each micro-batch's loss is its sum over real
      pairs divided by its ``B x Pmax`` pair slots, and ``get_batch_samples`` counts the micro-batches of the step
      (all processes), so one step minimises the mean of those per-micro-batch losses (what the released code
      gets from transformers' division by the accumulation steps and DDP's gradient average).
    - ``prediction_step`` returns ``(s_gold, s_neg)`` per pair; the held-out metrics (pair accuracy, loss over
      real pairs) are computed from all of them.
    - Training pair accuracy since the last log is added to the logs as ``pair_accuracy``.
    - ``head_lr``: the score head's parameters get their own peak learning rate (the schedule scales it like the
      others). A new head, zero-initialised, passes no gradient to the backbone until it moves, and at the
      backbone's small learning rate it barely does; a larger head rate lets it move first (docs/method.md section 9).
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, head_lr: float | None = None, loss_normalization: str = "pairs", **kwargs: Any):
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization={loss_normalization!r}: use {' or '.join(LOSS_NORMALIZATIONS)}")
        self.head_lr = head_lr
        self.loss_normalization = loss_normalization
        super().__init__(*args, **kwargs)
        # transformers < 5 reads this flag instead of loss_is_scaled_for_ga
        self.model_accepts_loss_kwargs = True
        self._pair_stats = torch.zeros(2, dtype=torch.float64)  # correct, count (since the last log)

    def create_optimizer(self, model=None):  # noqa: D102
        optimizer = super().create_optimizer(model)
        if self.head_lr is None:
            return optimizer
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # peft
        head = head_name(base)
        head_ids = {id(p) for n, p in self.model.named_parameters() if f"{head}." in f".{n}" and p.requires_grad}
        if not head_ids:
            raise ValueError(f"no trainable parameters of the score head {head!r} for --head-lr")
        moved = []  # (group options, head params): moved out of their group into one of their own
        for g in optimizer.param_groups:
            head_params = [p for p in g["params"] if id(p) in head_ids]
            if head_params:
                g["params"] = [p for p in g["params"] if id(p) not in head_ids]
                moved.append(({k: v for k, v in g.items() if k != "params"}, head_params))
        optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
        for options, params in moved:
            optimizer.add_param_group({**options, "params": params, "lr": float(self.head_lr)})
        return optimizer

    def attn_dtype(self, model: torch.nn.Module) -> torch.dtype:
        """dtype attention runs in: the mixed-precision dtype, else the parameters'."""
        if self.args.bf16:
            return torch.bfloat16
        if self.args.fp16:
            return torch.float16
        return next(p.dtype for p in model.parameters() if p.is_floating_point())

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # noqa: D102
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples and "outcome_target" in batch_samples[0]:  # outcome objective: a mean over samples
            n = sum(len(b["outcome_target"]) for b in batch_samples)
        elif self.loss_normalization == "official":  # the loss is a mean over the step's micro-batches
            n = len(batch_samples)
        else:  # a mean over the step's real pairs
            n = sum(int(b["pair_mask"].sum()) for b in batch_samples)
        n = torch.tensor([float(n)], device=device)
        if self.accelerator.num_processes > 1:
            n = self.accelerator.gather(n).sum().reshape(1)
        return batch_samples, n[0].clamp(min=1.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        if "outcome_target" in inputs:  # --objective outcome (verifier_train/train/outcome.py)
            total, scores = outcome_loss(model, inputs)
            if num_items_in_batch is not None and model.training:
                loss = total / num_items_in_batch * self.accelerator.num_processes
            else:
                loss = total / max(len(inputs["outcome_target"]), 1)
            return (loss, {"scores": scores}) if return_outputs else loss
        s_gold, s_neg = pair_scores(model, inputs, self.attn_dtype(model))
        mask = inputs["pair_mask"]
        official = self.loss_normalization == "official"
        total = pairwise_loss(s_gold, s_neg, mask, reduction="slots" if official else "sum")
        if num_items_in_batch is not None and model.training:
            # DDP averages gradients over processes: multiplying by their number makes the step a global mean
            loss = total / num_items_in_batch * self.accelerator.num_processes
        else:
            loss = total if official else total / mask.sum().clamp(min=1)
        if model.training:
            with torch.no_grad():
                correct = (s_gold > s_neg)[mask].sum()
                self._pair_stats += torch.stack([correct, mask.sum()]).double().cpu()
        if return_outputs:
            return loss, {"s_gold": s_gold, "s_neg": s_neg}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: D102
        inputs = self._prepare_inputs(inputs)
        if "outcome_target" in inputs:  # held-out BCE only (eval_loss), every sample weighing 1 (no --balance)
            with torch.no_grad():
                total, _ = outcome_loss(model, {k: v for k, v in inputs.items() if k != "outcome_weight"})
            return total / max(len(inputs["outcome_target"]), 1), None, None
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
