"""The ``--model_args`` of ``lm_eval --model llm2``: parsed, and checked before any weight loads (docs/method.md section 3).

llm2's model args (``--model_args``), in addition to HFLM's (``pretrained``, ``dtype``, ``device``, ``batch_size``,
...):

- ``verifier``: verifier checkpoint directory (docs/method.md section 2), or a LoRA adapter directory (``llm2
  train-verifier --lora --lora-save adapter``; on the LLM's own weights when it is the adapter's base);
  omitted = plain LLM decoding.
- ``alpha`` (0.1; none with ``top_k``): plausibility threshold, candidates have ``p >= alpha * p_max``.
- ``top_k`` (0 = off): at most the ``top_k`` most probable tokens are candidates; with ``alpha`` too, the
  candidates are the tokens that pass both (the authors' data-builder rule, shared with exploration).
- ``beta`` (0.25): verifier weight in ``z + beta * s``; 0 = plain LLM decoding.
- ``max_candidates`` (none): cap on the candidate-set size.
- ``seed`` (none): base seed of sampling; default: drawn from torch's RNG, which lm-eval seeds (``--seed``).
  A task's ``seed`` generation kwarg overrides it for that task.
- ``trace`` (none): path of a JSON Lines file that receives, per generated sequence, the task, doc id, copy
  index, steps, mean candidate-set size, flips (steps where the verifier changed the LLM's choice), mean
  score margin ``max_v s(v) - s(v_llm)``, LLM and verifier token forwards, finish reason and seconds. An
  llm2 trace at that path is rewritten at start-up (a run resumed with lm-eval's ``--use_cache`` continues it;
  any other existing file, or a path inside the LLM, the verifier or the cache, is refused), stamped with a
  header line (run id, model args, tasks, start time; :mod:`llm2_eval.trace`) whose run id is on every line
  and in the results' ``config.llm2_run_id``; each line is flushed as it is produced. Data-parallel runs
  (``accelerate launch`` / ``torchrun``; on CPUs too, see
  :meth:`llm2_eval.lm_eval_model.LLM2LM._adopt_cpu_data_parallel`) write one file per rank,
  ``STEM.rankR.SUFFIX``, each stamped with its rank and the run id of rank 0; ``llm2 report`` merges them
  (lm-eval's padding requests are marked ``"padding": true`` and not counted).
- ``cpu_prepack`` (false): on a CPU, reorder the LLM's and the verifier's linear weights once into oneDNN's
  blocked layout and let SDPA read grouped key/value heads without copying them (:mod:`llm2_eval.cpu_kernels`):
  1.3-1.6x faster batched decoding on a 2-core CPU; float32 (bfloat16 on AVX512 CPUs; another dtype is
  refused before loading); results equal to rounding, so a near-tie can pick another token than the default.
- ``sample_cache`` (none): path of a JSON Lines store of finished generations (:mod:`llm2_eval.sample_cache`),
  so that a sampled (maj@k) run resumes: lm-eval's ``--use_cache`` never stores ``do_sample`` requests. Greedy
  requests are stored too (a text file that travels with a checkout). Each decoded batch's texts are appended
  (fsynced) under their prompt, generation kwargs and seed (none for greedy); a re-run answers the stored ones
  and decodes only the rest, with the seeds they would have had. A store written with other model args, or
  holding samples of another base seed, is refused; one file per data-parallel rank, as the trace.

Parsing and checks:

- llm2's own args are parsed into :class:`LLM2Args` (:func:`parse_llm2_args`): a malformed value is refused with
  its name, ``none``/``null``/empty mean "not given".
- An unknown key (``betta=0.2``) is refused with the valid ones (:func:`check_model_args`): llm2's own args,
  lm-eval HFLM's, transformers ``from_pretrained`` keywords and the fields of the LLM's config (HFLM hands the
  keys it does not know to ``from_pretrained``, where a typo would end as a model-constructor ``TypeError``).
- A model path that does not exist is named as such (:func:`llm2_eval.paths.check_model_path`).
- The verifier is checked from its config and tokenizer alone (:func:`check_verifier_first`): a missing or
  vocabulary-incompatible verifier is reported before the LLM loads.
- A task's generation kwargs meet the model-arg defaults in :func:`request_decode_config`.
"""

from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from llm2_eval.adapters import tokenizer_source
from llm2_eval.cpu_kernels import prepack_supported
from llm2_eval.decoding import DecodeConfig
from llm2_eval.loading import resolve_dtype
from llm2_eval.paths import check_model_path, is_hub_id
from llm2_eval.trace import from_lm_eval, option_from_argv
from llm2_eval.verifier import check_tokenizers_compatible

#: llm2's own model args (see :class:`llm2_eval.lm_eval_model.LLM2LM`)
LLM2_ARGS = ("pretrained", "verifier", "alpha", "top_k", "beta", "max_candidates", "seed", "trace", "device",
             "cpu_prepack", "sample_cache")

_NOT_GIVEN = ("", "none", "null")  # what a model arg may say for "not given" (lm-eval passes strings)


def _not_given(value: Any) -> bool:
    return value is None or str(value).lower() in _NOT_GIVEN


def parse_opt_int(name: str, value: Any, minimum: int) -> int | None:
    """An integer model arg ``>= minimum``, or None when not given.

    Raises:
        ValueError: one line naming ``name``: not an integer (``2.5`` too), or below ``minimum``.
    """
    if value is None or (isinstance(value, str) and value.lower() in _NOT_GIVEN):
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


def parse_bool(name: str, value: Any) -> bool:
    """A true/false model arg (``true``/``1``/``yes``, ``false``/``0``/``no``/empty/``none``).

    Raises:
        ValueError: one line naming ``name`` for any other value.
    """
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", "", "none"):
        return False
    raise ValueError(f"llm2 model arg {name}={value!r}: expected true or false")


def parse_float(name: str, value: Any) -> float:
    """A numeric model arg.

    Raises:
        ValueError: one line naming ``name`` when ``value`` is not a number.
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"llm2 model arg {name}={value!r} is not a number") from None


@dataclass(frozen=True)
class LLM2Args:
    """llm2's own model args (:data:`LLM2_ARGS`), parsed by :func:`parse_llm2_args`.

    Attributes:
        given: ``pretrained``, ``verifier``, ``alpha``, ``top_k``, ``beta``, ``max_candidates``, ``seed`` (as given,
            the verifier None when not given) and ``cpu_prepack`` (parsed): what the trace header and the answer
            caches record, with HFLM's model args.
        verifier: the verifier path or hub id; None = plain LLM decoding.
        decode: the decoding defaults (alpha, top_k, beta, max_candidates) of every request.
        seed: the base seed of sampling; None = drawn at start-up.
        cpu_prepack: prepack the linear weights for oneDNN (:mod:`llm2_eval.cpu_kernels`).
        trace: the trace path; None = no trace.
        sample_cache: the sample-cache path; None = no store.
        device: the device asked for (``cuda`` when there is one, else ``cpu``, when not given or ``auto``).
    """

    given: dict[str, Any]
    verifier: str | None
    decode: DecodeConfig
    seed: int | None
    cpu_prepack: bool
    trace: str | None
    sample_cache: str | None
    device: str


def parse_llm2_args(pretrained: Any, verifier: Any, alpha: Any, top_k: Any, beta: Any, max_candidates: Any,
                    seed: Any, trace: Any, device: Any, cpu_prepack: Any, sample_cache: Any,
                    dtype: Any = "auto") -> LLM2Args:
    """Parse llm2's own model args (see :class:`llm2_eval.lm_eval_model.LLM2LM`) before anything loads.

    Raises:
        ValueError: a malformed value (naming the arg; :class:`~llm2_eval.decoding.DecodeConfig` ranges too), or
            ``cpu_prepack=true`` with a ``dtype`` this CPU cannot prepack.
    """
    decode = DecodeConfig(
        alpha=None if _not_given(alpha) else parse_float("alpha", alpha),
        top_k=parse_opt_int("top_k", top_k, 0) or 0,
        beta=parse_float("beta", beta),
        max_candidates=parse_opt_int("max_candidates", max_candidates, 1),
    )
    seed_value = parse_opt_int("seed", seed, 0)
    prepack = parse_bool("cpu_prepack", cpu_prepack)
    if prepack and str(dtype) != "auto":
        why = prepack_supported(resolve_dtype(dtype))
        if why is not None:
            raise ValueError(f"llm2 model arg cpu_prepack=true with dtype={dtype}: {why}")
    verifier = None if _not_given(verifier) else verifier
    given = {"pretrained": pretrained, "verifier": verifier, "alpha": alpha, "top_k": top_k, "beta": beta,
             "max_candidates": max_candidates, "seed": seed, "cpu_prepack": prepack}
    return LLM2Args(
        given=given, verifier=verifier, decode=decode, seed=seed_value, cpu_prepack=prepack,
        trace=None if _not_given(trace) else trace,
        sample_cache=None if _not_given(sample_cache) else sample_cache,
        device=("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "", "auto") else device,
    )


#: generation kwargs of lm-eval tasks that llm2 understands (others are refused, never silently ignored)
GEN_KWARGS = ("do_sample", "temperature", "top_p", "seed")


def request_decode_config(defaults: DecodeConfig, gen_kwargs: dict[str, Any], max_new_tokens: int,
                          stop: list[str], eos_token_ids: list[int]) -> DecodeConfig:
    """The :class:`DecodeConfig` of one request batch: the model-arg ``defaults`` + the task's generation kwargs
    (``until`` and ``max_gen_toks`` taken out already). ``do_sample`` defaults to ``temperature > 0``; sampling
    without a temperature uses 1.0 (transformers' default).

    Raises:
        ValueError: for generation kwargs other than :data:`GEN_KWARGS`.
    """
    unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
    if unknown:
        raise ValueError(
            f"llm2 does not support the generation kwargs {unknown}; supported: {sorted(GEN_KWARGS)} "
            "(plus until and max_gen_toks)"
        )
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = gen_kwargs.get("do_sample")
    if do_sample is None:
        do_sample = temperature > 0
    if do_sample and temperature == 0.0:
        temperature = 1.0
    d = defaults
    return DecodeConfig(
        alpha=d.alpha, top_k=d.top_k, max_candidates=d.max_candidates, beta=d.beta,
        do_sample=bool(do_sample), temperature=temperature if do_sample else 1.0,
        top_p=float(gen_kwargs.get("top_p") or 1.0),
        max_new_tokens=max_new_tokens, stop=list(stop), eos_token_ids=eos_token_ids,
    )


#: keywords of transformers' ``from_pretrained`` that HFLM passes on (beyond those in its signature)
_FROM_PRETRAINED = (
    "attn_implementation", "device_map", "low_cpu_mem_usage", "quantization_config", "load_in_8bit", "load_in_4bit",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "max_memory", "offload_state_dict",
    "offload_buffers", "use_safetensors", "variant", "cache_dir", "force_download", "local_files_only", "token",
    "torch_dtype", "key_mapping", "use_kernels", "output_loading_info", "ignore_mismatched_sizes", "weights_only",
    "use_flash_attention_2", "gpus",
)


def _hflm_args() -> set[str]:
    names: set[str] = set()
    for fn in (HFLM.__init__, getattr(HFLM, "_create_model", None)):
        if fn is not None:
            names |= {p.name for p in inspect.signature(fn).parameters.values()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
    return names


def _from_pretrained_args() -> set[str]:
    sig = inspect.signature(PreTrainedModel.from_pretrained)
    named = {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named | set(_FROM_PRETRAINED)


def _config_fields(pretrained: Any) -> set[str]:
    """The fields of the LLM's config (``from_pretrained`` accepts any of them as an override); empty when the
    config cannot be read (loading reports that later)."""
    if not isinstance(pretrained, (str, os.PathLike)):
        return set(vars(getattr(pretrained, "config", None) or object()))
    try:
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
    if not Path(verifier).exists():
        if not is_hub_id(str(verifier)):
            raise FileNotFoundError(f"verifier checkpoint not found: {verifier}")
        check_model_path(verifier, "verifier=")  # a hub id cannot be fetched offline: named before the LLM loads
    llm_tok = kwargs.get("tokenizer") or pretrained
    if not isinstance(llm_tok, (str, os.PathLike)):
        return  # a loaded model or tokenizer object: checked after loading
    trust = bool(kwargs.get("trust_remote_code", False))
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

