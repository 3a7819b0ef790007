"""The ``llm2 explore`` command: one Click option per :class:`~verifier_train.explore.config.ExploreConfig` field.

    llm2 explore --model LLM_DIR --data gsm8k/train.jsonl --output triplets.jsonl \\
      --positions sample:2 --candidates 2 --rollouts 4 --tau 0.5 --max-rollout-tokens 256 --dtype bfloat16
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import click

from verifier_train.explore.config import (
    BACKENDS,
    FORMATS,
    GOLD_SOURCES,
    LABEL_RULES,
    PROMPT_STYLES,
    SAMPLE_MODES,
    STRATEGIES,
    ExploreConfig,
)
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


_D = ExploreConfig.__dataclass_fields__


def _default(name: str) -> Any:
    return _D[name].default


@click.command("explore")
@click.option("--model", required=True, help="LLM directory or hub id (System 1).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Input JSON Lines (GSM8K or MATH format).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Output JSON Lines (appended; resumable).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=_default("strategy"), show_default=True,
              help="rollout: paper Eq. 5-6; sample: released code, no rollouts; outcome: the model's own "
              "samples with their outcome, for --objective outcome (needs --gold self).")
@click.option("--backend", type=click.Choice(BACKENDS), default=_default("backend"), show_default=True)
@click.option("--format", "data_format", type=click.Choice(FORMATS), default=_default("data_format"), show_default=True)
@click.option("--prompt", type=click.Choice(PROMPT_STYLES), default=_default("prompt"), show_default=True,
              help="User message: the bare question, or the question + the llm2 task's instruction (what "
              "gsm8k_llm2 / math500_llm2 send).")
@click.option("--chat-template", type=click.Path(dir_okay=False), default=None,
              help="Jinja chat-template file to tokenise with (default: the tokenizer's own); give the same one to "
              "train-verifier.")
@click.option("--gold", type=click.Choice(GOLD_SOURCES), default=_default("gold"), show_default=True,
              help="dataset: the file's solution; self: the LLM's first correct sampled solution.")
@click.option("--self-samples", type=int, default=_default("self_samples"), show_default=True)
@click.option("--self-max-tokens", type=int, default=_default("self_max_tokens"), show_default=True)
@click.option("--self-batch", type=int, default=_default("self_batch"), show_default=True,
              help="--gold self: questions sampled together (one batch for vLLM).")
@click.option("--positions", default=_default("positions"), show_default=True, help="all | stride:K | sample:P")
@click.option("--include-eot/--no-include-eot", default=_default("include_eot"), show_default=True,
              help="Also explore the end-of-turn token position.")
@click.option("--alpha", type=float, default=None,
              help="Candidates have p >= alpha * p_max (default 0.1; no threshold with --top-k alone).")
@click.option("--top-k", type=int, default=_default("top_k"), show_default=True,
              help="At most the top-k tokens; with --alpha too, the tokens that pass both (as decoding does).")
@click.option("--candidates", type=int, default=_default("candidates"), show_default=True, help="n per position.")
@click.option("--rollouts", type=int, default=_default("rollouts"), show_default=True, help="m per candidate.")
@click.option("--label", type=click.Choice(LABEL_RULES), default=_default("label"), show_default=True,
              help="absolute: negative iff q(v) < tau (Eq. 6); relative: negative iff q(v) <= q(gold) - margin; "
              "significant: negative iff a one-sided Fisher exact test on the rollout counts says q(v) < q(gold) at "
              "--significance.")
@click.option("--tau", type=float, default=_default("tau"), show_default=True, help="Negative iff q < tau (Eq. 6).")
@click.option("--margin", type=float, default=_default("margin"), show_default=True,
              help="relative: how far below q(gold) a negative's quality must be.")
@click.option("--significance", type=float, default=_default("significance"), show_default=True,
              help="significant: level of the one-sided test (negative iff p <= this; a one-rollout difference never "
              "is, and at 4 rollouts only 0/4 vs 4/4 passes 0.05).")
@click.option("--min-gold-quality", type=float, default=_default("min_gold_quality"), show_default=True,
              help="relative, significant: positions with q(gold) below this are not judged (their candidates are not "
              "rolled out).")
@click.option("--gold-rollouts/--no-gold-rollouts", default=_default("gold_rollouts"), show_default=True,
              help="Also measure q(gold) (always on with --label relative or significant).")
@click.option("--temperature", type=float, default=None,
              help="Rollout temperature (default 0.7) / sample-strategy temperature (default 1.0).")
@click.option("--top-p", type=float, default=_default("top_p"), show_default=True)
@click.option("--max-rollout-tokens", type=int, default=_default("max_rollout_tokens"), show_default=True)
@click.option("--mode", type=click.Choice(SAMPLE_MODES), default=_default("mode"), show_default=True,
              help="sample: negatives drawn from the LLM (base), uniformly, from l1 + gamma * (l1 - l2) (contrast) "
              "or from the second model (expert).")
@click.option("--contrast-model", default=None,
              help="Second model (same vocabulary), needed by contrast/expert; with any mode, candidates must then be "
              "plausible under both models.")
@click.option("--gamma", type=float, default=_default("gamma"), show_default=True)
@click.option("--num-samples", type=int, default=_default("num_samples"), show_default=True)
@click.option("--keep-duplicates/--no-keep-duplicates", default=_default("keep_duplicates"), show_default=True,
              help="sample: a token drawn twice is two pairs (the authors' builder), or written once.")
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option("--start", type=int, default=_default("start"), show_default=True, help="Skip the first N examples.")
@click.option("--limit", type=int, default=None, help="Explore at most N examples (after --start).")
@click.option("--exclude-dev/--no-exclude-dev", default=False, show_default=True,
              help="Leave out the GSM8K dev slice (the last 200 train questions; task gsm8k_llm2_dev).")
@click.option("--shard", default="0/1", show_default=True, help="i/N: examples j with j mod N == i, per-shard output.")
@click.option("--on-error", type=click.Choice(("fail", "skip")), default=_default("on_error"), show_default=True)
@click.option("--dtype", default=_default("dtype"), show_default=True)
@click.option("--device", default=_default("device"), show_default=True)
@click.option("--batch-rows", type=int, default=_default("batch_rows"), show_default=True,
              help="hf: rollouts decoded together.")
@click.option("--threads", type=int, default=_default("threads"), show_default=True,
              help="CPU threads for torch (0 = default; 1 on a busy shared CPU).")
@click.option("--cpu-prepack/--no-cpu-prepack", default=False, show_default=True,
              help="hf backend on CPU: oneDNN-prepacked linear weights (faster; float32).")
@click.option("--tensor-parallel-size", type=int, default=_default("tensor_parallel_size"), show_default=True)
@click.option("--vllm-arg", "vllm_args", multiple=True, help="KEY=VALUE passed to vllm.LLM (repeatable).")
@click.option("--vllm-logprobs", type=int, default=_default("vllm_logprobs"), show_default=True)
@click.option("--max-context", type=int, default=None, help="Context limit (default: the model's).")
@click.option("--progress/--no-progress", default=True, show_default=True)
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
