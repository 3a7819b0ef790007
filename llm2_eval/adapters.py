"""Verifiers saved as PEFT LoRA adapters: read, check and load them, sharing the LLM's base weights when they are
the adapter's base.

An adapter directory (``llm2 train-verifier --lora --lora-save adapter``) holds peft's ``adapter_config.json``
(task type ``TOKEN_CLS``, ``base_model_name_or_path``: the LLM or verifier checkpoint it was trained on) and
``adapter_model.safetensors`` (the LoRA matrices and, under ``modules_to_save``, the whole trained score head,
docs/method.md section 2), next to the tokenizer (optional: without one, the base's is used, :func:`tokenizer_source`),
the training card and ``llm2_verifier.json`` (llm2's note that it wrote
the directory: base model, head, one label): a few MB instead of a full copy.

Two ways to load it (:func:`load_adapter_verifier`):

- **shared base**: when the adapter's base is the LLM itself (the same path, or a checkpoint with the same backbone
  weights), the verifier is the LLM's own backbone with the LoRA layers injected into it, plus the score head
  (:class:`SharedBaseVerifier`). One copy of the base weights is in memory; the adapters are OFF by default, so the
  LLM's forwards (decoding, lm-eval's loglikelihood) are exactly those of the plain LLM, and each verifier forward
  switches them on for its own duration. The two models still keep separate KV caches.
- **own base**: otherwise the base is loaded from its path and the adapter is merged into it, which gives a plain
  token-classification verifier, equal (in float32, bit for bit) to the merged checkpoint of the same training run.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from llm2_eval.head_verifier import is_head_dir, read_head_config
from llm2_eval.loading import build_verifier, resolve_dtype, same_model
from llm2_eval.paths import is_hub_id

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: llm2's own note in an adapter directory (``{"llm2_verifier": {...}}``, as ``config.json`` holds in a checkpoint)
ADAPTER_MARKER = "llm2_verifier.json"
#: attention kernels that accept the 4-D candidate masks of verifier scoring (llm2_eval.scoring)
MASK_KERNELS = ("sdpa", "eager")


class AdapterError(ValueError):
    """A verifier adapter directory that cannot be used; the message is one line naming the file at fault."""


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local directory holding a PEFT ``adapter_config.json``."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


#: files any one of which means a directory carries its own tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_source(verifier: str | os.PathLike) -> str | None:
    """Where to read a verifier's tokenizer from, to check it against the LLM's.

    A checkpoint, a hub id or an adapter directory that holds tokenizer files is its own source. An adapter
    directory without one (a bare PEFT adapter) was trained with its base's tokenizer, so its base
    (``base_model_name_or_path``) is the source when that is a local directory; likewise a head verifier
    (:mod:`llm2_eval.head_verifier`) and its ``base_model``.

    Returns:
        A path or hub id for ``AutoTokenizer.from_pretrained``, or None for an adapter without tokenizer files
        whose base is not on this machine: it can only run on the LLM's own backbone (:func:`shares_base`),
        so it uses the LLM's tokenizer and the embedding-row check is the one that applies.

    Raises:
        AdapterError: an adapter directory whose ``adapter_config.json`` cannot be read.
        HeadVerifierError: a head directory whose marker cannot be read.
    """
    d = Path(verifier)
    head = is_head_dir(d)
    if not (head or is_adapter_dir(d)) or any((d / name).is_file() for name in TOKENIZER_FILES):
        return str(verifier)
    base = str(read_head_config(d)["base_model"] if head else read_adapter_config(d)["base_model_name_or_path"])
    return base if Path(base).is_dir() else None


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The checked ``adapter_config.json`` of a verifier adapter directory.

    Checks: valid JSON object, ``task_type`` ``TOKEN_CLS`` (a 1-label verifier, docs/method.md section 2), a
    ``base_model_name_or_path``, and an ``adapter_model.safetensors`` that holds score-head weights
    (``modules_to_save``) and at least one adapter matrix.

    Returns:
        The config as a dict, with ``"head"`` added: the name of the score-head module saved in the weights.

    Raises:
        AdapterError: naming the file and what is wrong with it.
    """
    d = Path(adapter_dir)
    cfg_path = d / ADAPTER_CONFIG
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise AdapterError(f"{cfg_path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise AdapterError(f"{cfg_path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("task_type") != "TOKEN_CLS":
        raise AdapterError(
            f"{cfg_path}: task_type {cfg.get('task_type')!r}; an LLM2 verifier adapter is a TOKEN_CLS adapter "
            "(llm2 train-verifier --lora --lora-save adapter)"
        )
    if not cfg.get("base_model_name_or_path"):
        raise AdapterError(f"{cfg_path}: no base_model_name_or_path (the model the adapter was trained on)")
    weights = d / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{weights}: missing (the adapter's weights)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise AdapterError(f"{weights}: cannot read as safetensors ({_first_line(err)})") from None
    heads = sorted({k.split(".")[2] for k in keys if k.startswith("base_model.model.")
                    and k.split(".")[2] in ("score", "classifier") and len(k.split(".")) == 4})
    if not heads:
        raise AdapterError(
            f"{weights}: no score-head weights (base_model.model.score.*); a verifier adapter saves its head "
            "through modules_to_save"
        )
    if not any(".lora_" in k for k in keys):
        raise AdapterError(f"{weights}: no LoRA weights (lora_A / lora_B)")
    cfg["head"] = heads[0]
    return cfg


def load_adapter_verifier(
    adapter_dir: str | os.PathLike,
    *,
    llm: "PreTrainedModel | None" = None,
    dtype: "str | torch.dtype | None" = None,
    device: "str | torch.device | None" = None,
    attn_implementation: str | None = "sdpa",
) -> "torch.nn.Module":
    """Load a verifier adapter directory (format above) for scoring, in eval mode.

    Args:
        adapter_dir: the adapter directory.
        llm: the LLM the verifier will guide. When it is the adapter's base (:func:`shares_base`) and runs an
            attention kernel that takes 4-D masks (sdpa / eager), the verifier shares its weights
            (:class:`SharedBaseVerifier`; ``dtype`` and ``device`` are then the LLM's).
        dtype: weight dtype of an own-base verifier (see :func:`llm2_eval.loading.resolve_dtype`).
        device: where to put an own-base verifier; default CPU.
        attn_implementation: attention kernel of an own-base verifier.

    Returns:
        A module whose forward returns ``logits`` ``[batch, seq, 1]`` (the scores): a
        :class:`SharedBaseVerifier`, or a plain ``AutoModelForTokenClassification`` with the adapter merged.

    Raises:
        AdapterError: a bad adapter directory, a base model that cannot be found or loaded, or weights that do
            not fit the base (naming the file).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    cfg = read_adapter_config(adapter_dir)
    injected = llm is not None and any(isinstance(m, BaseTunerLayer) for m in llm.modules())
    if injected:  # the LLM already carries another verifier's adapters: this one gets its own base
        log.warning("llm2: the LLM already holds adapters; the verifier adapter %s gets its own copy of the base "
                    "weights", adapter_dir)
    if llm is not None and not injected and shares_base(cfg, llm):
        kernel = getattr(llm.config, "_attn_implementation", None) or "sdpa"
        if kernel in MASK_KERNELS:
            return SharedBaseVerifier(llm, adapter_dir).eval()
        log.warning("llm2: the LLM runs %s attention, which takes no 4-D masks; the verifier adapter %s gets its own "
                    "copy of the base weights", kernel, adapter_dir)
    return _load_own_base(adapter_dir, cfg, dtype=dtype, device=device, attn_implementation=attn_implementation)


def shares_base(adapter_config: dict[str, Any], llm: "PreTrainedModel") -> bool:
    """Whether ``llm`` is the adapter's base model (``base_model_name_or_path``): the same path, or a local
    checkpoint with the same backbone weights (:func:`llm2_eval.loading.same_model`)."""
    return same_model(adapter_config["base_model_name_or_path"], llm)


def _first_line(err: BaseException) -> str:
    """The informative line of a library error (a state-dict error's first mismatch, else its first line)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    return next((ln for ln in lines if "mismatch" in ln or ln.startswith(("Missing", "Unexpected"))), lines[0])[:300]


def _load_own_base(adapter_dir, cfg: dict[str, Any], *, dtype, device, attn_implementation) -> "PreTrainedModel":
    """The adapter's base loaded from ``base_model_name_or_path`` as a 1-label token classifier, adapter merged."""
    from peft import PeftModel

    dtype = resolve_dtype(dtype)  # an unknown dtype is the caller's error (ValueError), not the adapter's
    cfg_path = Path(adapter_dir) / ADAPTER_CONFIG
    base = str(cfg["base_model_name_or_path"])
    if not Path(base).exists() and not is_hub_id(base):
        raise AdapterError(f"{cfg_path}: base model {base} not found (base_model_name_or_path: the model the adapter "
                           "was trained on)")
    try:  # quiet: the load report would say "lm_head unused, score head new": the adapter has the head
        model = build_verifier(base, dtype=dtype, attn_implementation=attn_implementation, quiet=True)
    except (OSError, ValueError) as err:
        raise AdapterError(f"{cfg_path}: cannot load the base model {base} "
                           f"(base_model_name_or_path): {_first_line(err)}") from None
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:
        raise AdapterError(f"{Path(adapter_dir) / ADAPTER_WEIGHTS}: does not fit the base model {base}: "
                           f"{_first_line(err)}") from None
    merged.config.llm2_verifier = {"base_model": base, "head": cfg["head"], "num_labels": 1,
                                   "adapter": str(adapter_dir)}
    if device is not None:
        merged.to(device)
    return merged.eval()


class SharedBaseVerifier(torch.nn.Module):
    """A verifier that runs on the LLM's own backbone: LoRA adapters injected into it, plus the trained score head.

    Only one copy of the base weights exists: ``llm``'s backbone modules become peft LoRA layers whose
    ``base_layer`` holds the original parameters (same storage). The adapters are disabled between verifier
    forwards, when a LoRA layer computes exactly ``base_layer(x)``, so the LLM's logits are unchanged; a verifier
    forward enables them and disables them again when it returns (or raises). Decoding calls the two models one
    after the other, each with its own KV cache, so the switch is never seen by an LLM forward.

    Args:
        llm: a causal LM (``AutoModelForCausalLM``) whose backbone is the adapter's base; it is modified in place
            (LoRA layers added, parameters frozen) and must run an attention kernel that takes 4-D masks.
        adapter_dir: the adapter directory (checked by :func:`read_adapter_config`).

    Raises:
        AdapterError: the adapter's weights do not fit the LLM's backbone (naming the file).
    """

    def __init__(self, llm: "PreTrainedModel", adapter_dir: str | os.PathLike):
        super().__init__()
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import AuxiliaryTrainingWrapper

        cfg = read_adapter_config(adapter_dir)
        prefix = llm.base_model_prefix
        with torch.device("meta"):  # the classifier's own backbone is never allocated: the LLM's takes its place
            classifier = build_verifier(llm.config)
        setattr(classifier, prefix, getattr(llm, prefix))
        dev = list(getattr(llm, prefix).parameters())[-1].device  # where the backbone's last hidden state lives
        for name, module in classifier.named_children():
            if name != prefix:  # the score head (and dropout): replaced by the adapter's trained head on loading
                module.to_empty(device=dev).to(llm.dtype)
                with torch.no_grad():
                    for p in module.parameters():
                        p.zero_()
        try:
            self.peft = PeftModel.from_pretrained(classifier, str(adapter_dir), is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as err:
            raise AdapterError(f"{Path(adapter_dir) / ADAPTER_WEIGHTS}: does not fit the LLM "
                               f"{llm.name_or_path}: {_first_line(err)}") from None
        self.config = self.classifier.config
        self.config.llm2_verifier = {"base_model": str(cfg["base_model_name_or_path"]), "head": cfg["head"],
                                     "num_labels": 1, "adapter": str(adapter_dir), "shared_base": True}
        self.name_or_path = str(adapter_dir)
        self._switches = [m for m in self.peft.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        params = inspect.signature(self.classifier.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._adapters(False)

    @property
    def classifier(self) -> "PreTrainedModel":
        """The token-classification model (LLM backbone with LoRA layers + score head) inside the peft wrapper."""
        return self.peft.base_model.model

    def _adapters(self, enabled: bool) -> None:
        for m in self._switches:
            m.enable_adapters(enabled)

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's weight dtype."""
        return self.classifier.dtype

    @property
    def device(self) -> torch.device:
        """The LLM's device."""
        return self.classifier.device

    def get_input_embeddings(self) -> torch.nn.Module:
        """The (shared) input embeddings."""
        return self.classifier.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, **kwargs):
        """The verifier forward with the adapters on: a ``TokenClassifierOutput`` whose ``logits``
        ``[batch, seq, 1]`` are the scores ``s(x_<t, v)`` (docs/method.md section 1). ``cache`` / ``past_key_values``
        is the verifier's own KV cache."""
        kv = cache if cache is not None else past_key_values
        if kv is not None:
            kwargs[self._cache_kw] = kv
        self._adapters(True)
        try:
            return self.classifier(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=use_cache, **kwargs)
        finally:
            self._adapters(False)
