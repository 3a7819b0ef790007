"""The shards of one exploration, added up (``llm2 explore-shards``).

``llm2 explore --shard i/N --output OUT.jsonl`` explores the examples ``j`` with ``j mod N == i`` (every example
in exactly one shard, the last shards one example shorter when N does not divide the count) and writes
``OUT.shard{i}-of-{N}.jsonl`` with its summary ``OUT.shard{i}-of-{N}.summary.json``. The shard outputs are used
together as they are: ``llm2 train-verifier --data OUT.shard0-of-N.jsonl --data OUT.shard1-of-N.jsonl ...``
reads several files (a record repeated across files is warned about). :func:`merge_shard_summaries` adds up
their summaries into the summary of the whole exploration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from verifier_train.explore.inputs import shard_output_path, summary_path

#: summary counters that add up over shards
SUMS = ("selected", "excluded_dev", "examples", "resumed", "dropped_bytes", "skipped", "self_gold_failed",
        "self_samples", "outcome_right", "response_positions", "candidate_positions", "positions", "candidates",
        "negatives", "unjudged_positions", "rollouts", "truncated_rollouts", "generated_tokens", "wall_seconds")
#: summary lists that are concatenated in shard order
LISTS = ("warnings", "skipped_lines", "self_gold_failed_ids")


def shard_files(output: str | os.PathLike, shards: int) -> list[tuple[Path, Path]]:
    """``[(OUT.shard{i}-of-{N}.jsonl, its summary)]`` for ``i = 0..N-1`` (the files ``llm2 explore --shard i/N``
    writes; :func:`~verifier_train.explore.inputs.shard_output_path`)."""
    if int(shards) < 1:
        raise ValueError(f"--shards {shards}: must be >= 1")
    outs = [shard_output_path(output, (i, int(shards))) for i in range(int(shards))]
    return [(o, summary_path(o)) for o in outs]


def read_shard_summaries(output: str | os.PathLike, shards: int) -> list[dict[str, Any]]:
    """The N shard summaries of ``output``, in shard order, each checked to be of its shard and of shard 0's
    settings.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_shard_summaries`.
    """
    files = shard_files(output, shards)
    summaries: list[dict[str, Any]] = []
    for i, (_, summ) in enumerate(files):
        if not summ.is_file():
            raise FileNotFoundError(f"{summ}: no summary of --shard {i}/{shards} (run llm2 explore --shard "
                                    f"{i}/{shards} --output {output})")
        try:
            s = json.loads(summ.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{summ}: not a readable exploration summary ({err})") from err
        if not isinstance(s, dict) or s.get("shard") != f"{i}/{shards}":
            got = s.get("shard") if isinstance(s, dict) else None
            raise ValueError(f"{summ}: the summary of shard {got!r}, not {i}/{shards}")
        if summaries and s.get("settings") != summaries[0].get("settings"):
            raise ValueError(f"{summ}: explored with other settings (or another input) than {files[0][1]}")
        summaries.append(s)
    return summaries


def merge_shard_summaries(output: str | os.PathLike, shards: int) -> dict[str, Any]:
    """The summary of a sharded exploration: the N shard summaries of ``output`` added up.

    Counters (:data:`SUMS`: examples, positions, candidates, negatives, rollouts, generated tokens, wall seconds,
    ...) are summed; ``wall_seconds`` is the processes' total, ``max_wall_seconds`` the slowest shard (the wall
    time of shards run side by side); the rates are recomputed from the sums (``negative_rate``, ``mean_q``
    weighted by candidates, ``rollouts_per_s`` / ``tokens_per_s`` per process); lists (:data:`LISTS`) are
    concatenated; ``outcome_mix`` is added up; ``engine`` and ``mean_gold_q`` are kept per shard
    (``per_shard``).

    Args:
        output: the ``--output`` the shards were run with (``OUT.jsonl``, not a shard file).
        shards: N of ``--shard i/N``.

    Returns:
        The merged summary: the keys of one shard's summary, with ``shard: "all N"``, ``shards: N``,
        ``outputs`` (the shard files) and ``finished`` (all shards finished).

    Raises:
        FileNotFoundError / ValueError: as :func:`read_shard_summaries`.
    """
    files = shard_files(output, shards)
    summaries = read_shard_summaries(output, shards)
    merged: dict[str, Any] = {k: v for k, v in summaries[0].items() if k not in SUMS + LISTS}
    for k in SUMS:
        vals = [s.get(k) for s in summaries]
        merged[k] = None if all(v is None for v in vals) else sum(v or 0 for v in vals)
    for k in LISTS:
        merged[k] = [x for s in summaries for x in (s.get(k) or [])]
    mixes = [s.get("outcome_mix") for s in summaries if isinstance(s.get("outcome_mix"), dict)]
    if mixes:
        keys = {k for m in mixes for k in m}
        merged["outcome_mix"] = {k: sum(m.get(k, 0) for m in mixes) for k in sorted(keys)}
    cand = merged.get("candidates") or 0
    merged["negative_rate"] = merged["negatives"] / cand if cand and merged.get("negatives") is not None else None
    q = [(s.get("mean_q"), s.get("candidates") or 0) for s in summaries if s.get("mean_q") is not None]
    merged["mean_q"] = sum(m * n for m, n in q) / sum(n for _, n in q) if q and sum(n for _, n in q) else None
    wall = merged.get("wall_seconds") or 0
    for rate, key in (("examples_per_s", "examples"), ("rollouts_per_s", "rollouts"),
                      ("tokens_per_s", "generated_tokens")):
        merged[rate] = (merged.get(key) or 0) / wall if wall else None
    merged["max_wall_seconds"] = max((s.get("wall_seconds") or 0) for s in summaries)
    merged["finished"] = all(bool(s.get("finished")) for s in summaries)
    merged["output"] = str(output)
    merged["outputs"] = [str(o) for o, _ in files]
    merged["shard"] = f"all {shards}"
    merged["shards"] = int(shards)
    merged["per_shard"] = [{"shard": s.get("shard"), "mean_gold_q": s.get("mean_gold_q"), "engine": s.get("engine"),
                            "wall_seconds": s.get("wall_seconds")} for s in summaries]
    merged.pop("mean_gold_q", None)
    merged.pop("engine", None)
    return merged


@click.command("explore-shards")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--shards", "-n", type=click.IntRange(min=1), required=True, help="N of the runs' --shard i/N.")
@click.option("--write/--no-write", default=False, show_default=True,
              help="Also write the merged summary to OUT.summary.json (refused when that file exists).")
def explore_shards_command(output: str, shards: int, write: bool) -> None:
    """Add up the summaries of `llm2 explore --shard i/N --output OUTPUT` (i = 0..N-1) and print the whole's.

    The shard outputs (OUTPUT.shard{i}-of-{N}.jsonl) train together as they are: give each to
    `llm2 train-verifier` with its own --data.
    """
    try:
        merged = merge_shard_summaries(output, shards)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    text = json.dumps(merged, indent=2) + "\n"
    if write:
        dest = summary_path(output)
        if dest.exists():
            raise click.ClickException(f"{dest} exists (an unsharded run's summary?): not overwritten")
        dest.write_text(text, encoding="utf-8")
        click.echo(f"wrote {dest}", err=True)
    click.echo(text, nl=False)
    click.echo("train on them with: llm2 train-verifier " + " ".join(f"--data {o}" for o in merged["outputs"]),
               err=True)
