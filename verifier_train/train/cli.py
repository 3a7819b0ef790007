"""The ``llm2 train-verifier`` command: one Click option per :class:`~verifier_train.train.config.TrainConfig` field.

    llm2 train-verifier --model LLM_DIR --data triplets.jsonl --output VERIFIER_DIR   # lr 2e-5, 2 epochs, batch 128
    torchrun --nproc_per_node N -m llm2_eval.cli train-verifier ...                     # DDP: docs/scaling.md
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from verifier_train.cli_options import click_options
from verifier_train.records import RecordError
from verifier_train.train.config import TrainConfig
from verifier_train.train.run import train_verifier


@click.command("train-verifier")
@click_options(TrainConfig)
def train_command(**kwargs: Any) -> None:
    """Train a process verifier with the pairwise loss (LLM2 paper Eq. 4, docs/method.md section 6).

    Example: ``llm2 train-verifier --model LLM_DIR --data triplets.jsonl --output verifier/``;
    several processes: ``torchrun --nproc_per_node N -m llm2_eval.cli train-verifier ...`` or ``accelerate launch
    --config_file docs/accelerate/{ddp,fsdp,deepspeed_zero2}.yaml -m llm2_eval.cli train-verifier ...`` (a bare
    ``accelerate launch --cpu --num_processes N`` starts one process); see docs/scaling.md.
    """
    kwargs["data"] = list(kwargs.get("data") or [])
    config = TrainConfig(**kwargs)
    try:
        result = train_verifier(config)
    except (RecordError, ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return
    m = result.metrics
    summary = {k: m[k] for k in ("eval_pair_accuracy", "eval_loss", "train_loss") if k in m}
    click.echo(json.dumps({"output": str(result.output_dir), "global_step": result.global_step, **summary}))
