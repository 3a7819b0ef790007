"""KV caches of the decode loop: a model forward bound to its cache, and prompt prefixes shared by many rows.

:class:`CachedForward` hides how a transformers model takes its cache (``cache`` / ``past_key_values``) and whether
it can return the last position's logits only. :class:`SharedPrefix` runs one token sequence through the LLM once
and cuts batch caches of its prefixes from that single forward (exploration rollouts, docs/method.md section 4);
:class:`PrefixCache` hands such a batch to :func:`llm2_eval.decoding.generate`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel


def new_cache(model: torch.nn.Module, full_attention: bool = False):
    """A ``DynamicCache`` for ``model``; ``full_attention=True`` keeps every position of every layer (croppable)."""
    if full_attention:
        return DynamicCache()
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def sliding_window(config) -> int | None:
    """The sliding-window size of a model whose attention layers use one, else None."""
    types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    uses = any("sliding" in str(t) for t in types) or bool(getattr(config, "use_sliding_window", False))
    return int(window) if uses and window else None



class CachedForward:
    """A model forward with its KV cache, hiding the transformers keyword spelling (``cache`` / ``past_key_values``).

    Args:
        model: a causal LM or a token-classification verifier.
        full_attention: keep every position of every layer in the cache (see :func:`new_cache`).
    """

    def __init__(self, model: torch.nn.Module, full_attention: bool = False):
        self.model = model
        self.cache = new_cache(model, full_attention)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keeps_logits = "logits_to_keep" in params

    def __call__(self, input_ids, attention_mask, position_ids, last_only: bool = False, cache=None):
        """Logits of ``input_ids`` ``[b, n]`` read after the cache (``cache`` or this forward's own); the cache grows
        by ``n`` columns. ``attention_mask`` is 2-D ``[b, cached + n]`` or an additive 4-D mask; ``last_only``
        keeps only the last position's logits when the model can."""
        kwargs = {self.cache_kw: self.cache if cache is None else cache, "use_cache": True}
        if last_only and self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.logits

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep the cache rows ``keep`` (long ``[rows]``), in that order (repeats allowed)."""
        if self.cache.get_seq_length() > 0:
            self.cache.batch_select_indices(keep)


@dataclass
class PrefixCache:
    """A batch of left-padded prompt prefixes whose LLM KV cache is already computed (``generate(prefix_cache=)``).

    Attributes:
        input_ids: ``[rows, C]`` long, the prefixes, left-padded (pad id 0, masked).
        attention_mask: ``[rows, C]`` long, 1 for real tokens.
        cache: the LLM's KV cache over those ``C`` columns, batch ``rows``; :func:`generate` consumes (mutates) it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: object


class SharedPrefix:
    """One token sequence run through the LLM once; batch caches of its prefixes are cut from that single forward.

    Causal attention makes the keys/values of ``token_ids[:L]`` the first ``L`` columns of the full sequence's, so
    every prefix (e.g. the ``prompt + gold[:t]`` of each explored position, docs/method.md section 4) shares one prefill;
    :meth:`batch` repeats and left-pads them into a :class:`PrefixCache` for :func:`generate`.

    Args:
        llm: a causal LM whose KV cache is a full-attention ``DynamicCache`` (no sliding-window/linear layers).
        token_ids: the sequence (``n >= 1`` ids).
        logits_at: indices into ``token_ids`` whose next-token logits to keep in ``self.logits``, shape
            ``[len(logits_at), vocab]`` float32 (row ``i`` predicts ``token_ids[logits_at[i] + 1]``).

    Raises:
        ValueError: an empty sequence, or a cache with sliding-window / non-standard layers (prefixes cannot be
            cut from it); callers then fall back to plain :func:`generate`.
    """

    @torch.inference_mode()
    def __init__(self, llm: "PreTrainedModel", token_ids: Sequence[int], *, logits_at: Sequence[int] = ()):
        if len(token_ids) == 0:
            raise ValueError("SharedPrefix needs at least one token")
        self.model = llm
        self.token_ids = [int(t) for t in token_ids]
        n = len(self.token_ids)
        dev = next(llm.parameters()).device
        fwd = CachedForward(llm)
        at = torch.tensor([int(i) for i in logits_at], dtype=torch.long, device=dev)
        kwargs = {fwd.cache_kw: fwd.cache, "use_cache": True}
        if fwd.keeps_logits:
            kwargs["logits_to_keep"] = at if at.numel() else 1
        out = llm(
            input_ids=torch.tensor([self.token_ids], device=dev),
            attention_mask=torch.ones(1, n, dtype=torch.long, device=dev),
            position_ids=torch.arange(n, device=dev)[None],
            **kwargs,
        )
        logits = out.logits[0] if fwd.keeps_logits else out.logits[0, at]
        self.logits = logits[: at.numel()].float()
        layers = getattr(fwd.cache, "layers", None)
        if not layers or any(
            getattr(layer, "is_sliding", False) or getattr(layer, "keys", None) is None or layer.keys.shape[-2] != n
            for layer in layers
        ):
            raise ValueError(f"{type(llm).__name__}: its KV cache is not a plain full-attention cache; cannot share prefixes")
        self._kv = [(layer.keys, layer.values) for layer in layers]

    def batch(self, lengths: Sequence[int], repeats: Sequence[int]) -> PrefixCache:
        """A :class:`PrefixCache` whose rows are ``token_ids[:lengths[i]]``, each repeated ``repeats[i]`` times.

        Rows are in order (prefix 0 x repeats[0], prefix 1 x repeats[1], ...), left-padded to ``max(lengths)``.

        Raises:
            ValueError: a length outside ``[1, n]``, a negative repeat, or no row at all.
        """
        n = len(self.token_ids)
        if len(lengths) != len(repeats) or any(not 1 <= int(ln) <= n for ln in lengths) or any(r < 0 for r in repeats):
            raise ValueError(f"prefix lengths must be in [1, {n}] with one repeat count >= 0 each")
        if sum(repeats) == 0:
            raise ValueError("a prefix batch needs at least one row")
        width = max(int(ln) for ln, r in zip(lengths, repeats) if r > 0)
        cache = new_cache(self.model)
        for li, (keys, values) in enumerate(self._kv):
            ks, vs = [], []
            for ln, r in zip(lengths, repeats):
                if r == 0:
                    continue
                k, v = keys[:, :, :ln], values[:, :, :ln]
                if ln < width:
                    k = torch.cat([k.new_zeros(*k.shape[:2], width - ln, k.shape[-1]), k], dim=2)
                    v = torch.cat([v.new_zeros(*v.shape[:2], width - ln, v.shape[-1]), v], dim=2)
                ks.append(k.expand(r, -1, -1, -1))
                vs.append(v.expand(r, -1, -1, -1))
            cache.update(torch.cat(ks, 0), torch.cat(vs, 0), li)
        ids, mask = [], []
        for ln, r in zip(lengths, repeats):
            pad = width - int(ln)
            ids += [[0] * pad + self.token_ids[: int(ln)]] * r
            mask += [[0] * pad + [1] * int(ln)] * r
        dev = self._kv[0][0].device
        return PrefixCache(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            attention_mask=torch.tensor(mask, dtype=torch.long, device=dev),
            cache=cache,
        )

