"""What the next token can be, and how one is drawn: the candidate set ``V_t`` and seeded sampling.

:func:`plausible_candidates` is the one candidate-set function of the project (LLM2.md section 3 step 2), used by
decoding and by exploration; :func:`sample_from_logits` draws from the fused scores ``z*`` (step 5) with one CPU
generator per row, so a row's samples never depend on the rest of its batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def plausible_candidates(
    logits: torch.Tensor,
    *,
    alpha: float = 0.1,
    top_k: int = 0,
    max_candidates: int | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate set ``V_t`` of each row (LLM2.md section 3 step 2; paper Sec. 2.2).

    Args:
        logits: next-token logits, shape ``[batch, vocab]`` (any float dtype).
        alpha: keep tokens with ``p(v) >= alpha * max_u p(u)``, i.e. ``logit >= max_logit + log(alpha)``.
        top_k: when > 0 keep the ``top_k`` most probable tokens instead.
        max_candidates: optional cap, most probable first.
        exclude: optional token ids to remove from the set, shape ``[batch]`` (exploration removes the gold
            token this way); later candidates shift left, and a row may then have no candidate at all.

    Returns:
        ``(ids, mask)``: ``ids`` shape ``[batch, K]`` long, sorted by decreasing probability (ties in index
        order), ``K`` the largest set size in the batch; ``mask`` shape ``[batch, K]`` bool, True for real
        candidates. Without ``exclude`` every row has at least one candidate and ``ids[:, 0]`` is the argmax.
    """
    z = logits.float()
    if top_k and top_k > 0:
        counts = torch.full((z.shape[0],), min(int(top_k), z.shape[-1]), device=z.device, dtype=torch.long)
    else:
        threshold = z.max(dim=-1, keepdim=True).values + math.log(alpha)
        counts = (z >= threshold).sum(dim=-1)
    if max_candidates is not None:
        counts = counts.clamp(max=int(max_candidates))
    k = int(counts.max().item())
    ids = torch.topk(z, k, dim=-1, sorted=True).indices
    mask = torch.arange(k, device=z.device)[None, :] < counts[:, None]
    if exclude is None:
        return ids, mask
    mask = mask & (ids != exclude.to(ids.device)[:, None])
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)  # real candidates first, order kept
    ids, mask = ids.gather(-1, order), mask.gather(-1, order)
    width = max(int(mask.sum(-1).max().item()), 1)
    return ids[:, :width], mask[:, :width]


def _row_uniforms(generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators]).to(device)


def sample_from_logits(
    z: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """Draw one index per row from ``softmax(z / temperature)`` after a top-p (nucleus) filter.

    Each row draws one uniform number from its own CPU ``torch.Generator``, so a row's samples depend only on its
    own seed and logits, never on the other rows of the batch or on the device.

    Args:
        z: scores ``[batch, n]`` (``-inf`` = excluded).
        temperature: > 0.
        top_p: keep the smallest prefix of the sorted distribution whose mass reaches ``top_p`` (at least 1).
        generators: one per row.

    Returns:
        Long tensor ``[batch]`` of indices into ``n``.
    """
    probs = torch.softmax(z.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        before = sorted_p.cumsum(-1) - sorted_p
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    cdf = sorted_p.double().cumsum(-1)
    u = _row_uniforms(generators, z.device)[:, None] * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u).clamp_(max=z.shape[-1] - 1)
    # never land on a zero-probability slot (u at the very top of the cdf)
    nonzero = (sorted_p > 0).sum(-1, keepdim=True) - 1
    pick = torch.minimum(pick, nonzero)
    return order.gather(-1, pick)[:, 0]


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row, seeded with ``seeds[i]``."""
    gens = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(s))
        gens.append(g)
    return gens
