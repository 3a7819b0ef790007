"""The ``llm2 explore`` command: one Click option per :class:`~verifier_train.explore.config.ExploreConfig` field
(built from the fields' ``cli`` metadata: name, help, choices).

    llm2 explore --model LLM_DIR --data gsm8k/train.jsonl --output triplets.jsonl \\
      --positions sample:2 --candidates 2 --rollouts 4 --tau 0.5 --max-rollout-tokens 256 --dtype bfloat16
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from typing import Any, Callable, Sequence

import click

from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.inputs import ExploreInputError, parse_shard, summary_path
from verifier_train.explore.run import explore


def _parse_vllm_args(values: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--vllm-arg")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _click_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One Click option per :class:`~verifier_train.explore.config.ExploreConfig` field with ``cli`` metadata, in
    field order: its name (``--field-name`` unless given), help, type (from the annotation: int, float, a bool as
    ``--x/--no-x``, a path, the choices) and default (shown unless None); a field without a default is required."""
    hints = typing.get_type_hints(ExploreConfig)
    for f in reversed(dataclasses.fields(ExploreConfig)):
        if "cli" not in f.metadata:
            continue
        cli = f.metadata["cli"]
        name = cli["name"] or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {} if cli["help"] is None else {"help": cli["help"]}
        base = next((t for t in (bool, int, float) if hints[f.name] in (t, t | None)), None)
        if cli["choices"]:
            kw["type"] = click.Choice(cli["choices"])
        elif cli["path"]:
            kw["type"] = click.Path(dir_okay=False)
        elif base in (int, float):
            kw["type"] = base
        decl = [f"{name}/--no-{name[2:]}" if base is bool else name, f.name]
        if f.default_factory is not dataclasses.MISSING:
            kw["multiple"] = True
        elif f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default if cli["text"] is None else cli["text"]
            if kw["default"] is not None:
                kw["show_default"] = True
        fn = click.option(*decl, **kw)(fn)
    return fn


@click.command("explore")
@_click_options
def explore_command(**kwargs: Any) -> None:
    """Token quality exploration (LLM2 paper Sec. 2.3, Eq. 5-6): write verifier training triplets.

    Example: llm2 explore --model DIR --data gsm8k/train.jsonl --output out.jsonl --positions stride:8
    """
    try:
        kwargs["shard"] = parse_shard(kwargs["shard"])
        kwargs["vllm_args"] = _parse_vllm_args(kwargs["vllm_args"])
        cfg = ExploreConfig(**kwargs)
        s = explore(cfg)
    except (ExploreInputError, ValueError, ImportError, OSError) as err:
        raise click.ClickException(str(err)) from err
    keys = ("examples", "resumed", "dropped_bytes", "excluded_dev", "skipped", "self_gold_failed", "positions",
            "candidates", "negatives", "rollouts", "generated_tokens", "wall_seconds", "rollouts_per_s", "tokens_per_s")
    click.echo(json.dumps({k: s[k] for k in keys}), file=sys.stdout)
    click.echo(f"wrote {s['output']} (summary: {summary_path(s['output'])})", err=True)
