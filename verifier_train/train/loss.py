"""The verifier's pairwise loss (paper Eq. 4, docs/method.md section 6) and its held-out metrics.

    L = mean over real pairs (t, gold, neg) of  -log sigmoid(s(x_<t, gold) - s(x_<t, neg))

Scores are read from one forward over a packed batch (:func:`pair_scores`). Two normalisations
(``llm2 train-verifier --loss-normalization``, :data:`LOSS_NORMALIZATIONS`):

- ``pairs`` (default): the sum over the real pairs of the whole global batch divided by their number, so every
  pair weighs the same whatever the batch's padding and however pairs spread over solutions and micro-batches;
- ``official`` (exact parity with the authors' released trainer): per micro-batch, the sum over its real pairs
  divided by its ``B x Pmax`` pair slots (``B`` solutions, ``Pmax`` the most pairs any of them has; the padded
  slots count as zeros), then averaged over the micro-batches of the step. Each step's loss, hence its gradient,
  is the ``pairs`` one scaled by ``real / padded`` slots (below 1 whenever solutions hold different numbers of
  pairs), and pairs of micro-batches with many padded slots weigh less.

Held-out metrics (:func:`eval_metrics`) always average over real pairs, so runs of either kind compare.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from llm2_eval.verifier import verifier_scores
from verifier_train.packing import additive_mask


def pair_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], attn_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verifier scores of the gold and negative token of every packed pair, one forward (docs/method.md section 6).

    Args:
        model: a 1-label token-classification verifier (or its peft/DDP wrapper).
        batch: a :class:`verifier_train.packing.PackedCollator` batch on the model's device.
        attn_dtype: dtype of the additive 4-D mask: the dtype attention runs in (the autocast dtype under mixed
            precision); default the model's parameter dtype.

    Returns:
        ``(s_gold, s_neg)``, float32 ``[B, Pmax]``; entries where ``batch["pair_mask"]`` is False are meaningless.
    """
    if attn_dtype is None:
        attn_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    mask = additive_mask(batch["allowed"], attn_dtype)
    out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
    scores = verifier_scores(out)  # [B, T] fp32
    return scores.gather(1, batch["gold_index"]), scores.gather(1, batch["neg_index"])


#: ``--loss-normalization`` choices (module docstring): ``pairs`` = ours, ``official`` = the authors'
LOSS_NORMALIZATIONS = ("pairs", "official")


def pairwise_loss(
    s_gold: torch.Tensor, s_neg: torch.Tensor, pair_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Paper Eq. 4: ``-log sigmoid(s(gold) - s(neg))`` over the real pairs.

    Args:
        s_gold, s_neg: scores ``[..., P]`` (any float dtype; computed in float32).
        pair_mask: bool ``[..., P]``, True for real pairs.
        reduction: ``"mean"`` (over real pairs; 0 when there is none), ``"slots"`` (the sum over real pairs
            divided by all ``pair_mask.numel()`` slots, padded ones included: the authors' normalisation of one
            micro-batch), ``"sum"`` or ``"none"`` (the real pairs' losses, flattened).

    Returns:
        A scalar, or a 1-D tensor for ``"none"``.
    """
    diff = (s_gold.float() - s_neg.float())[pair_mask]
    losses = -F.logsigmoid(diff)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / max(int(pair_mask.sum()), 1)
    if reduction == "slots":
        return losses.sum() / max(int(pair_mask.numel()), 1)
    raise ValueError(f"reduction={reduction!r}: use mean, slots, sum or none")


def eval_metrics(pred: Any) -> dict[str, float]:
    """compute_metrics for the Trainer: predictions ``[N, P, 2]`` (s_gold, s_neg), labels ``[N, P]`` (1 = real).

    Returns ``loss`` (mean paper Eq. 4 over the real pairs), ``pair_accuracy`` (share of real pairs with
    ``s(gold) > s(neg)``, a tie counting one half, so an untrained zero head reads 0.5) and ``pairs``.
    """
    import numpy as np

    scores = np.asarray(pred.predictions, dtype=np.float64)
    labels = np.asarray(pred.label_ids)
    real = labels == 1
    g, n = scores[..., 0][real], scores[..., 1][real]
    if g.size == 0:
        return {"loss": float("nan"), "pair_accuracy": float("nan"), "pairs": 0}
    d = g - n
    loss = np.logaddexp(0.0, -d).mean()  # -log sigmoid(d)
    return {"loss": float(loss), "pair_accuracy": float((d > 0).mean() + 0.5 * (d == 0).mean()),
            "pairs": int(g.size)}
