"""Counting compute: token forwards of a run, exact from its trace or estimated from its logged samples.

A token forward is one token fed through a model: prompt prefill, one per generated token, and the verifier's
candidate slots. The ``llm2`` trace counts them exactly per sequence; for runs without one (``--model hf``, or
``llm2`` without ``trace=``) the LLM's are estimated by tokenising the logged prompts and generations. Either way
the result is a :class:`Compute`, which :mod:`~llm2_eval.report.rows` puts into the run's row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llm2_eval.paths import is_hub_id
from llm2_eval.report.runs import ReportError, Sample, num


@dataclass
class Compute:
    """The compute of one (run, task), in token forwards (tokens fed through a model) and seconds.

    Attributes:
        llm_token_forwards: the LLM's (None: unknown).
        verifier_token_forwards: the verifier's (0 for runs without one; None: unknown).
        source: ``"trace"`` (exact), ``"tokenizer"`` or ``"chars/4"`` (estimated), or ``"none"``.
        estimated: counted from the logged samples, not from a trace.
        decode_seconds: sum of the trace's per-sequence seconds (None without them).
        flips: scored steps where the verifier changed the LLM's choice, summed over the trace's sequences (the
            trace's ``flips``, :class:`llm2_eval.decoding.RowStats`; None without a trace or when its lines lack it).
        trace_file: the trace the counts come from.
        questions: the documents the trace covers (None without trace lines).
        notes: what the reader should know about these numbers.
    """

    llm_token_forwards: float | None = None
    verifier_token_forwards: float | None = None
    source: str = "none"
    estimated: bool = False
    decode_seconds: float | None = None
    flips: float | None = None
    trace_file: str | None = None
    questions: int | None = None
    notes: list[str] = field(default_factory=list)


class TokenCounter:
    """Counts tokens of logged prompts / generations for runs without traces.

    Uses ``transformers.AutoTokenizer`` on a local path (or a hub id already in the local cache; nothing is
    downloaded); falls back to ``ceil(characters / 4)`` per text when no tokenizer can be loaded.
    """

    def __init__(self, override: str | None = None) -> None:
        self.override = override
        self._cache: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def tokenizer_for(self, pretrained: str | None) -> Any | None:
        """The tokenizer for ``pretrained`` (or the override given at construction), or None if unavailable.

        Raises:
            ReportError: the override tokenizer cannot be loaded (a run's own ``pretrained`` falls back instead).
        """
        name = self.override or pretrained
        if not name:
            return None
        if name not in self._cache:
            tok = None
            path_like = not is_hub_id(name)
            if path_like and not Path(name).expanduser().exists():
                self.errors[name] = "not found on this machine"
            else:
                try:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if path_like else name,
                                                        local_files_only=True)
                except Exception as err:  # noqa: BLE001 - any failure: fall back to the labelled estimate
                    self.errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            if tok is None and self.override:
                raise ReportError(f"cannot load the tokenizer --tokenizer {name}: {self.errors[name]}")
            self._cache[name] = tok
        return self._cache[name]

    @staticmethod
    def count(texts: Sequence[str], tokenizer: Any | None) -> list[int]:
        """Token counts of ``texts`` (no special tokens added), or ``ceil(len / 4)`` without a tokenizer."""
        if not texts:
            return []
        if tokenizer is None:
            return [math.ceil(len(t) / 4) for t in texts]
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]


def compute_from_trace(
    task: str, k: int, n_questions: int | None, trace_path: Path, trace: list[dict], samples: list[Sample] | None
) -> Compute:
    """The compute of ``task`` from the lines of its run's trace (exact counts, ``source="trace"``).

    Only lines of ``task`` (and, with logged samples, of their documents) count; when a (document, repeat)
    appears several times (a trace appended to by several runs) the last line wins, with a note. A trace that
    covers fewer sequences than ``questions x k`` (``n_questions``, else the documents it covers) gets a note that
    the compute is a lower bound. A trace without lines of ``task`` gives ``source="none"`` and a note.
    """
    doc_ids = {str(s.doc_id) for s in samples} if samples is not None else None
    by_key: dict[tuple[str, int], dict] = {}
    duplicates = 0
    for line in trace:
        if line["task"] != task or (doc_ids is not None and str(line["doc_id"]) not in doc_ids):
            continue
        key = (str(line["doc_id"]), int(num(line.get("repeat", 0)) or 0))
        duplicates += key in by_key
        by_key[key] = line  # a trace appended to by several runs: the last line wins
    if not by_key:
        return Compute(notes=[f"trace {trace_path} has no lines for task {task}"])
    lines = list(by_key.values())
    secs = [num(x.get("seconds")) for x in lines]
    flips = [num(x.get("flips")) for x in lines]
    found = Compute(
        llm_token_forwards=float(sum(num(x["llm_token_forwards"]) for x in lines)),
        verifier_token_forwards=float(sum(num(x["verifier_token_forwards"]) for x in lines)),
        source="trace", trace_file=str(trace_path), questions=len({key[0] for key in by_key}),
        decode_seconds=float(sum(s for s in secs if s is not None)) if any(s is not None for s in secs) else None,
        flips=float(sum(flips)) if all(f is not None for f in flips) else None,
    )
    if duplicates:
        found.notes.append(f"{duplicates} duplicate trace lines (trace appended by several runs?); last kept")
    questions = n_questions if n_questions is not None else found.questions
    expected = questions * k if questions else None
    if expected is not None and len(lines) < expected:
        found.notes.append(f"trace covers {len(lines)} of {expected} sequences: compute is a lower bound")
    return found


def estimate_from_samples(
    samples: list[Sample], counter: TokenCounter, model: str, model_args: dict[str, str], verifier: bool,
) -> Compute:
    """Estimate the LLM token forwards of a run without trace from its logged samples (``estimated=True``).

    Prompt tokens count once per question for ``llm2`` (its repeats share one prefill), once per sample for other
    models, plus the tokens of every generation; counted with the run's tokenizer, else as characters / 4. The
    verifier forwards of an LLM2 run stay unknown (a note says so); other runs have none.
    """
    tokenizer = counter.tokenizer_for(model_args.get("pretrained"))
    shared_prompt = model.lower() == "llm2"  # llm2 prefills a prompt once for all its repeats
    prompts: list[str] = []
    prompt_mult: list[int] = []
    gens: list[str] = []
    for s in samples:
        for i, prompt in enumerate(s.prompts):
            resps = s.responses[i] if i < len(s.responses) else []
            prompts.append(prompt)
            prompt_mult.append(1 if shared_prompt else max(1, len(resps)))
        for resps in s.responses:
            gens.extend(resps)
    n_prompt = sum(c * m for c, m in zip(counter.count(prompts, tokenizer), prompt_mult))
    n_gen = sum(counter.count(gens, tokenizer))
    found = Compute(llm_token_forwards=float(n_prompt + n_gen), estimated=True,
                    source="tokenizer" if tokenizer is not None else "chars/4")
    if tokenizer is None:
        name = counter.override or model_args.get("pretrained")
        why = f" ({counter.errors[name]})" if name in counter.errors else ""
        found.notes.append(f"no tokenizer for {name or 'this run'}{why}: token counts are characters / 4")
    if verifier:
        found.notes.append("LLM2 run without trace: verifier token forwards unknown (pass trace= to llm2)")
    else:
        found.verifier_token_forwards = 0.0
    return found
