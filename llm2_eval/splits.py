"""The GSM8K dev slice: train questions held out for choosing settings (beta, alpha) without the test set.

The slice is the last :data:`GSM8K_DEV_SIZE` questions of the GSM8K train split, in the file's order (the hub's
``openai/gsm8k`` train split and ``$LLM2_DATA_DIR/gsm8k/train.jsonl`` hold the same questions in the same order).
The lm-eval task ``gsm8k_llm2_dev`` evaluates on it (same prompt and scoring as ``gsm8k_llm2``), and
``llm2 explore --exclude-dev`` leaves these questions out of the verifier's training data. The usual workflow::

    llm2 explore --model M --data $LLM2_DATA_DIR/gsm8k/train.jsonl --exclude-dev --output triplets.jsonl ...
    lm_eval --model llm2 --model_args pretrained=M,verifier=V,beta=B --tasks gsm8k_llm2_dev ...   # sweep B here
    lm_eval --model llm2 --model_args pretrained=M,verifier=V,beta=B_best --tasks gsm8k_llm2 ...   # report once

Standard library only (imported by ``tasks/utils.py`` and by exploration).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, TypeVar

from llm2_eval.jsonl import iter_jsonl

#: questions in the dev slice: the last 200 of GSM8K train (7473 questions: indices 7273..7472, lines 7274..7473)
GSM8K_DEV_SIZE = 200

T = TypeVar("T")


def split_train_dev(rows: Sequence[T], dev_size: int = GSM8K_DEV_SIZE) -> tuple[list[T], list[T]]:
    """``(train rows, dev rows)``: the dev slice is the last ``dev_size`` rows.

    Raises:
        ValueError: fewer rows than ``dev_size``.
    """
    if len(rows) < dev_size:
        raise ValueError(f"a dev slice of {dev_size} needs at least that many train rows, got {len(rows)}")
    cut = len(rows) - dev_size
    return list(rows[:cut]), list(rows[cut:])


def gsm8k_train_path(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir or $LLM2_DATA_DIR>/gsm8k/train.jsonl``.

    Raises:
        FileNotFoundError: the file does not exist, or no directory is given and ``LLM2_DATA_DIR`` is not set.
    """
    root = data_dir or os.environ.get("LLM2_DATA_DIR")
    if not root:
        raise FileNotFoundError("the GSM8K dev slice needs gsm8k/train.jsonl: set LLM2_DATA_DIR to its folder")
    path = Path(root).expanduser() / "gsm8k" / "train.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"the GSM8K dev slice needs {path} (no such file)")
    return path


def gsm8k_dev_questions(data_dir: str | os.PathLike | None = None) -> set[str]:
    """The questions of the dev slice (whitespace-stripped), read from :func:`gsm8k_train_path`.

    Raises:
        FileNotFoundError: see :func:`gsm8k_train_path`.
        ValueError: a malformed line of the train file (names file and line).
    """
    rows = [row for _, row in iter_jsonl(gsm8k_train_path(data_dir))]
    return {str(r.get("question", "")).strip() for r in split_train_dev(rows)[1]}
