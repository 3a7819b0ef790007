"""One factory for rollout engines: :func:`load_engine` builds the engine an :class:`EngineConfig` names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llm2_eval.loading import load_causal_lm
from verifier_train.rollouts.engine import RolloutEngine
from verifier_train.rollouts.hf_engine import HFRolloutEngine
from verifier_train.rollouts.vllm_engine import VLLMRolloutEngine

BACKENDS = ("hf", "vllm")


@dataclass
class EngineConfig:
    """What :func:`load_engine` needs to build a rollout engine.

    Attributes:
        model: model directory or hub id (System 1).
        backend: ``"hf"`` (transformers, :class:`~verifier_train.rollouts.hf_engine.HFRolloutEngine`) or
            ``"vllm"`` (:class:`~verifier_train.rollouts.vllm_engine.VLLMRolloutEngine`).
        dtype: weight dtype (``"auto"`` = the checkpoint's, ``"float32"``, ``"bfloat16"``...).
        device: hf: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``...; vLLM picks its own.
        seed: vLLM's engine seed (each rollout has its own seed anyway).
        batch_rows: hf: rollouts decoded together.
        cpu_prepack: hf: CPU-prepacked linear layers (:func:`llm2_eval.cpu_kernels.prepack_linears`).
        tensor_parallel_size: vLLM: GPUs per model replica.
        logprobs_k: vLLM: top-k of the teacher-forced log-probabilities (caps the candidate sets).
        threads: vLLM on CPU: OpenMP threads of the model worker (0 = all allowed cores).
        engine_kwargs: vLLM: further ``vllm.LLM`` keyword arguments.
    """

    model: str
    backend: str = "hf"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    batch_rows: int = 32
    cpu_prepack: bool = False
    tensor_parallel_size: int = 1
    logprobs_k: int = 20
    threads: int = 0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``"auto"`` as ``"cuda"`` when a GPU is available, else ``"cpu"``; any other name as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_engine(config: EngineConfig) -> RolloutEngine:
    """The rollout engine ``config`` names, with its model loaded.

    Raises:
        ValueError: an unknown backend or dtype, or ``cpu_prepack`` off the CPU.
        ImportError: ``backend="vllm"`` without vLLM installed (the message names the pip extra).
        OSError: the model cannot be loaded.
    """
    if config.backend == "vllm":
        return VLLMRolloutEngine(
            config.model, dtype=config.dtype, seed=config.seed, tensor_parallel_size=config.tensor_parallel_size,
            logprobs_k=config.logprobs_k, threads=config.threads, engine_kwargs=config.engine_kwargs,
        )
    if config.backend != "hf":
        raise ValueError(f"backend={config.backend!r}: expected one of {', '.join(BACKENDS)}")
    model = load_causal_lm(config.model, dtype=config.dtype, device=resolve_device(config.device),
                           prepack=config.cpu_prepack)
    return HFRolloutEngine(model, batch_rows=config.batch_rows)
