"""The lm-eval model ``llm2``: lm-eval's HFLM with generation replaced by LLM2 dual-process decoding.

Everything else is HFLM's own: model and tokenizer loading, tokenisation, chat templates, loglikelihood,
batching and the post-processing of generations (stop strings are cut there). Only ``_model_generate`` is
replaced, by :func:`llm2_eval.decoding.generate` (paper Eq. 1, LLM2.md section 3).

Usage::

    lm_eval --model llm2 --model_args pretrained=LLM_DIR,verifier=VERIFIER_DIR,beta=0.25 \
        --tasks gsm8k_llm2 --apply_chat_template --batch_size 8
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.verifier import check_tokenizers_compatible, load_verifier

log = logging.getLogger(__name__)

# generation kwargs of lm-eval tasks that this model understands (others are rejected, never silently ignored)
_GEN_KWARGS = {"do_sample", "temperature", "top_p", "seed"}


def _opt_int(name: str, value: Any, minimum: int) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"llm2 model arg {name}={value!r} is not an integer") from None
    if isinstance(value, float) and value != out:
        raise ValueError(f"llm2 model arg {name}={value!r} is not an integer")
    if out < minimum:
        raise ValueError(f"llm2 model arg {name}={value!r} must be >= {minimum}")
    return out


def _float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"llm2 model arg {name}={value!r} is not a number") from None


def _seed_for(base: int, context: list[int], copy_index: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(int(base).to_bytes(8, "little", signed=True))
    h.update(torch.tensor(context, dtype=torch.int64).numpy().tobytes())
    h.update(int(copy_index).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") >> 1


@register_model("llm2")
class LLM2LM(HFLM):
    """HFLM whose ``generate_until`` decodes with LLM2 (System 1 LLM + System 2 verifier).

    Model args (``--model_args``), in addition to HFLM's (``pretrained``, ``dtype``, ``device``,
    ``batch_size``, ...):

    - ``verifier``: verifier checkpoint directory (LLM2.md section 2); omitted = plain LLM decoding.
    - ``alpha`` (0.1): plausibility threshold, candidates have ``p >= alpha * p_max``.
    - ``top_k`` (0 = off): use the ``top_k`` most probable tokens as candidates instead.
    - ``beta`` (0.25): verifier weight in ``z + beta * s``; 0 = plain LLM decoding.
    - ``max_candidates`` (none): cap on the candidate-set size.
    - ``seed`` (none): base seed of sampling; default: drawn from torch's RNG, which lm-eval seeds (``--seed``).

    Sampling seeds: the k-th request with a given prompt gets the seed ``hash(seed, prompt tokens, k)``, so a
    sample does not depend on the batch size or on which other requests share its batch.

    Raises:
        ValueError: for a malformed model arg (naming it), or a task generation kwarg this model does not
            support.
        llm2_eval.verifier.TokenizerMismatchError: when the LLM and the verifier tokenizers differ.
        FileNotFoundError: when the verifier directory does not exist.
    """

    def __init__(
        self,
        pretrained: str,
        verifier: str | None = None,
        alpha: float = 0.1,
        top_k: int = 0,
        beta: float = 0.25,
        max_candidates: int | None = None,
        seed: int | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.decode_defaults = DecodeConfig(
            alpha=_float("alpha", alpha),
            top_k=_opt_int("top_k", top_k, 0) or 0,
            beta=_float("beta", beta),
            max_candidates=_opt_int("max_candidates", max_candidates, 1),
        )
        seed_value = _opt_int("seed", seed, 0)
        if verifier is not None and str(verifier).lower() in ("", "none", "null"):
            verifier = None
        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        if self.backend != "causal":
            raise ValueError(f"llm2 needs a decoder-only (causal) LLM; {pretrained} loaded as {self.backend}")
        self.verifier = None
        self.verifier_path = verifier
        if verifier is not None:
            from transformers import AutoTokenizer

            self.verifier = load_verifier(verifier, dtype=self.model.dtype, device=self.device)
            check_tokenizers_compatible(
                self.tokenizer, AutoTokenizer.from_pretrained(str(verifier)),
                llm_name=f"LLM ({pretrained})", verifier_name=f"verifier ({verifier})",
            )
        self._seed_base = seed_value if seed_value is not None else int(torch.randint(0, 2**62, ()).item())
        self._prompt_counts: dict[bytes, int] = {}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self._eos_ids = sorted(int(t) for t in eos)

    def _row_seeds(self, context: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
        seeds = []
        for row, mask in zip(context.tolist(), attention_mask.tolist()):
            real = [t for t, m in zip(row, mask) if m]
            key = hashlib.blake2b(torch.tensor(real, dtype=torch.int64).numpy().tobytes(), digest_size=16).digest()
            k = self._prompt_counts.get(key, 0)
            self._prompt_counts[key] = k + 1
            seeds.append(_seed_for(self._seed_base, real, k))
        return seeds

    def decode_config(self, gen_kwargs: dict[str, Any], max_new_tokens: int, stop: list[str]) -> DecodeConfig:
        """The :class:`DecodeConfig` of one request batch: model-arg defaults + the task's generation kwargs.

        Raises:
            ValueError: for generation kwargs other than do_sample, temperature, top_p and seed.
        """
        unknown = sorted(set(gen_kwargs) - _GEN_KWARGS)
        if unknown:
            raise ValueError(
                f"llm2 does not support the generation kwargs {unknown}; supported: {sorted(_GEN_KWARGS)} "
                "(plus until and max_gen_toks)"
            )
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = gen_kwargs.get("do_sample")
        if do_sample is None:
            do_sample = temperature > 0
        if do_sample and temperature == 0.0:
            temperature = 1.0  # transformers' default when sampling without a temperature
        d = self.decode_defaults
        return DecodeConfig(
            alpha=d.alpha, top_k=d.top_k, max_candidates=d.max_candidates, beta=d.beta,
            do_sample=bool(do_sample), temperature=temperature if do_sample else 1.0,
            top_p=float(gen_kwargs.get("top_p") or 1.0),
            max_new_tokens=max_new_tokens, stop=list(stop), eos_token_ids=self._eos_ids,
        )

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        """Replace HFLM's ``model.generate`` call with LLM2 decoding.

        Args:
            context: left-padded prompt ids ``[batch, S]``.
            max_length: ``S`` + the generation budget, in tokens.
            stop: stop strings (lm-eval appended the EOS string).
            generation_kwargs: ``attention_mask`` ``[batch, S]`` and the task's generation kwargs.

        Returns:
            ``[batch, S + n]`` ids: the prompts followed by the generations, right-padded with the pad id.
        """
        attention_mask = generation_kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(context)
        cfg = self.decode_config(generation_kwargs, max_length - context.shape[1], stop)
        seeds = self._row_seeds(context, attention_mask) if cfg.do_sample else None
        with torch.autocast(
            device_type=self.device.type, dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            out = generate(
                self.model, context, attention_mask, cfg,
                verifier=self.verifier, tokenizer=self.tokenizer, seeds=seeds,
            )
        width = max(len(t) for t in out.tokens)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos_ids[0]
        gen = torch.full((context.shape[0], width), pad, dtype=context.dtype, device=context.device)
        for i, toks in enumerate(out.tokens):
            gen[i, : len(toks)] = torch.tensor(toks, dtype=context.dtype, device=context.device)
        self.last_decode = out
        return torch.cat([context, gen], dim=1)
