"""What a resumed training run must share with the run that wrote its checkpoints, and where an output may go.

A fresh run records its settings in ``<output>/checkpoints/run_settings.json``: every :class:`TrainConfig` field
that decides the trained weights, with the data files as :func:`llm2_eval.paths.file_identity` (path, size,
sha256) and the model paths resolved. ``--resume`` compares against it (:func:`check_resume`):

- other data (by content; a moved file is fine) or other hyper-parameters are refused, naming the settings;
- the length of training (``max_steps``, ``epochs``) and the precision (``bf16``) may change, to extend a run or
  to continue it on another machine: a warning, and the training card records both values;
- operational settings (logging, saving, evaluation cadence, progress, workers, kernels, the final save's format)
  are not compared, nor a setting that only one of the two versions has.

Checkpoints written before this file existed resume with a warning (nothing to compare).
:func:`check_output` refuses an output that would replace an input or a model llm2 did not write (docs/method.md
section 6).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from llm2_eval.paths import (check_not_an_input, check_parent_dirs, file_identity, foreign_model_files,
                             is_llm2_checkpoint, resolved, same_content)
from verifier_train.train.config import TrainConfig

RUN_SETTINGS = "run_settings.json"

#: settings a resumed run may change (a warning; both values go into the training card)
MAY_CHANGE = ("max_steps", "epochs", "bf16")
#: settings that do not change the trained weights: not recorded, not compared
OPERATIONAL = (
    "output", "resume", "overwrite", "progress", "num_workers", "logging_steps", "save_steps", "save_total_limit",
    "eval_steps", "eval_on_start", "save_dtype", "attn_implementation", "gradient_checkpointing", "deepspeed",
    "fsdp", "lora_save",
)


def check_output(config: TrainConfig) -> None:
    """Refuse an output directory that is an input, is a file, holds a model that llm2 did not write, or is not
    empty and holds nothing llm2 wrote. An output of llm2's own training (:func:`is_training_output`) passes,
    also when a kill cut its final save.

    Raises:
        ValueError: ``--output`` is the model, the data, the verifier to continue from or the chat template
            (after resolving links), or a file.
        FileExistsError: ``--output`` holds a model that llm2 did not write, without ``overwrite``; or it is a
            non-empty directory without any model or llm2 output (even with ``overwrite``, as ``init-verifier``).
    """
    out = Path(config.output)
    check_not_an_input(out, {"--model": config.model, "--init-from": config.init_from, "--data": list(config.data),
                             "--chat-template": config.chat_template, "--deepspeed": config.deepspeed})
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out}: is a file, not a directory; choose another output")
    check_parent_dirs(out, "--output")
    if is_training_output(out):  # llm2's own run, even with a final save cut by a kill: resumed or started over
        return
    foreign = foreign_model_files(out)
    if foreign and not config.overwrite:
        raise FileExistsError(
            f"--output {out} holds a model that llm2 did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): choose another output, or pass --overwrite to write over it"
        )
    if not foreign and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--output {out}: the directory is not empty and holds no llm2 checkpoint; choose a new "
                              "or empty directory")


def is_training_output(out: Path) -> bool:
    """Whether ``out`` holds what ``llm2 train-verifier`` writes: its checkpoints (or their settings), its training
    card or log, the staging folder of its final save, or an llm2 checkpoint."""
    from verifier_train.train.checkpoints import FINAL_STAGING
    from verifier_train.train.config import CHECKPOINTS, TRAIN_LOG, TRAINING_CARD

    marks = (out / CHECKPOINTS / RUN_SETTINGS, out / TRAINING_CARD, out / TRAIN_LOG, out / FINAL_STAGING)
    trainer_checkpoints = (out / CHECKPOINTS).glob("checkpoint-*/trainer_state.json")  # of an earlier version too
    return any(m.exists() for m in marks) or is_llm2_checkpoint(out) or any(trainer_checkpoints)


def run_settings(config: TrainConfig, bf16: bool) -> dict[str, Any]:
    """The settings of ``config`` that decide the trained weights (see the module docstring), JSON-ready."""
    d = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL}
    d["data"] = [file_identity(p) for p in config.data]
    for k in ("model", "init_from"):
        if d.get(k):
            d[k] = str(resolved(d[k])) if Path(d[k]).expanduser().exists() else d[k]
    if config.chat_template:
        d["chat_template"] = file_identity(config.chat_template)
    d["bf16"] = bool(bf16)
    d["head_lr"] = config.resolved_head_lr
    # which records are held out: by question since the split changed (runs before it split by record)
    d["held_out_split"] = "question" if config.eval_fraction > 0 else "none"
    return json.loads(json.dumps(d, default=str))


def check_resume(config: TrainConfig, ckpt_dir: Path, bf16: bool) -> tuple[dict[str, Any], str | None]:
    """Compare a resumed run's settings with those its checkpoints were written with.

    Returns:
        ``(changes, warning)``: ``{setting: {"checkpoints": old, "now": new}}`` for the :data:`MAY_CHANGE`
        settings that differ, and a warning text (None when there is nothing to say).

    Raises:
        ValueError: one line naming the settings that differ (other data, other hyper-parameters).
    """
    path = ckpt_dir / RUN_SETTINGS
    if not path.exists():
        return {}, (f"{path} is missing (checkpoints of an earlier version): cannot check that --resume uses the "
                    "same data and settings")
    old = json.loads(path.read_text(encoding="utf-8"))
    new = run_settings(config, bf16)
    if "held_out_split" not in old:  # checkpoints of a version that held out records, not questions
        old["held_out_split"] = "record" if float(old.get("eval_fraction") or 0) > 0 else "none"
    problems = []
    old_data, new_data = old.get("data", []), new["data"]
    if len(old_data) != len(new_data) or not all(same_content(a, b) for a, b in zip(old_data, new_data)):
        problems.append(
            "data (checkpoints: " + ", ".join(f"{d['path']} {d['size']} bytes" for d in old_data)
            + "; now: " + ", ".join(f"{d['path']} {d['size']} bytes" for d in new_data) + ")"
        )
    changes = {}
    for key in sorted((set(old) & set(new)) - {"data"}):  # a setting one version lacks cannot be compared
        a, b = old.get(key), new.get(key)
        if key == "chat_template" and isinstance(a, dict) and isinstance(b, dict):
            if same_content(a, b):
                continue
        if a == b:
            continue
        if key in MAY_CHANGE:
            changes[key] = {"checkpoints": a, "now": b}
        else:
            problems.append(f"{key} (checkpoints: {a!r}; now: {b!r})")
    if problems:
        raise ValueError(
            f"--resume: the checkpoints in {ckpt_dir} were written with other settings: {'; '.join(problems)}; "
            "resume with the same ones, or start over with --overwrite or another --output"
        )
    warning = None
    if changes:
        warning = "--resume with changed " + ", ".join(
            f"{k} ({v['checkpoints']!r} -> {v['now']!r})" for k, v in changes.items()
        ) + " (recorded in the training card)"
    return changes, warning


def write_run_settings(config: TrainConfig, ckpt_dir: Path, bf16: bool) -> None:
    """Record ``config``'s settings in ``ckpt_dir/run_settings.json`` (atomically)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / (RUN_SETTINGS + ".partial")
    tmp.write_text(json.dumps(run_settings(config, bf16), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, ckpt_dir / RUN_SETTINGS)
