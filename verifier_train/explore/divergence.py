"""First-divergence pairs: pairwise triplets from outcome samples (``llm2 divergence-pairs``).

``llm2 explore --strategy outcome`` writes, per question, a few sampled responses marked right or wrong. Where a
right and a wrong response of the same question part ways, the token each took at the first position where they
differ is a natural (gold, negative) pair: same prefix, one continuation reached the answer and the other did not.
This module turns every (right, wrong) response pair of a question into the triplet ``[pos, right token, wrong
token]`` at that position, written on the right response as an ordinary triplet record (docs/method.md section 5),
so ``llm2 train-verifier --objective pairwise`` (paper Eq. 4) trains on it like on exploration triplets.

This is the label source the decision benchmark picked (experiments/README.md, "Decision benchmark and recipe
comparison"). It is a process label in the sense of the paper's token quality exploration (Sec. 2.3): the
continuation from the wrong token is an on-policy rollout that failed, the one from the right token one that
succeeded, each a single rollout (so a noisy label, Eq. 5 with one rollout per candidate).

Data flow: outcome file (``llm2 explore --strategy outcome``) -> this -> triplet file -> ``llm2 train-verifier``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from llm2_eval.jsonl import iter_jsonl
from verifier_train.records import check_outcome_record

#: the key every record of this command carries (its source file's record id); an output holding records without
#: it was not written here and is never overwritten
MARK = "divergence_of"


def first_divergence(right_ids: list[int], wrong_ids: list[int], start: int) -> int | None:
    """The first position ``k >= start`` where two token lists differ, or None when one is a prefix of the other
    from ``start`` on (no pair: the shorter response is the longer one's beginning).

    Args:
        right_ids, wrong_ids: full chat token lists (prompt + response), ``[T1]`` and ``[T2]``.
        start: the first response position (the prompt is shared).
    """
    return next((k for k in range(start, min(len(right_ids), len(wrong_ids))) if right_ids[k] != wrong_ids[k]), None)


def divergence_records(obj: dict, tokenizer: Any) -> list[dict[str, Any]]:
    """The triplet records of one outcome record: one per right response with at least one pair.

    Each right response ``r`` is paired with every wrong response ``w`` of the question; the pair is
    ``[k, ids_r[k], ids_w[k]]`` at ``k = first_divergence(ids_r, ids_w)`` (positions index the chat-template tokens
    of the prompt + ``r``, as in docs/method.md section 5). Equal triplets are kept once, sorted.

    Returns:
        ``[{"id": "<question id>/r<i>", "messages": prompt + [r], "samples": [[pos, gold, neg], ...],
        "divergence_of": <question id>, "gold_answer": ...}]`` (``gold_answer`` when the outcome record has it).

    Raises:
        ValueError: the chat template's prompt is not a prefix of a full conversation
            (:func:`verifier_train.records.response_start`).
    """
    from verifier_train.records import chat_token_ids, response_start

    prompt = list(obj["messages"])
    qid = obj.get("id")

    def tokens(response: str) -> list[int]:
        return chat_token_ids(tokenizer, prompt + [{"role": "assistant", "content": response}])

    right = [(i, o["response"]) for i, o in enumerate(obj["outcomes"]) if o["correct"] and o["response"]]
    wrong = [tokens(o["response"]) for o in obj["outcomes"] if not o["correct"] and o["response"]]
    if not right or not wrong:
        return []
    start = response_start(tokenizer, prompt + [{"role": "assistant", "content": right[0][1]}])
    out = []
    for i, response in right:
        ids = tokens(response)
        pairs = {(k, ids[k], w[k]) for w in wrong if (k := first_divergence(ids, w, start)) is not None}
        if pairs:
            rec = {"id": f"{qid}/r{i}", "messages": prompt + [{"role": "assistant", "content": response}],
                   "samples": sorted(map(list, pairs)), MARK: qid}
            if "gold_answer" in obj:
                rec["gold_answer"] = obj["gold_answer"]
            out.append(rec)
    return out


def write_divergence_pairs(data: str | os.PathLike, output: str | os.PathLike, tokenizer: Any, *,
                           limit: int | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write the first-divergence triplets of an outcome file (module docstring) to ``output``.

    The file is written whole (to ``output.partial``, then renamed): tokenising is fast, so there is nothing to
    resume.

    Args:
        data: outcome file (``llm2 explore --strategy outcome``).
        output: triplet file to write.
        tokenizer: the LLM's tokenizer (its chat template fixes the positions).
        limit: use the first ``limit`` records only (questions; None: all).
        overwrite: replace an existing ``output`` written by this command (one whose records carry
            ``divergence_of``); a file of any other origin is never replaced.

    Returns:
        ``{"questions", "mixed_questions", "records", "pairs"}``: records read, questions with both a right and a
        wrong response, records and triplets written.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        FileExistsError: ``output`` exists (without ``overwrite``, or not written by this command).
        llm2_eval.jsonl.JsonlError: a line of ``data`` that is not an outcome record (``file:line: reason``).
    """
    src, dst = Path(data), Path(output)
    if not src.is_file():
        raise FileNotFoundError(f"--data {src}: not found")
    if dst.resolve() == src.resolve():
        raise FileExistsError(f"--output {dst} is the --data file")
    if dst.exists():
        ours = all(MARK in obj for _, obj in iter_jsonl(dst, on_error="skip"))
        if not overwrite or not ours:
            why = "pass --overwrite to replace it" if ours else "it was not written by llm2 divergence-pairs"
            raise FileExistsError(f"--output {dst} exists ({why})")
    counts = {"questions": 0, "mixed_questions": 0, "records": 0, "pairs": 0}
    tmp = dst.with_name(dst.name + ".partial")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as f:
        for _, obj in iter_jsonl(src, parse=check_outcome_record):
            if limit is not None and counts["questions"] >= limit:
                break
            counts["questions"] += 1
            recs = divergence_records(obj, tokenizer)
            counts["mixed_questions"] += bool(recs)
            for rec in recs:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                counts["records"] += 1
                counts["pairs"] += len(rec["samples"])
    os.replace(tmp, dst)
    return counts


@click.command("divergence-pairs")
@click.option("--model", required=True, help="The LLM directory (its tokenizer and chat template fix the positions).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Outcome file (llm2 explore --strategy outcome).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Triplet file to write.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N questions only.")
@click.option("--overwrite", is_flag=True, help="Replace an output this command wrote before.")
def divergence_pairs_command(model: str, data: str, output: str, limit: int | None, overwrite: bool) -> None:
    """First-divergence pairs from outcome samples: triplets for llm2 train-verifier --objective pairwise.

    Example: llm2 divergence-pairs --model DIR --data outcome.jsonl --output pairs.jsonl
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
        counts = write_divergence_pairs(data, output, tok, limit=limit, overwrite=overwrite)
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(counts), file=sys.stdout)
