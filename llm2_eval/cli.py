"""The ``llm2`` command line: ``eval``, ``init-verifier``, ``explore``, ``divergence-pairs``, ``train-verifier``,
``report``, ``decisions``.

Sub-commands are imported lazily (``llm2 --help`` loads neither torch nor lm-eval); each lives next to the code it
drives and is registered here by its import path.
"""

from __future__ import annotations

import importlib
import sys

import click

# command name -> "module:attribute" of a click.Command
_COMMANDS = {
    "eval": "llm2_eval.cli:eval_command",
    "init-verifier": "llm2_eval.cli:init_verifier_command",
    "explore": "verifier_train.explore:explore_command",
    "explore-shards": "verifier_train.explore.shards:explore_shards_command",
    "divergence-pairs": "verifier_train.explore.divergence:divergence_pairs_command",
    "train-verifier": "verifier_train.train:train_command",
    "report": "llm2_eval.report:report_command",
    "decisions": "verifier_train.decisions.cli:decisions_command",
}

_HELP = {
    "eval": "Run lm-eval's CLI with the llm2 model and tasks registered.",
    "init-verifier": "Create an untrained verifier from an LLM.",
    "explore": "Token quality exploration: make verifier training data.",
    "explore-shards": "Add up the summaries of explore --shard i/N runs.",
    "divergence-pairs": "Pairs where a right and a wrong outcome sample part ways.",
    "train-verifier": "Train a verifier (pairwise or outcome loss; full, LoRA or head).",
    "report": "Accuracy vs compute table and plot over lm-eval runs.",
    "decisions": "Decision benchmark: build it (rollouts), score verifiers on it in minutes.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            reason = str(err)  # `err` itself is unbound once the except block ends

            @click.command(name=name, help=_HELP[name])
            def unavailable() -> None:
                raise click.ClickException(f"'llm2 {name}' is not available in this installation: {reason}")

            return unavailable

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, _HELP[n]) for n in sorted(_COMMANDS)])


@click.group(cls=_LazyGroup)
@click.version_option(package_name="llm2-eval")
def main() -> None:
    """llm2-eval: LLM2 dual-process decoding (Yang et al., NAACL 2025) for lm-evaluation-harness."""


@click.command(
    "eval",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("lm_eval_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(lm_eval_args: tuple[str, ...]) -> None:
    """Forward everything to lm-eval's CLI after registering the ``llm2`` model and the llm2 tasks.

    Example: ``llm2 eval --model llm2 --model_args pretrained=DIR,verifier=VDIR --tasks gsm8k_llm2 --limit 50``.
    """
    from llm2_eval.registration import register_all

    register_all()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *lm_eval_args]
    cli_evaluate()


@click.command("init-verifier")
@click.option("--model", "llm", required=True, help="LLM directory (or hub id) to initialise the verifier from.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16 or float16.")
@click.option("--seed", default=0, show_default=True, help="Seed of the new score head's initialisation.")
@click.option("--head-init", type=click.Choice(["zero", "normal"]), default="zero", show_default=True,
              help="New head: zeros (scores 0: a no-op until trained) or random (transformers' default init).")
@click.option("--head-only", is_flag=True,
              help="Write only a linear score head (a few kB) that runs on the LLM's own backbone, as `train-verifier "
                   "--trainable head` does; with --head-init zero it is the noise control of the fused LLM2 path.")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace an existing llm2 checkpoint (with --head-only: a head verifier) in --output (any other "
                   "non-empty directory is refused).")
def init_verifier_command(llm: str, output: str, dtype: str, seed: int, head_init: str, head_only: bool,
                          overwrite: bool) -> None:
    """Create an untrained verifier (LLM weights + a new 1-output head) from an LLM (docs/method.md section 2).

    The output is written to a temporary sibling and renamed into place; a non-empty --output is refused unless
    it holds an llm2 checkpoint and --overwrite is given. With --head-only: only the head (llm2_head.json and
    head.safetensors), on the LLM's own backbone at decode time.
    """
    from llm2_eval.loading import resolve_dtype
    from llm2_eval.verifier import init_verifier

    try:
        resolve_dtype(dtype)
        if head_only:
            from llm2_eval.head_verifier import init_head_verifier

            if dtype != "auto":
                raise ValueError(f"--dtype {dtype}: a head verifier is saved in float32 and runs in the LLM's dtype; "
                                 "drop --dtype with --head-only")
            path = init_head_verifier(llm, output, head_init=head_init, seed=seed, overwrite=overwrite)
        else:
            path = init_verifier(llm, output, dtype=dtype, seed=seed, head_init=head_init, overwrite=overwrite)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
