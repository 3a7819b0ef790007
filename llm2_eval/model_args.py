"""The ``--model_args`` of ``lm_eval --model llm2``, checked before any weight loads (issue 11, docs/method.md section 3).

- An unknown key (``betta=0.2``) is refused with the valid ones (:func:`check_model_args`): llm2's own args,
  lm-eval HFLM's, transformers ``from_pretrained`` keywords and the fields of the LLM's config (HFLM hands the
  keys it does not know to ``from_pretrained``, where a typo would end as a model-constructor ``TypeError``).
- A model path that does not exist is named as such (:func:`llm2_eval.paths.check_model_path`).
- The verifier is checked from its config and tokenizer alone (:func:`check_verifier_first`): a missing or
  vocabulary-incompatible verifier is reported before the LLM loads.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

#: llm2's own model args (see :class:`llm2_eval.lm_eval_model.LLM2LM`)
LLM2_ARGS = ("pretrained", "verifier", "alpha", "top_k", "beta", "max_candidates", "seed", "trace", "device",
             "cpu_prepack", "sample_cache")

#: keywords of transformers' ``from_pretrained`` that HFLM passes on (beyond those in its signature)
_FROM_PRETRAINED = (
    "attn_implementation", "device_map", "low_cpu_mem_usage", "quantization_config", "load_in_8bit", "load_in_4bit",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "max_memory", "offload_state_dict",
    "offload_buffers", "use_safetensors", "variant", "cache_dir", "force_download", "local_files_only", "token",
    "torch_dtype", "key_mapping", "use_kernels", "output_loading_info", "ignore_mismatched_sizes", "weights_only",
    "use_flash_attention_2", "gpus",
)


def _hflm_args() -> set[str]:
    from lm_eval.models.huggingface import HFLM

    names: set[str] = set()
    for fn in (HFLM.__init__, getattr(HFLM, "_create_model", None)):
        if fn is not None:
            names |= {p.name for p in inspect.signature(fn).parameters.values()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
    return names


def _from_pretrained_args() -> set[str]:
    from transformers import PreTrainedModel

    sig = inspect.signature(PreTrainedModel.from_pretrained)
    named = {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named | set(_FROM_PRETRAINED)


def _config_fields(pretrained: Any) -> set[str]:
    """The fields of the LLM's config (``from_pretrained`` accepts any of them as an override); empty when the
    config cannot be read (loading reports that later)."""
    if not isinstance(pretrained, (str, os.PathLike)):
        return set(vars(getattr(pretrained, "config", None) or object()))
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(pretrained))
    except Exception:  # noqa: BLE001 - any failure here is reported by the real load
        return set()
    return set(cfg.to_dict()) | set(vars(cfg))


def check_model_args(pretrained: Any, kwargs: dict[str, Any]) -> None:
    """Refuse model args that neither llm2, HFLM, ``from_pretrained`` nor the LLM's config knows.

    Args:
        pretrained: the LLM (path or loaded model); its config's fields are valid overrides.
        kwargs: the model args besides llm2's own.

    Raises:
        ValueError: one line naming the unknown key, a close match, and the valid keys.
    """
    own = set(LLM2_ARGS) | _hflm_args()
    valid = own | _from_pretrained_args()
    unknown = [k for k in kwargs if k not in valid]
    if not unknown:
        return
    unknown = [k for k in unknown if k not in _config_fields(pretrained)]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(own | valid), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(
        f"llm2 model arg {key}={kwargs[key]!r} is not known{hint}; valid: llm2's {', '.join(LLM2_ARGS)}; lm-eval "
        f"HFLM's {', '.join(sorted(_hflm_args() - set(LLM2_ARGS)))}; transformers from_pretrained keywords and the "
        "fields of the LLM's config"
    )


def check_verifier_first(pretrained: Any, verifier: str, kwargs: dict[str, Any]) -> None:
    """Check the verifier against the LLM from configs and tokenizers only, before either model's weights load.

    Raises:
        FileNotFoundError: the verifier directory does not exist.
        llm2_eval.verifier.TokenizerMismatchError: the verifier's tokenizer vocabulary differs from the LLM's.
        ValueError: a verifier checkpoint without exactly one label, or with fewer embedding rows
            (``vocab_size``) than the LLM's tokenizer has tokens.
    """
    from transformers import AutoConfig, AutoTokenizer

    from llm2_eval.paths import check_model_path, is_hub_id
    from llm2_eval.verifier import check_tokenizers_compatible

    if not Path(verifier).exists():
        if not is_hub_id(str(verifier)):
            raise FileNotFoundError(f"verifier checkpoint not found: {verifier}")

        check_model_path(verifier, "verifier=")  # a hub id cannot be fetched offline: named before the LLM loads
    llm_tok = kwargs.get("tokenizer") or pretrained
    if not isinstance(llm_tok, (str, os.PathLike)):
        return  # a loaded model or tokenizer object: checked after loading
    trust = bool(kwargs.get("trust_remote_code", False))
    from llm2_eval.adapters import tokenizer_source

    ver_tok = tokenizer_source(verifier)
    if ver_tok is None:
        return  # an adapter without a tokenizer whose base is not here: it can only share the LLM's (on load)
    try:
        ver_tokenizer = AutoTokenizer.from_pretrained(ver_tok, trust_remote_code=trust)
        llm_tokenizer = AutoTokenizer.from_pretrained(str(llm_tok), trust_remote_code=trust)
    except (OSError, ValueError):
        return  # a tokenizer that does not load alone: the checks after loading report it
    check_tokenizers_compatible(llm_tokenizer, ver_tokenizer, llm_name=f"LLM ({pretrained})",
                                verifier_name=f"verifier ({verifier})")
    if not (Path(verifier) / "config.json").is_file():
        return  # an adapter directory (llm2_eval.adapters) or a hub id: checked when it loads
    cfg = AutoConfig.from_pretrained(str(verifier), trust_remote_code=trust)
    if getattr(cfg, "num_labels", None) != 1:
        raise ValueError(
            f"verifier {verifier} has num_labels={cfg.num_labels}; an LLM2 verifier is a token-classification "
            "model with exactly one label"
        )
    rows = getattr(cfg, "vocab_size", None)
    if isinstance(rows, int) and rows < len(llm_tokenizer):
        raise ValueError(f"verifier {verifier} has {rows} embedding rows for a {len(llm_tokenizer)}-token tokenizer")


#: model args that do not change the answers: not stored with lm-eval's response cache
_NOT_ANSWERS = ("trace", "device", "batch_size", "max_batch_size", "sample_cache")


def answer_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """The model args that decide the answers (all but :data:`_NOT_ANSWERS`), None values dropped and local model
    paths resolved (a resumed run may start from another directory): what a response cache is stamped with."""
    out = {}
    for k, v in model_args.items():
        if k in _NOT_ANSWERS or v is None:
            continue
        if k in ("pretrained", "verifier", "tokenizer", "peft") and isinstance(v, (str, os.PathLike)) \
                and Path(v).expanduser().exists():
            v = str(Path(v).expanduser().resolve())
        out[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def check_output_path(argv: list[str]) -> None:
    """Refuse an ``lm_eval ... --output_path PATH`` where nothing can be written, before any request is decoded
    (lm-eval would decode everything, then log a warning and exit 0 with nothing saved).

    Raises:
        ValueError: one line: a parent of PATH is a file, or the nearest existing folder is not writable.
    """
    from llm2_eval.trace import from_lm_eval, option_from_argv

    out = option_from_argv(argv, "--output_path", "-o") if from_lm_eval(argv) else None
    if not isinstance(out, str) or not out:
        return
    p = Path(out).expanduser()
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe != p and not probe.is_dir():
        raise ValueError(f"--output_path {out}: {probe} is a file, not a directory; choose another --output_path")
    folder = probe if probe.is_dir() else probe.parent
    if not os.access(folder, os.W_OK | os.X_OK) or (p.is_file() and not os.access(p, os.W_OK)):
        raise ValueError(f"--output_path {out}: {folder} is not writable, so no result could be saved; choose "
                         "another --output_path")

