"""The models of an exploration run: the LLM's tokenizer, its rollout engine, the second model of the sample strategy.

docs/method.md section 4. The engine is the hf one (transformers, ``--device``, ``--batch-rows``) or vLLM
(``--backend vllm``), :mod:`verifier_train.rollouts`; the end-of-turn ids that end a response are the tokenizer's
EOS, the generation config's and the engine's own.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoTokenizer

from llm2_eval.loading import load_causal_lm
from llm2_eval.verifier import check_tokenizers_compatible
from verifier_train.explore.config import ExploreConfig
from verifier_train.explore.inputs import end_token_ids
from verifier_train.records import check_chat_template, use_chat_template
from verifier_train.rollouts import HFRolloutEngine, RolloutEngine, VLLMRolloutEngine


def load_tokenizer(path: str, chat_template: str | None = None) -> Any:
    """The tokenizer of ``path`` with ``chat_template`` (a Jinja file) in place of its own when given.

    Raises:
        ValueError: the tokenizer has no chat template, or the template ignores the messages.
    """
    tok = AutoTokenizer.from_pretrained(path)
    use_chat_template(tok, chat_template)
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(f"the tokenizer of {path} has no chat template; exploration tokenises chat messages")
    check_chat_template(tok, f"--chat-template {chat_template}" if chat_template else f"the chat template of {path}")
    return tok


def resolve_device(spec: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; any other value as given."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def load_hf(path: str, dtype: str, device: str, prepack: bool = False) -> Any:
    """A transformers causal LM in eval mode on ``device`` (:func:`llm2_eval.loading.load_causal_lm`).

    Raises:
        ValueError: ``prepack`` off the CPU or for a dtype :func:`llm2_eval.cpu_kernels.prepack_linears` cannot pack.
    """
    return load_causal_lm(path, dtype=dtype, device=device, prepack=prepack)


def build_engines(cfg: ExploreConfig, tokenizer: Any, engine: RolloutEngine | None) -> tuple[Any, Any, set[int]]:
    """``(engine, contrast engine or None, end-of-turn ids)``, loading the models the settings name.

    Args:
        cfg: the settings (``model``, ``backend``, ``dtype``, ``device``, ``contrast_model``, ...).
        tokenizer: the LLM's tokenizer.
        engine: an engine built by the caller (used as is), or None.

    Raises:
        ValueError: a contrast model with another vocabulary; ``--cpu-prepack`` that cannot pack.
        ImportError: ``backend="vllm"`` without vLLM installed.
    """
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    if engine is None and cfg.backend == "vllm":
        engine = VLLMRolloutEngine(
            cfg.model, dtype=cfg.dtype, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size,
            logprobs_k=cfg.vllm_logprobs, threads=cfg.threads, engine_kwargs=cfg.vllm_args,
        )
    elif engine is None:
        engine = HFRolloutEngine(load_hf(cfg.model, cfg.dtype, device, cfg.cpu_prepack), batch_rows=cfg.batch_rows)
    model = getattr(engine, "model", None)  # a vLLM engine holds no transformers model
    model_config, gen_config = getattr(model, "config", None), getattr(model, "generation_config", None)
    contrast = None
    if cfg.strategy == "sample" and cfg.contrast_model:  # contrast / expert, or base / uniform restricted to both
        check_tokenizers_compatible(tokenizer, load_tokenizer(cfg.contrast_model), llm_name="LLM",
                                    verifier_name="contrast model")
        contrast = HFRolloutEngine(load_hf(cfg.contrast_model, cfg.dtype, device, cfg.cpu_prepack))
    ends = end_token_ids(tokenizer, model_config, gen_config) | set(getattr(engine, "eos_token_ids", ()))
    return engine, contrast, ends
