"""The ``llm2 train-verifier`` command: one Click option per :class:`~verifier_train.train.config.TrainConfig` field.

    llm2 train-verifier --model LLM_DIR --data triplets.jsonl --output VERIFIER_DIR   # lr 2e-5, 2 epochs, batch 128
    torchrun --nproc_per_node N -m llm2_eval.cli train-verifier ...                     # DDP: docs/scaling.md
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import click

from verifier_train.records import RecordError
from verifier_train.train.config import TrainConfig
from verifier_train.train.run import train_verifier


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
