"""The ``sample_cache=PATH`` store of the ``llm2`` model: finished generations, so that a run resumes from its file.

lm-eval's response cache (``--use_cache DB``) stores only deterministic requests; sampled ones (``do_sample``, the
``*_maj`` tasks) are decoded again by every run. ``llm2``'s samples are seeded (the k-th request with a prompt gets
the seed ``hash(seed, prompt tokens, k)``, :class:`llm2_eval.lm_eval_model.LLM2LM`), so a sample is a function of
the model args, the request and its seed, and can be stored under them: a re-run of the same command answers the
stored samples from the store and decodes only the rest, with the seeds it would have had anyway.

Greedy requests are stored too (seed None, one text per request), so that one store resumes any run: unlike
lm-eval's SQLite database, it is a text file that can be committed with the run and carried to another machine
(the header holds the resolved paths of the model and the verifier, so they must resolve the same there; the device
is not compared: a text decoded on another device can differ by rounding, as in another batch shape).

The store is a JSON Lines file:

- a header line ``{"llm2_sample_cache": 1, "model_args": {...}, "seed_base": N, "created": ...}``: the model args
  that decide the answers (:func:`llm2_eval.model_args.answer_args`) and the base seed of the run that created it;
  a run with other model args is refused (:func:`check_store_args`): the stored samples are another
  configuration's; so is a run with another base seed once the store holds sampled lines drawn from the run's
  base (it would find none of them: its seeds differ; a greedy text, or a sample seeded by the task's ``seed``
  generation kwarg, does not depend on it);
- one line per finished sample, ``{"key", "text", "task", "doc_id", "repeat", "seed"}`` (a sampled one also with
  the ``seed_base`` of the run that drew it, null when the task gave the seed; lines without it have the header's),
  where ``key`` is
  :func:`sample_key` of the prompt, the generation kwargs and the seed (null for a greedy request); a decoded
  batch is written at once, flushed and fsynced, so a killed run loses at most the batch it was decoding. A last
  line cut by the kill is dropped when the store is opened again.

The store never replaces a file llm2 did not write (:func:`check_store_path`) and is locked while written
(:func:`llm2_eval.paths.lock_for_writing`). Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from llm2_eval.jsonl import iter_jsonl
from llm2_eval.paths import lock_for_writing, resolved, same_path

HEADER_KEY = "llm2_sample_cache"  # its value is the store's format version
FORMAT_VERSION = 1
OPTION = "sample_cache"


def sample_key(context: str, gen_kwargs: str, seed: int | None) -> str:
    """The store key of one sample: sha256 of the prompt, the request's generation kwargs (as JSON) and its seed;
    ``seed`` None for a greedy request (its one text, whatever the copy)."""
    data = json.dumps([context, gen_kwargs, None if seed is None else int(seed)])
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def read_store_header(path: str | os.PathLike) -> dict | None:
    """The header (first line) of the store at ``path``; None when there is no file or its first line is not a
    sample-cache header."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline(1 << 20))
    except (OSError, ValueError):
        return None
    return first if isinstance(first, dict) and HEADER_KEY in first else None


def check_store_path(path: str | os.PathLike, inputs: Mapping[str, Any]) -> None:
    """Refuse a ``sample_cache=`` path that would destroy a file llm2 did not write, before anything is written.

    Args:
        path: the store file.
        inputs: ``{name: path or list of paths}`` that the store must never be or be inside (the LLM, the
            verifier, lm-eval's cache files, the trace); None entries and objects that are not paths are ignored.

    Raises:
        ValueError: one line naming ``sample_cache=`` and the reason: the path is (inside) one of ``inputs``, a
            directory, or an existing non-empty file whose first line is not a sample-cache header.
    """
    p = Path(path).expanduser()
    for name, value in inputs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, os.PathLike)) or not str(v):
                continue
            if same_path(p, v):
                raise ValueError(f"{OPTION}={path} is the {name} ({v}): choose another {OPTION} path")
            if Path(v).expanduser().is_dir() and resolved(p).is_relative_to(resolved(v)):
                raise ValueError(f"{OPTION}={path} is inside the {name} directory ({v}): choose a path outside it")
    if p.is_dir():
        raise ValueError(f"{OPTION}={path}: is a directory; give the path of a sample-cache file")
    if p.is_file() and p.stat().st_size > 0 and read_store_header(p) is None:
        raise ValueError(f"{OPTION}={path}: the file exists and is not an llm2 sample cache (its first line is no "
                         f"{HEADER_KEY} header): choose another {OPTION} path")


def _normal(model_args: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps({str(k): v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
                                  for k, v in model_args.items()}))


def check_store_args(path: str | os.PathLike, header: Mapping[str, Any], model_args: Mapping[str, Any],
                     seed_base: int | None = None) -> None:
    """Refuse a store whose ``header`` was written with other model args (or, when ``seed_base`` is given, another
    base seed): its samples are not this configuration's.

    Raises:
        ValueError: one line naming ``sample_cache=PATH`` and the model args that differ.
    """
    old, want = header.get("model_args") or {}, _normal(model_args)
    diff = [(k, old.get(k), want.get(k)) for k in sorted(set(old) | set(want)) if old.get(k) != want.get(k)]
    if seed_base is not None and header.get("seed_base") != int(seed_base) and not diff:
        diff = [("seed (the base drawn without the seed model arg: give seed=N)", header.get("seed_base"),
                 int(seed_base))]
    if header.get(HEADER_KEY) != FORMAT_VERSION:
        diff = [("format version", header.get(HEADER_KEY), FORMAT_VERSION)] + diff
    if diff:
        shown = "; ".join(f"{k}: store {a!r}, now {b!r}" for k, a, b in diff[:4])
        raise ValueError(f"{OPTION}={path} holds the samples of other model args ({shown}): use another "
                         f"{OPTION} path, or the same model args")


def check_store(path: str | os.PathLike, inputs: Mapping[str, Any], model_args: Mapping[str, Any]) -> None:
    """The start-up check of a ``sample_cache=`` path, before any weight loads: :func:`check_store_path`, then an
    existing store's header against ``model_args`` (:func:`check_store_args`; the base seed is compared when the
    store opens).

    Raises:
        ValueError: one line naming ``sample_cache=PATH`` and why it is refused.
    """
    check_store_path(path, inputs)
    header = read_store_header(path)
    if header is not None:
        check_store_args(path, header, model_args)


_HELD: dict[str, "SampleStore"] = {}  # the stores this process writes, by resolved path


class SampleStore:
    """An open sample cache (see the module's docstring): the stored samples by key, and appends of new ones.

    Opening creates the file (and its parent folders) with a header, or reads an existing store after checking its
    header against ``model_args``, and ``seed_base`` against that of its sampled lines (:func:`check_store_args`);
    a last line cut by a kill is dropped.

    Args:
        path: the store file.
        model_args: the model args that decide the answers (:func:`llm2_eval.model_args.answer_args`).
        seed_base: the run's base seed (the ``seed`` model arg, or the one drawn without it).

    Attributes:
        path: the file.
        resumed: whether the store held samples when it was opened (a resumed run).

    Raises:
        ValueError: the store was written with other model args, or holds samples drawn from another base seed,
            or a complete line of it is not a sample.
        llm2_eval.paths.FileLockedError: another process writes the store.
    """

    def __init__(self, path: str | os.PathLike, model_args: Mapping[str, Any], seed_base: int) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = _HELD.pop(str(resolved(self.path)), None)
        if old is not None:  # an earlier llm2 model object of this Python session: the newer run takes it over
            old.close()
        self._file = open(self.path, "a+b")
        lock_for_writing(self._file, f"{OPTION}={path}")
        _HELD[str(resolved(self.path))] = self
        self._texts: dict[str, str] = {}
        self._seed_base = int(seed_base)
        data = self.path.read_bytes()
        try:
            if data.strip():
                header = read_store_header(self.path)
                if header is None:
                    raise ValueError(f"{OPTION}={path}: the file is not an llm2 sample cache (its first line is no "
                                     f"{HEADER_KEY} header): choose another {OPTION} path")
                check_store_args(path, header, model_args)  # the base seed: below, where samples need it
        except ValueError:
            self._file.close()
            raise
        if data and not data.endswith(b"\n"):  # a line cut by a kill: dropped
            data = data[: data.rfind(b"\n") + 1]
            self._file.truncate(len(data))
        if not data.strip():
            self._file.truncate(0)
            header = {HEADER_KEY: FORMAT_VERSION, "model_args": _normal(model_args), "seed_base": int(seed_base),
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            self._write([header])
            data = b""
        try:
            bases = set()  # of the sampled lines (a greedy text does not depend on the seed)
            for lineno, line in iter_jsonl(self.path, error=_bad_line) if data else ():
                if lineno == 1:  # the header, read above
                    continue
                if not isinstance(line.get("key"), str) or not isinstance(line.get("text"), str):
                    raise _bad_line(self.path, lineno, "a sample line needs a string key and text")
                self._texts[line["key"]] = line["text"]
                if line.get("seed") is not None and line.get("seed_base", 0) is not None:  # None: the task's seed
                    bases.add(line.get("seed_base", header.get("seed_base")))
            if bases and self._seed_base not in bases:
                check_store_args(path, {**header, "seed_base": sorted(bases, key=str)[0]}, model_args, seed_base)
        except ValueError:
            self._file.close()
            raise
        self.resumed = bool(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def get(self, key: str) -> str | None:
        """The stored text of the sample ``key`` (:func:`sample_key`), None when it is not stored."""
        return self._texts.get(key)

    def add(self, samples: list[dict]) -> None:
        """Append finished samples (dicts with at least ``key`` and ``text``; a sampled one, with a ``seed`` that is
        not None, is stamped with the store's base seed unless it carries ``seed_base``: None when the task's
        generation kwargs gave the seed) in one write, flushed and fsynced."""
        samples = [s if s.get("seed") is None or "seed_base" in s else {**s, "seed_base": self._seed_base}
                   for s in samples if s["key"] not in self._texts]
        if samples and self._file.closed:
            raise ValueError(f"{OPTION}={self.path} is closed (a newer llm2 model of this process opened it): "
                             "decode with that model")
        if samples:
            self._write(samples)
            self._texts.update((s["key"], s["text"]) for s in samples)

    def _write(self, lines: list[dict]) -> None:
        self._file.write("".join(json.dumps(x) + "\n" for x in lines).encode("ascii"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (and release its lock); a closed store still answers, but stores nothing more."""
        self._file.close()


def _bad_line(path: str | os.PathLike, line: int, reason: str) -> ValueError:
    return ValueError(f"{OPTION}={path}: line {line}: {reason}")
