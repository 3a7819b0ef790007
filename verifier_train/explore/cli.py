"""The ``llm2 explore`` command: one Click option per :class:`~verifier_train.explore.config.ExploreConfig` field
(:func:`verifier_train.cli_options.click_options`).

    llm2 explore --model LLM_DIR --data gsm8k/train.jsonl --output triplets.jsonl \\
      --positions sample:2 --candidates 2 --rollouts 4 --tau 0.5 --max-rollout-tokens 256 --dtype bfloat16
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from verifier_train.cli_options import click_options
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


@click.command("explore")
@click_options(ExploreConfig)
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
