"""lm-eval's ``generate_until`` requests grouped and cut into decoding batches for the ``llm2`` model.

lm-eval sends ``repeats`` copies of a document's request; the ``llm2`` model decodes a group of identical requests
from ONE prefill of their prompt (:func:`llm2_eval.decoding.generate` with ``repeats``). This module holds the
plan of one ``generate_until`` call (:class:`Plan`: groups, their order, the batches) and an encoded batch
(:class:`EncodedBatch`); :class:`llm2_eval.lm_eval_model.LLM2LM` fills them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from llm2_eval.decoding import DecodeConfig

Key = tuple[str, str]  # a group of identical requests: (prompt, generation kwargs as sorted JSON)


def group_requests(requests: Sequence[Any]) -> dict[Key, list[int]]:
    """Request indices by group of identical requests (same prompt and generation kwargs), in request order."""
    groups: dict[Key, list[int]] = {}
    for i, req in enumerate(requests):
        context, gen_kwargs = req.args
        groups.setdefault((context, json.dumps(gen_kwargs, sort_keys=True, default=str)), []).append(i)
    return groups


def padding_flags(requests: Sequence[Any]) -> list[bool]:
    """Per request, whether it is lm-eval's data-parallel padding: to even out the ranks lm-eval sends one rank's
    last request again (its results are dropped), so copies of one ``Instance`` beyond its ``repeats`` are padding.
    """
    seen: dict[int, int] = {}
    padding = []
    for req in requests:
        seen[id(req)] = seen.get(id(req), 0) + 1
        padding.append(seen[id(req)] > max(int(getattr(req, "repeats", 1) or 1), 1))
    return padding


def cut_batches(order: list[Key], groups: dict[Key, list[int]], limit: int) -> list[list[Key]]:
    """Request groups in ``order`` cut into batches of at most ``limit`` rows (a group is never split: a batch of
    one group may hold more) and of one set of generation kwargs."""
    batches: list[list[Key]] = []
    for key in order:
        rows = sum(len(groups[k]) for k in batches[-1]) if batches else 0
        if batches and batches[-1][0][1] == key[1] and rows + len(groups[key]) <= max(limit, 1):
            batches[-1].append(key)
        else:
            batches.append([key])
    return batches


@dataclass
class Plan:
    """How one ``generate_until`` call decodes its requests.

    Attributes:
        groups: request indices by group of identical requests (:func:`group_requests`).
        order: the groups, longest prompt first within one set of generation kwargs (as HFLM).
        batches: the groups cut into batches (:func:`cut_batches`); after a sample cache answered some, the rest.
        limit: rows per batch (``batch_size``).
        padding: per request, whether it is data-parallel padding (:func:`padding_flags`).
        eos: the end-of-text string (a stop string of every request).
        seeds: with a sample cache, the seeds of each sampled group's rows, drawn before any decoding.
    """

    groups: dict[Key, list[int]]
    order: list[Key]
    batches: list[list[Key]]
    limit: int
    padding: list[bool]
    eos: str
    seeds: dict[Key, list[int]] = field(default_factory=dict)


@dataclass
class EncodedBatch:
    """One batch of request groups encoded as HFLM encodes prompts.

    Attributes:
        cfg: its decoding settings (model-arg defaults + the task's generation kwargs).
        until: its stop strings (cut from the texts by HFLM's post-processing).
        repeats: rows per group, in the order of the batch's keys.
        context_enc: ``[groups, prompt_len]`` left-padded prompt token ids (truncated to leave ``max_gen_toks``).
        attn: ``[groups, prompt_len]`` attention mask (1 = real token).
        seeds: one seed per output row (``sum(repeats)``) when it samples, else None.
    """

    cfg: DecodeConfig
    until: list[str]
    repeats: list[int]
    context_enc: torch.Tensor
    attn: torch.Tensor
    seeds: list[int] | None
