"""Input and output paths: an output never replaces an input or a model that llm2 did not write.

Every command that writes (``llm2 init-verifier``, ``llm2 explore``, ``llm2 train-verifier``) checks its paths
here BEFORE it reads a weight or writes a byte, so a refused command leaves every file as it was:

- an output that is one of the command's inputs (the model, the data, a second model, a chat template), after
  resolving links (hard links too), is refused (:func:`check_not_an_input`);
- a model path that does not exist is named as such, not as a hub lookup failure (:func:`check_model_path`; what
  may be a hub id is :func:`is_hub_id`);
- a directory holding a model that llm2 did not write (:func:`foreign_model_files`) is only written over on
  request, and ``init-verifier`` only replaces a directory that holds an llm2 checkpoint (:func:`is_llm2_checkpoint`);
- a directory that replaces another is written whole into a hidden sibling first (:func:`write_dir_replacing`).

:func:`file_identity` (path, size, sha256) is what a resumed run compares to tell a different input from the
same one. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

# files that make a directory a model checkpoint (transformers, peft, GGUF, safetensors / pickle weights)
_MODEL_FILES = ("config.json", "adapter_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded and every link resolved (the path need not exist)."""
    return Path(path).expanduser().resolve()


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or directory: equal after resolving links, or (both existing) the
    same inode (a hard link)."""
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(output: str | os.PathLike, inputs: Mapping[str, Any], *, option: str = "--output") -> None:
    """Refuse an output that is one of the inputs.

    Args:
        output: the path the command would write.
        inputs: ``{option name: path or list of paths or None}`` of the command's inputs, e.g.
            ``{"--model": "llm/", "--data": ["a.jsonl"]}``; None entries are ignored.
        option: the output's option name, for the message.

    Raises:
        ValueError: one line naming both options and the path, e.g.
            ``--output x.jsonl is the --data file: choose another output``.
    """
    for name, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None or not str(v):
                continue
            if same_path(output, v):
                kind = "directory" if Path(v).is_dir() else "file"
                raise ValueError(f"{option} {output} is the {name} {kind} ({v}): choose another output")


def check_parent_dirs(path: str | os.PathLike, option: str = "--output") -> None:
    """Refuse an output path below a file (``notes.md/out.jsonl``), which could never be created.

    Raises:
        ValueError: one line naming the option and the file in the way.
    """
    for parent in Path(path).expanduser().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory; choose another {option}")
            return


#: a hub repository id: ``name`` or ``namespace/name``, each of letters, digits, ``-``, ``_`` and ``.``
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` could be a Hugging Face hub id (``name`` or ``namespace/name``) rather than only a local
    path. The one rule of the project for "a path or a hub id".

    A name starting with ``.``, ``-``, ``/`` or ``~``, holding a backslash, a colon, a space or more than one
    ``/``, ending in ``/``, holding ``..`` or ``--``, or longer than 96 characters can only be a local path.
    Whether the hub has such a repository is not checked (nothing is downloaded).
    """
    name = str(name)
    return (bool(_HUB_ID.fullmatch(name)) and not name.startswith((".", "-")) and ".." not in name
            and "--" not in name and len(name) <= 96)


def check_model_path(path: Any, option: str = "--model") -> None:
    """Refuse a model path that does not exist, with a message that says so (not a hub ``Repo id`` error).

    The message starts with ``option`` and the path (``--model DIR``, or ``pretrained=DIR`` for an ``option``
    ending in ``=``).

    A name that could be a hub id (``name`` or ``org/name``) and is not a local path is left to transformers,
    unless ``HF_HUB_OFFLINE`` is set (then it cannot be fetched, and the message says both). Objects that are not
    paths (an already loaded model) pass.

    Raises:
        FileNotFoundError: ``path`` does not exist (and cannot be a hub id, or the hub is off).
        NotADirectoryError: ``path`` is a file, not a model directory.
    """
    if not isinstance(path, (str, os.PathLike)):
        return
    p = Path(path).expanduser()
    if p.is_dir():
        return
    name = f"{option}{path}" if option.endswith("=") else f"{option} {path}"
    if p.exists():
        raise NotADirectoryError(f"{name}: is a file, not a model directory")
    if not is_hub_id(str(path)):
        raise FileNotFoundError(f"{name}: no such directory")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False"):
        raise FileNotFoundError(
            f"{name}: no such directory (and HF_HUB_OFFLINE is set, so it is not looked up on the hub)"
        )


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path": resolved path, "size": bytes, "sha256": hex digest of the content}`` of a file; size and digest
    are None for a missing file. What a resumed run compares to know it reads the same input."""
    p = resolved(path)
    if not p.is_file():
        return {"path": str(p), "size": None, "sha256": None}
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(p), "size": p.stat().st_size, "sha256": h.hexdigest()}


def same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two :func:`file_identity` dicts describe the same content (size and sha256; the path may differ)."""
    return a.get("size") == b.get("size") and a.get("sha256") == b.get("sha256")


def is_llm2_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint that llm2 wrote: the ``llm2_verifier`` entry that ``llm2
    init-verifier`` and ``llm2 train-verifier`` record in ``config.json`` (docs/method.md section 2), or in
    ``llm2_verifier.json`` next to a LoRA adapter (``train-verifier --lora-save adapter``)."""
    for name in ("config.json", "llm2_verifier.json"):
        try:
            if isinstance(json.loads((Path(directory) / name).read_text(encoding="utf-8")).get("llm2_verifier"), dict):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def foreign_model_files(directory: str | os.PathLike) -> list[str]:
    """Names of the model files (config, adapter config, weights) in ``directory`` when it holds a model that llm2
    did not write (see :func:`is_llm2_checkpoint`); empty for a missing directory, a directory without model
    files, or an llm2 checkpoint."""
    d = Path(directory)
    if not d.is_dir() or is_llm2_checkpoint(d):
        return []
    return sorted(
        f.name for f in d.iterdir()
        if f.is_file() and (f.name in _MODEL_FILES or f.name.endswith(_WEIGHT_SUFFIXES))
    )


class FileLockedError(OSError):
    """Another process holds the write lock of a file llm2 appends to (:func:`lock_for_writing`)."""


def lock_for_writing(f: Any, name: str) -> None:
    """Take an exclusive, non-blocking ``flock`` on the open file ``f`` (held until it is closed), so that two
    processes never append to one file (every line would be written twice, or lines interleaved).

    Args:
        f: an open file object.
        name: how the file is named in the message (e.g. ``--output out.jsonl``, ``trace=t.jsonl``).

    Raises:
        FileLockedError: another process holds the lock; ``f`` is closed and the file left as it was.
    """
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise FileLockedError(
            f"{name} is being written by another process (it holds the file's lock): wait for it to finish, or "
            "choose another path"
        ) from None



def write_dir_replacing(out: str | os.PathLike, write: Callable[[Path], None], check: Callable[[], None]) -> None:
    """Write the directory ``out`` atomically: ``write(partial)`` fills a new hidden sibling of ``out``; ``check()``
    runs once more (the directory may have changed while ``write`` ran; it raises to refuse); then the sibling takes
    the place of ``out``. A non-empty ``out`` (which ``check`` accepted) is moved aside first and deleted once
    replaced, so none of its files stay behind; on any error everything is put back as it was and the sibling is
    removed, so a crash leaves nothing half-written.

    Raises:
        whatever ``write`` or ``check`` raise; OSError from the filesystem.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old = None
    try:
        write(partial)
        check()
        if out.exists() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        try:
            os.replace(partial, out)  # onto a missing or an empty directory
        except BaseException:
            if old is not None:
                os.replace(old / out.name, out)
            raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if old is not None and not (old / out.name).exists():
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
