"""What the next token can be, and how one is drawn: the candidate set ``V_t`` and seeded sampling.

:func:`plausible_candidates` is the one candidate-set function of the project (docs/method.md section 3 step 2), used by
decoding and by exploration (one rule: the alpha set intersected with the top-k set); :func:`sample_from_logits`
draws from the fused scores ``z*`` (step 5) with one CPU generator per row, so a row's samples never depend on the
rest of its batch. The seeds themselves are hashes of what identifies a sample (:func:`seed_hash`; lm-eval requests:
:func:`context_seed`, exploration rollouts: :func:`derive_seed`), so they are the same on every run and machine.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Sequence

import torch


#: the released plausibility threshold (docs/method.md section 8): the alpha in effect when neither alpha nor top-k is given
DEFAULT_ALPHA = 0.1


def resolve_alpha(alpha: float | None, top_k: int = 0) -> float | None:
    """The alpha threshold in effect: ``alpha`` when given; unset, :data:`DEFAULT_ALPHA` without top-k and no
    alpha threshold at all (pure top-k) with ``top_k > 0``. See :func:`plausible_candidates` for the rule."""
    if alpha is not None:
        return float(alpha)
    return None if top_k and int(top_k) > 0 else DEFAULT_ALPHA


def plausible_candidates(
    logits: torch.Tensor,
    *,
    alpha: float | None = None,
    top_k: int = 0,
    max_candidates: int | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate set ``V_t`` of each row (docs/method.md section 3 step 2; paper Sec. 2.2).

    One rule, for decoding and exploration alike: ``V_t`` is the intersection of the plausible set
    ``{v : p(v) >= alpha * max_u p(u)}`` (i.e. ``logit >= max_logit + log(alpha)``) and the ``top_k`` most
    probable tokens, each filter applying when it is set. This is the rule of the authors' released data builder
    (their plausibility and top-k masks combined with AND); their decoding applies top-k only when alpha is 0, so
    there alpha wins over top-k. With the released settings (alpha 0.1, no top-k) both are the same set.

    Defaults: ``alpha=None`` means :data:`DEFAULT_ALPHA` (0.1) when ``top_k`` is 0, and no alpha threshold when
    ``top_k > 0`` (so ``top_k`` alone is the pure top-k set); give both for the intersection
    (:func:`resolve_alpha`).

    Args:
        logits: next-token logits, shape ``[batch, vocab]`` (any float dtype).
        alpha: plausibility threshold in (0, 1], or None (see above).
        top_k: when > 0, keep at most the ``top_k`` most probable tokens (exactly ``top_k`` without alpha; ties
            at the k-th logit are broken by ``torch.topk``).
        max_candidates: optional cap, most probable first.
        exclude: optional token ids to remove from the set, shape ``[batch]`` (exploration removes the gold
            token this way) after the set is formed; later candidates shift left, and a row may then have no
            candidate at all.

    Returns:
        ``(ids, mask)``: ``ids`` shape ``[batch, K]`` long, sorted by decreasing probability (ties in index
        order), ``K`` the largest set size in the batch; ``mask`` shape ``[batch, K]`` bool, True for real
        candidates. Without ``exclude`` every row has at least one candidate and ``ids[:, 0]`` is the argmax.
    """
    z = logits.float()
    vocab = z.shape[-1]
    a = resolve_alpha(alpha, top_k)
    if a is not None:
        threshold = z.max(dim=-1, keepdim=True).values + math.log(a)
        counts = (z >= threshold).sum(dim=-1)  # a prefix of the sorted logits
    else:
        counts = torch.full((z.shape[0],), vocab, device=z.device, dtype=torch.long)
    if top_k and top_k > 0:
        counts = counts.clamp(max=min(int(top_k), vocab))  # both sets are prefixes: their intersection is the shorter
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


def seed_hash(data: bytes) -> int:
    """The project's one seed hash: a 63-bit seed from ``data`` (the first 8 bytes of its BLAKE2b digest read
    little-endian, shifted right by one bit), the same across runs, machines and Python versions."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def derive_seed(*parts: Any) -> int:
    """:func:`seed_hash` of JSON-serialisable ``parts`` (keys sorted, other objects as ``str``), e.g. the seed of
    one exploration rollout from ``(seed, example id, position, token, rollout)``."""
    return seed_hash(json.dumps(parts, sort_keys=True, default=str).encode())


def context_seed(base: int, context: Sequence[int], copy_index: int) -> int:
    """:func:`seed_hash` of a sampling request: the base seed (8 bytes, signed), the prompt's token ids (int64
    each) and which sample of that prompt it is (8 bytes), all little-endian."""
    tokens = torch.as_tensor(context, dtype=torch.int64).cpu().numpy().tobytes()
    return seed_hash(int(base).to_bytes(8, "little", signed=True) + tokens + int(copy_index).to_bytes(8, "little"))

