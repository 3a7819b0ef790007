"""``llm2 decisions build`` and ``llm2 decisions score`` (see :mod:`verifier_train.decisions`)."""

from __future__ import annotations

import json
from typing import Any

import click

from verifier_train.decisions.build import BuildConfig, DecisionsError, build_decisions
from verifier_train.decisions.score import format_report, load_benchmark, score_verifiers


@click.group("decisions")
def decisions_command() -> None:
    """The decision benchmark: build it once (rollouts), then score any verifier on it in minutes."""


@decisions_command.command("build")
@click.option("--model", required=True, help="LLM directory whose decisions are measured.")
@click.option("--data", required=True, help="GSM8K train.jsonl; the dev slice is its last --dev-size questions.")
@click.option("--output", required=True, help="Benchmark file (JSON Lines); re-running the command resumes it.")
@click.option("--questions", default=BuildConfig.questions, show_default=True, help="First N dev questions.")
@click.option("--points", default=BuildConfig.points, show_default=True, help="Decision points to sample.")
@click.option("--alpha", default=BuildConfig.alpha, show_default=True,
              help="Plausibility threshold that makes a decision point (>= 2 candidates).")
@click.option("--wide-alpha", default=BuildConfig.wide_alpha, show_default=True,
              help="Threshold of the stored candidates (<= alpha; a wider set).")
@click.option("--max-candidates", default=BuildConfig.max_candidates, show_default=True)
@click.option("--rollouts", default=BuildConfig.rollouts, show_default=True, help="Sampled continuations per candidate.")
@click.option("--temperature", default=BuildConfig.temperature, show_default=True)
@click.option("--max-rollout-tokens", default=BuildConfig.max_rollout_tokens, show_default=True)
@click.option("--seed", default=BuildConfig.seed, show_default=True)
@click.option("--dev-size", default=BuildConfig.dev_size, show_default=True)
@click.option("--backend", type=click.Choice(["vllm", "hf"]), default=BuildConfig.backend, show_default=True)
@click.option("--dtype", default=BuildConfig.dtype, show_default=True)
@click.option("--chunk", default=BuildConfig.chunk, show_default=True, help="Points per engine call.")
def build_command(**kwargs: Any) -> None:
    """Build (or resume) a decision benchmark from the model's own greedy dev solutions."""
    try:
        summary = build_decisions(BuildConfig(**kwargs), progress=lambda s: click.echo(s, err=True))
    except (DecisionsError, OSError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(summary))


@decisions_command.command("score")
@click.option("--benchmark", required=True, help="A file written by `llm2 decisions build`.")
@click.option("--verifier", "verifiers", multiple=True,
              help="Verifier directory (checkpoint or adapter); repeat to compare several. Omit for the oracle only.")
@click.option("--model", default=None, help="The LLM (for an adapter or head verifier that runs on it).")
@click.option("--betas", default="0.25,0.5,1,2,4,8", show_default=True, help="Comma-separated beta grid.")
@click.option("--dtype", default="auto", show_default=True)
@click.option("--output", default=None, help="Also write the report as JSON here.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
def score_command(benchmark: str, verifiers: tuple[str, ...], model: str | None, betas: str, dtype: str,
                  output: str | None, seed: int) -> None:
    """Score verifiers on a decision benchmark: decision gain per beta (with bootstrap intervals over questions),
    the oracle gain, pairwise accuracy on pairs whose values differ significantly."""
    try:
        grid = [float(b) for b in betas.split(",") if b.strip()]
    except ValueError:
        raise click.ClickException(f"--betas {betas!r}: comma-separated numbers") from None
    try:
        bench = load_benchmark(benchmark)
        report = score_verifiers(bench, list(verifiers), betas=grid, model=model, dtype=dtype, seed=seed)
    except (DecisionsError, OSError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_report(report))
    if output:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
