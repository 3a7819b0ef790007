"""Counting compute: token forwards of a run, exact from its trace or estimated from its logged samples.

A token forward is one token fed through a model: prompt prefill, one per generated token, and the verifier's
candidate slots. The ``llm2`` trace counts them exactly per sequence; for runs without one (``--model hf``, or
``llm2`` without ``trace=``) the LLM's are estimated by tokenising the logged prompts and generations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from llm2_eval.report.runs import ReportError, Sample, num

if TYPE_CHECKING:  # pragma: no cover
    from llm2_eval.report.rows import ReportRow


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
            path_like = name.startswith(("/", "./", "../", "~")) or Path(name).drive != ""
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
    row: "ReportRow", trace_path: Path, trace: list[dict], samples: list[Sample] | None
) -> None:
    """Fill ``row``'s compute from the lines of its run's trace (exact counts, ``compute_source="trace"``).

    Only lines of ``row.task`` (and, with logged samples, of their documents) count; when a (document, repeat)
    appears several times (a trace appended to by several runs) the last line wins, with a note. A trace that
    covers fewer sequences than ``questions x k`` gets a note that the compute is a lower bound.
    """
    doc_ids = {str(s.doc_id) for s in samples} if samples is not None else None
    by_key: dict[tuple[str, int], dict] = {}
    duplicates = 0
    for line in trace:
        if line["task"] != row.task or (doc_ids is not None and str(line["doc_id"]) not in doc_ids):
            continue
        key = (str(line["doc_id"]), int(num(line.get("repeat", 0)) or 0))
        duplicates += key in by_key
        by_key[key] = line  # a trace appended to by several runs: the last line wins
    if not by_key:
        row.notes.append(f"trace {trace_path} has no lines for task {row.task}")
        return
    lines = list(by_key.values())
    row.trace_file = str(trace_path)
    row.compute_source = "trace"
    row.llm_token_forwards = float(sum(num(x["llm_token_forwards"]) for x in lines))
    row.verifier_token_forwards = float(sum(num(x["verifier_token_forwards"]) for x in lines))
    secs = [num(x.get("seconds")) for x in lines]
    row.decode_seconds = float(sum(s for s in secs if s is not None)) if any(s is not None for s in secs) else None
    if row.n_questions is None:
        row.n_questions = len({k[0] for k in by_key})
    if duplicates:
        row.notes.append(f"{duplicates} duplicate trace lines (trace appended by several runs?); last kept")
    expected = row.n_questions * row.k if row.n_questions else None
    if expected is not None and len(lines) < expected:
        row.notes.append(f"trace covers {len(lines)} of {expected} sequences: compute is a lower bound")


def estimate_from_samples(
    row: "ReportRow", samples: list[Sample], counter: TokenCounter, model: str, model_args: dict[str, str],
    verifier: bool,
) -> None:
    """Estimate ``row``'s LLM token forwards from the logged samples of a run without trace (marked estimated).

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
    row.llm_token_forwards = float(n_prompt + n_gen)
    row.estimated = True
    if tokenizer is not None:
        row.compute_source = "tokenizer"
    else:
        row.compute_source = "chars/4"
        name = counter.override or model_args.get("pretrained")
        why = f" ({counter.errors[name]})" if name in counter.errors else ""
        row.notes.append(f"no tokenizer for {name or 'this run'}{why}: token counts are characters / 4")
    if verifier:
        row.notes.append("LLM2 run without trace: verifier token forwards unknown (pass trace= to llm2)")
    else:
        row.verifier_token_forwards = 0.0
