"""The output file of an exploration run: refusals before anything is written, and the checks of a resume.

docs/method.md section 5. Re-running the same command resumes (examples already in the output are skipped); an output
written with other settings or from another input (its path, size and sha256 are in the settings) is refused, and
so is an output that is an input or a file that is not an exploration output; the output is locked while written
(a second process on it is refused).
"""

from __future__ import annotations

from pathlib import Path

from llm2_eval.jsonl import iter_jsonl
from llm2_eval.paths import (
    check_model_path,
    check_not_an_input,
    check_parent_dirs,
    lock_for_writing,
    same_content,
)
from verifier_train.explore.config import ExploreConfig
from verifier_train.records import _is_json_object


def existing_settings(path: Path) -> dict | None:
    """The settings of the first line of an existing output that has them (None: a new output, or one that holds
    no more than a fragment cut by a crash).

    Raises:
        ValueError: the file holds complete lines but none is an exploration record (not an ``llm2 explore``
            output: it is never appended to).
    """
    if not path.exists():
        return None
    for _, obj in iter_jsonl(path, on_error="skip"):
        if isinstance(obj.get("settings"), dict):
            return obj["settings"]
    *complete, fragment = path.read_bytes().split(b"\n")
    # a complete line and no record, or an unterminated last line that is not the start of a record cut by a crash
    # (records begin with their id) or is a whole JSON object (kept, and appended to, on resume)
    start, head = fragment.lstrip(), b'{"id": '
    if any(line.strip() for line in complete) or (start and (
            not (start.startswith(head) or head.startswith(start)) or _is_json_object(fragment))):
        raise ValueError(f"--output {path}: the file exists and is not an llm2 explore output (no line has "
                         "'settings'); choose a new --output")
    return None


def check_paths(cfg: ExploreConfig, out_path: Path, sum_path: Path) -> None:
    """Refuse a missing model path and an output (or summary) that is an input (before anything is written).

    Raises:
        FileNotFoundError / NotADirectoryError: a model path that does not exist / is a file.
        ValueError: the output or its summary is the data, a model or the chat template.
    """
    check_parent_dirs(out_path, "--output")
    check_model_path(cfg.model, "--model")
    contrast = cfg.contrast_model if cfg.strategy == "sample" and cfg.mode == "contrast" else None
    if contrast:
        check_model_path(contrast, "--contrast-model")
    inputs = {"--data": cfg.data, "--model": cfg.model, "--contrast-model": cfg.contrast_model,
              "--chat-template": cfg.chat_template}
    check_not_an_input(out_path, inputs)
    check_not_an_input(sum_path, inputs, option="the summary")
    if sum_path.is_dir():
        raise ValueError(f"the summary {sum_path} of --output {out_path} is a directory; choose another --output")


def check_unlocked(out_path: Path) -> None:
    """Refuse an existing output that another process is writing (it holds the lock), without changing it.

    Raises:
        llm2_eval.paths.FileLockedError: naming ``--output``.
    """
    if out_path.is_file():
        f = out_path.open("rb")
        lock_for_writing(f, f"--output {out_path}")
        f.close()


def check_resume(out_path: Path, old: dict | None, new: dict, warnings: list[str]) -> None:
    """Refuse to resume an output written with other settings or from another input (by content); an output
    of an earlier version, without the input's identity, resumes with a warning appended to ``warnings``.

    Raises:
        ValueError: naming the settings that differ, or the two inputs.
    """
    if old is None:
        return
    old = dict(old)
    old_input, new_input = old.pop("input", None), new.get("input") or {}
    rest = {k: v for k, v in new.items() if k != "input"}
    if old != rest:
        diff = sorted(k for k in set(old) | set(rest) if old.get(k) != rest.get(k))
        raise ValueError(
            f"{out_path} was written with other settings ({', '.join(diff)}); resume with the same options or "
            "choose a new --output"
        )
    if old_input is None:
        warnings.append(f"{out_path} records no input identity (written by an earlier version): cannot check that "
                        "--data is the input it was explored from")
    elif not same_content(old_input, new_input):
        raise ValueError(
            f"{out_path} was explored from another input ({old_input.get('path')}: {old_input.get('size')} bytes, "
            f"sha256 {str(old_input.get('sha256'))[:12]}) than --data {new_input.get('path')} "
            f"({new_input.get('size')} bytes, sha256 {str(new_input.get('sha256'))[:12]}); choose a new --output"
        )


def missing_paths(path: Path) -> list[Path]:
    """``path`` and its missing parent folders, innermost first (empty when ``path`` exists)."""
    out = []
    while not path.exists() and path.parent != path:
        out.append(path)
        path = path.parent
    return out


def remove_created(out_path: Path, created: list[Path]) -> None:
    """After a failed run: remove the output when this run created it and wrote nothing, and then the folders it
    created for it (``created``: :func:`missing_paths` before the run), innermost first, as long as they are empty."""
    if created and out_path.stat().st_size == 0:
        out_path.unlink()
        for d in created[1:]:
            try:
                d.rmdir()
            except OSError:  # something else was put there meanwhile: kept
                break
