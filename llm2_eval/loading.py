"""Models from a local path or a hub id: dtypes, the hub-id rule, end-of-sequence ids, and the one way an LLM
checkpoint becomes a one-label verifier.

Whether a name is a local path or could be a hub id is :func:`llm2_eval.paths.is_hub_id` (standard library, next
to the path checks that apply it). Everything here is general to loading transformers checkpoints and knows nothing of decoding, adapters or training;
:mod:`llm2_eval.verifier`, :mod:`llm2_eval.adapters`, :mod:`llm2_eval.head_verifier`, verifier training and the
rollout engines build on it.

- :func:`resolve_dtype`: a user's dtype string as a ``torch.dtype``.
- :func:`eos_token_ids`: the end-of-sequence ids a tokenizer, a model config and a generation config declare.
- :func:`build_verifier`: an LLM (or verifier) checkpoint, or a model config, as a 1-label token-classification
  model (docs/method.md section 2); :func:`head_name` names its score head.
- :func:`load_causal_lm`: a causal LM for generation (eval mode, optional CPU prepacking).
- :func:`same_model`: whether a loaded model is the checkpoint at a path (same path or same backbone weights).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, PretrainedConfig
from transformers.utils import logging as hf_logging

from llm2_eval.cpu_kernels import prepack_linears

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | str":
    """Map a user dtype string to a ``torch.dtype``.

    Args:
        dtype: ``None``/``"auto"`` (keep the checkpoint's), ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``,
            ``"float16"``/``"fp16"``/``"half"``, or a ``torch.dtype``.

    Returns:
        A ``torch.dtype``, or ``"auto"`` for the checkpoint's own dtype.

    Raises:
        ValueError: for any other string, naming the accepted values.
    """
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of auto, {', '.join(sorted(_DTYPES))}") from None


def eos_token_ids(*sources: Any) -> tuple[int, ...]:
    """The end-of-sequence ids declared by tokenizers, model configs and generation configs, sorted.

    Args:
        sources: objects with an ``eos_token_id`` attribute (an int, a list of ints, or None); None entries and
            objects without the attribute add nothing.

    Returns:
        The union of their ids, sorted ascending (``()`` when none declares one).
    """
    ids: set[int] = set()
    for src in sources:
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return tuple(sorted(ids))


def head_name(model: torch.nn.Module) -> str:
    """Attribute name of a token-classification model's score head (``"score"`` or ``"classifier"``).

    Raises:
        ValueError: the model has neither.
    """
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no 'score' or 'classifier' head")


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report for the block (building a verifier from an LLM, it only says "lm_head
    unused, score head newly initialised", which is the plan)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _verifier_config(config: PretrainedConfig, use_cache: bool | None) -> PretrainedConfig:
    """``config`` as a verifier's: one label, classifier dropout 0 (and ``use_cache`` when given)."""
    config.num_labels = 1
    config.classifier_dropout = 0.0
    if use_cache is not None:
        config.use_cache = use_cache
    return config


def build_verifier(
    source: "str | os.PathLike | PretrainedConfig",
    *,
    dtype: "str | torch.dtype | None" = None,
    attn_implementation: str | None = None,
    seed: int | None = None,
    zero_head: bool = False,
    use_cache: bool | None = None,
    quiet: bool = False,
) -> "PreTrainedModel":
    """An LLM as a one-label verifier: ``AutoModelForTokenClassification`` with ``num_labels=1`` and classifier
    dropout 0, i.e. the LLM's architecture and weights with its LM head replaced by a linear head
    ``hidden_size -> 1`` on the final normed hidden state (docs/method.md section 2).

    Args:
        source: a causal LM checkpoint (directory or hub id; the head is new), a verifier checkpoint (its trained
            head is loaded), or a model config (a new model built with ``from_config``, on the current default
            device: under ``torch.device("meta")`` nothing is allocated).
        dtype: weight dtype (:func:`resolve_dtype`); default the checkpoint's.
        attn_implementation: transformers' attention kernel (``"sdpa"``, ``"eager"``...); None = its default.
        seed: seeds torch's global RNG before loading, which draws a new head's random initialisation.
        zero_head: set the head's weights (and bias) to 0 after loading: every score is 0, so until trained the
            verifier changes no decision at any beta.
        use_cache: the model config's ``use_cache`` (training sets False); None keeps the checkpoint's.
        quiet: silence transformers' load report (:func:`quiet_load_report`).

    Returns:
        The model (training mode as transformers leaves it; callers choose ``eval()``).

    Raises:
        ValueError: transformers has no token-classification class for the architecture (the message names
            ``source``), or an unknown ``dtype``.
        OSError: the checkpoint cannot be read.
    """
    if isinstance(source, PretrainedConfig):
        model = AutoModelForTokenClassification.from_config(_verifier_config(copy.deepcopy(source), use_cache))
    else:
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        config = _verifier_config(AutoConfig.from_pretrained(str(source), num_labels=1), use_cache)
        if seed is not None:
            torch.manual_seed(seed)
        try:
            with quiet_load_report() if quiet else contextlib.nullcontext():
                model = AutoModelForTokenClassification.from_pretrained(str(source), config=config, **kwargs)
        except ValueError as err:
            raise ValueError(f"cannot build a token-classification verifier from {source}: {err}") from err
    if zero_head:
        with torch.no_grad():
            for p in getattr(model, head_name(model)).parameters():
                p.zero_()
    return model


def load_causal_lm(
    path: "str | os.PathLike", *, dtype: "str | torch.dtype | None" = None, device: "str | torch.device | None" = None,
    prepack: bool = False,
) -> "PreTrainedModel":
    """A causal LM (``AutoModelForCausalLM``) for generation, in eval mode.

    Args:
        path: checkpoint directory or hub id.
        dtype: weight dtype (:func:`resolve_dtype`); default the checkpoint's.
        device: where to put it; default where transformers loads it (CPU).
        prepack: replace its linear layers by CPU-prepacked ones (:func:`llm2_eval.cpu_kernels.prepack_linears`).

    Raises:
        ValueError: ``prepack`` off the CPU or for a dtype that cannot be packed (naming ``path``); an unknown
            ``dtype``.
        OSError: the checkpoint cannot be read.
    """
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype))
    if device is not None:
        model.to(device)
    model.eval()
    if prepack:
        try:
            prepack_linears(model)
        except ValueError as err:
            raise ValueError(f"--cpu-prepack: {path}: {err}") from None
    return model


def same_model(path: "str | os.PathLike", llm: "PreTrainedModel") -> bool:
    """Whether ``llm`` is the checkpoint ``path``: the same name (``path`` vs the LLM's ``name_or_path``), the same
    local directory, or a local checkpoint whose backbone tensors, cast to the LLM's dtype, equal the LLM's (read
    one tensor at a time; an unreadable checkpoint is not known to be the same)."""
    base = str(path)
    name = str(getattr(llm, "name_or_path", "") or getattr(llm.config, "_name_or_path", ""))
    if base == name:
        return True
    if not name or not Path(base).is_dir():
        return False
    if Path(name).exists() and os.path.samefile(base, name):
        return True
    return _same_backbone_weights(Path(base), llm)


def _same_backbone_weights(base_dir: Path, llm: "PreTrainedModel") -> bool:
    files = sorted(base_dir.glob("*.safetensors"))
    prefix = getattr(llm, "base_model_prefix", "model")
    backbone = getattr(llm, prefix, None)
    if not files or backbone is None:
        return False
    handles = {}
    try:
        for f in files:
            h = safe_open(str(f), framework="pt")
            handles.update({k: h for k in h.keys()})
        for name, param in backbone.named_parameters():
            key = f"{prefix}.{name}"
            if key not in handles:
                return False
            t = handles[key].get_tensor(key)
            if t.shape != param.shape or not torch.equal(t.to(device=param.device, dtype=param.dtype), param.data):
                return False
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not known to be the same
        return False
    return True
