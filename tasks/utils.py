"""Helpers for the llm2 lm-eval tasks (``!function utils.xxx`` in the YAMLs next to this file).

Data: the HF hub dataset first (``openai/gsm8k`` config ``main``, ``HuggingFaceH4/MATH-500``) unless
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set; else, or when the hub fails, JSON Lines under
``$LLM2_DATA_DIR`` (or a ``data_dir`` passed with ``--metadata '{"data_dir": "..."}'``):
``gsm8k/{train,test}.jsonl`` and ``math500/test.jsonl``.

Scoring: answers are extracted and compared by :mod:`llm2_eval.answers` (docs/method.md section 7), never by lm-eval's
regexes. Greedy tasks report ``exact_match``; sampling tasks (``repeats: k``) report ``maj_at_k`` (majority vote
over the k samples) and ``pass_at_1`` (mean accuracy of the k samples).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from llm2_eval.answers import (
    extract_gsm8k_answer,
    extract_math_answer,
    gsm8k_gold,
    majority_vote,
    math_equal,
    math_gold,
    numbers_equal,
)
from llm2_eval.jsonl import iter_jsonl
from llm2_eval import prompts as _prompts
from llm2_eval.prompts import GSM8K_INSTRUCTION, MATH_INSTRUCTION  # noqa: F401 (the tasks' instructions)
from llm2_eval.splits import GSM8K_DEV_SIZE

logger = logging.getLogger(__name__)

GSM8K_HUB = ("openai/gsm8k", "main")
MATH500_HUB = ("HuggingFaceH4/MATH-500", None)


_TRUE = {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------------------------------- data


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON Lines file (blank lines skipped), through the project's one reader
    (:func:`llm2_eval.jsonl.iter_jsonl`).

    Raises:
        ValueError: naming the file and 1-based line number of a line that is not a JSON object or lacks one of
            the ``required`` fields.
    """

    def check(row: dict) -> dict:
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        return row

    return [row for _, row in iter_jsonl(path, parse=check, error=_bad_line)]


def _bad_line(path: Path, lineno: int, reason: str) -> ValueError:
    return ValueError(f"{path}, line {lineno}: {reason}")


def _load(
    hub: tuple[str, str | None],
    subdir: str,
    splits: tuple[str, ...],
    required: tuple[str, ...],
    data_dir: str | os.PathLike | None,
):
    """Hub dataset, else ``<data_dir or $LLM2_DATA_DIR>/<subdir>/<split>.jsonl`` (``splits[0]`` required)."""
    import datasets

    hub_id, hub_config = hub
    hub_name = hub_id + (f" (config {hub_config!r})" if hub_config else "")
    if _offline():
        hub_status = "skipped because HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
    else:
        try:
            return datasets.load_dataset(hub_id, hub_config)
        except Exception as e:  # any hub failure (network, auth, missing) falls back to the local copy
            hub_status = f"failed: {type(e).__name__}: {e}"
            logger.warning("Loading %s from the HF hub %s; trying LLM2_DATA_DIR", hub_name, hub_status)

    root = data_dir or os.environ.get("LLM2_DATA_DIR")
    if root:
        main_path = Path(root).expanduser() / subdir / f"{splits[0]}.jsonl"
        if main_path.is_file():
            ds = {}
            for split in splits:
                path = main_path.with_name(f"{split}.jsonl")
                if path.is_file():
                    rows = read_jsonl(path, required)
                    if not rows:
                        raise ValueError(f"{path}: no examples (the file has no non-blank line)")
                    ds[split] = datasets.Dataset.from_list(rows)
            return datasets.DatasetDict(ds)
        local_status = f"{main_path} (no such file)"
    else:
        local_status = f"$LLM2_DATA_DIR/{subdir}/{splits[0]}.jsonl (LLM2_DATA_DIR is not set)"
    raise FileNotFoundError(
        f"Dataset not found. Looked on the HF hub for {hub_name}: {hub_status}; and locally at {local_status}. "
        f"Set LLM2_DATA_DIR to the folder that holds {subdir}/{splits[0]}.jsonl (or go online)."
    )


def load_gsm8k(data_dir: str | None = None, **kwargs: Any):
    """GSM8K (``train``, ``test``) as a ``datasets.DatasetDict``; extra kwargs (task metadata) are ignored.

    Raises:
        FileNotFoundError: neither the hub nor ``$LLM2_DATA_DIR/gsm8k/test.jsonl`` is available (names both).
        ValueError: a malformed JSON Lines line (names file and line), or a file without examples.
    """
    return _load(GSM8K_HUB, "gsm8k", ("test", "train"), ("question", "answer"), data_dir)


def load_gsm8k_dev(data_dir: str | None = None, **kwargs: Any):
    """The GSM8K dev slice (:mod:`llm2_eval.splits`: the last 200 train questions) as a ``DatasetDict`` with one
    split, ``dev``; for choosing beta/alpha without touching the test set.

    Raises:
        FileNotFoundError: neither the hub nor ``$LLM2_DATA_DIR/gsm8k/train.jsonl`` is available (names both).
        ValueError: a malformed JSON Lines line (names file and line).
    """
    import datasets

    train = _load(GSM8K_HUB, "gsm8k", ("train",), ("question", "answer"), data_dir)["train"]
    start = len(train) - GSM8K_DEV_SIZE
    if start < 0:
        raise ValueError(f"GSM8K train has {len(train)} questions, fewer than the dev slice ({GSM8K_DEV_SIZE})")
    return datasets.DatasetDict({"dev": train.select(range(start, len(train)))})


def load_math500(data_dir: str | None = None, **kwargs: Any):
    """MATH-500 (``test``) as a ``datasets.DatasetDict``; extra kwargs (task metadata) are ignored.

    Raises:
        FileNotFoundError: neither the hub nor ``$LLM2_DATA_DIR/math500/test.jsonl`` is available (names both).
        ValueError: a malformed JSON Lines line (names file and line).
    """
    return _load(MATH500_HUB, "math500", ("test",), ("problem", "answer"), data_dir)


# ---------------------------------------------------------------------------------------------- prompts


def gsm8k_prompt(doc: dict) -> str:
    """0-shot prompt: the bare question plus the "The answer is N." instruction (:mod:`llm2_eval.prompts`)."""
    return _prompts.gsm8k_prompt(doc["question"])


def gsm8k_target(doc: dict) -> str:
    """Gold number (text after ``####``), shown as the target in lm-eval's logged samples."""
    return gsm8k_gold(doc["answer"])


def math500_prompt(doc: dict) -> str:
    """0-shot prompt: the bare problem plus the ``\\boxed{}`` instruction (:mod:`llm2_eval.prompts`)."""
    return _prompts.math_prompt(doc["problem"])


def math500_target(doc: dict) -> str:
    return math_gold(doc)


# ---------------------------------------------------------------------------------------------- scoring


def keep_all_samples(resps, docs):
    """Filter that passes every one of the ``repeats`` generations on (lm-eval's default ``take_first`` keeps
    only the first): ``process_results`` then gets ``[[sample_1, ..., sample_k]]``."""
    return [list(r) for r in resps]


def _samples(results: list) -> list[str]:
    """The generations of one doc: ``[text]`` (take_first) or ``[[text, ...]]`` (keep_all_samples)."""
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        return list(results[0])
    return list(results)


def _vote_scores(answers: list, gold: str, equal: Callable[[Any, Any], bool]) -> dict[str, float]:
    """maj_at_k and pass_at_1 of k extracted answers (None = no answer: wrong, never wins the vote)."""
    if not answers:
        raise ValueError("process_results got no generations")
    voted = majority_vote(answers, equal=equal)
    return {
        "maj_at_k": float(voted is not None and equal(voted, gold)),
        "pass_at_1": sum(a is not None and equal(a, gold) for a in answers) / len(answers),
    }


def process_gsm8k(doc: dict, results: list) -> dict[str, float]:
    """``exact_match``: the first generation's extracted number equals the gold number."""
    answer = extract_gsm8k_answer(_samples(results)[0])
    return {"exact_match": float(numbers_equal(answer, gsm8k_gold(doc["answer"])))}


def process_gsm8k_maj(doc: dict, results: list) -> dict[str, float]:
    """``maj_at_k`` (vote over the k extracted numbers, ties to the first) and ``pass_at_1`` (mean accuracy)."""
    answers = [extract_gsm8k_answer(s) for s in _samples(results)]
    return _vote_scores(answers, gsm8k_gold(doc["answer"]), numbers_equal)


def process_math500(doc: dict, results: list) -> dict[str, float]:
    """``exact_match``: the first generation's answer is math-verify equivalent to the gold answer."""
    return {"exact_match": float(math_equal(extract_math_answer(_samples(results)[0]), math_gold(doc)))}


def process_math500_maj(doc: dict, results: list) -> dict[str, float]:
    """``maj_at_k`` (vote grouping math-verify-equal answers, ties to the first) and ``pass_at_1``."""
    answers = [extract_math_answer(s) for s in _samples(results)]
    return _vote_scores(answers, math_gold(doc), math_equal)
