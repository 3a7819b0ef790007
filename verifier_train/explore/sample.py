"""``--strategy sample`` (the authors' released data builder, no rollouts): every sampled plausible non-gold token is
a negative.

docs/method.md section 4. For a batch of scored solutions (:class:`~verifier_train.explore.explorer.Solution`),
:func:`sample_labels` runs two phases:

1. with ``--contrast-model``: the second model's ``p_t`` at every explored position, one ``score_many`` call for
   the batch; whatever the mode, the candidate set then shrinks to the tokens plausible under both models (as the
   authors' builder does);
2. per explored position, ``--num-samples`` draws with replacement from ``softmax(scores / temperature)`` over the
   candidate set (seeded by ``(--seed, example id, t, "sample")``), where ``scores`` are the LLM's log-probabilities
   ``l1`` (``--mode base``), constants (``uniform``), the contrast ``l1 + gamma * (l1 - l2)`` with the second
   model's ``l2`` (``contrast``) or ``l2`` alone (``expert``: negatives a stronger model finds plausible);
   :func:`~verifier_train.explore.labels.sample_scores`.

As in the authors' builder, end-of-turn / EOS ids are never in the set (the builder drops its EOS-as-pad id; the
scoring phase leaves them out, :meth:`~verifier_train.explore.explorer.Explorer.score_solutions`): a sampled
negative never claims that ending the response there is worse than the gold token, which only rollouts could tell;
and duplicate draws are kept (``--keep-duplicates``, default): a token drawn twice is two pairs, so negatives weigh
as often as they are drawn; ``--no-keep-duplicates`` writes each drawn token once, in first-draw order.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.explorer import Explorer, Solution
from verifier_train.explore.inputs import derive_seed
from verifier_train.explore.labels import candidate_mask, sample_scores


def sample_labels(ex: Explorer, solutions: Sequence[Solution]) -> list[dict[str, Any]]:
    """The sample strategy over a batch of solutions (each with at least one explored position): the phases of the
    module docstring.

    Returns:
        Per solution, its labels for :meth:`~verifier_train.explore.explorer.Explorer.record`: ``samples``
        (``[t, gold_id, v]`` per kept draw) and ``draws`` (``{"pos", "gold_id", "tokens", "set_size"}`` per position
        with a non-empty candidate set).
    """
    cfg = ex.cfg
    allowed = [s.allowed for s in solutions]
    contrast: list[torch.Tensor | None] = [None] * len(solutions)
    if ex.contrast is not None:
        second = ex.contrast.score_many([(s.ids, s.positions) for s in solutions])
        for k, (s, l2) in enumerate(zip(solutions, second)):
            contrast[k] = l2[:, : ex.vocab].float().to(s.logits.device)
            gold_ids = torch.tensor([s.ids[t] for t in s.positions], device=s.logits.device)
            allowed[k] = allowed[k] & candidate_mask(contrast[k], gold_ids, cfg.alpha, cfg.top_k)
    return [draw_negatives(cfg, s, a, l2) for s, a, l2 in zip(solutions, allowed, contrast)]


def draw_negatives(
    cfg: ExploreConfig, s: Solution, allowed: torch.Tensor, contrast_logits: torch.Tensor | None
) -> dict[str, Any]:
    """Phase 2 for one solution: the seeded draws of every explored position.

    Args:
        cfg: the settings (``mode``, ``gamma``, temperature, ``num_samples``, ``keep_duplicates``, ``seed``).
        s: the solution, ``s.logits`` ``[P, vocab]``.
        allowed: ``[P, vocab]`` bool candidate sets.
        contrast_logits: ``[P, vocab]`` the second model's logits, or None.
    """
    scores = sample_scores(cfg.mode, s.logits, contrast_logits, cfg.gamma) / cfg.resolved_temperature
    scores = scores.masked_fill(~allowed, -float("inf")).cpu()
    allowed = allowed.cpu()
    samples, drawn = [], []
    for i, t in enumerate(s.positions):
        if not bool(allowed[i].any()):
            continue
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(cfg.seed, s.example.id, t, "sample"))
        draws = torch.multinomial(torch.softmax(scores[i], dim=-1), cfg.num_samples, replacement=True, generator=g)
        tokens = [int(v) for v in draws.tolist() if bool(allowed[i, v])]  # in draw order
        if not cfg.keep_duplicates:
            tokens = list(dict.fromkeys(tokens))
        samples.extend([t, int(s.ids[t]), v] for v in tokens)
        drawn.append({"pos": t, "gold_id": int(s.ids[t]), "tokens": tokens, "set_size": int(allowed[i].sum())})
    return {"samples": samples, "draws": drawn}
