"""The lm-eval model ``llm2``: lm-eval's HFLM with generation replaced by LLM2 dual-process decoding.

Everything else is HFLM's own: model and tokenizer loading, tokenisation, chat templates, loglikelihood, prompt
truncation and the post-processing of generations (stop strings are cut there). ``generate_until`` is replaced:
it groups identical requests (lm-eval's ``repeats``) and decodes with :func:`llm2_eval.decoding.generate`
(paper Eq. 1, docs/method.md section 3).

Unlike ``model.generate``, LLM2 decoding applies no logits processors from the model's ``generation_config``
(repetition penalty, n-gram blocking, transformers' default sampling ``top_k=50``, ...): greedy decoding with
``beta=0`` equals ``--model hf`` token for token when the config sets none of them, and a warning names them
otherwise. Sampling uses the task's ``temperature`` and ``top_p`` only.

Usage::

    lm_eval --model llm2 --model_args pretrained=LLM_DIR,verifier=VERIFIER_DIR,beta=0.25 \
        --tasks gsm8k_llm2 --apply_chat_template --batch_size 8
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from llm2_eval.adapters import tokenizer_source
from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.model_args import answer_args, check_model_args, check_output_path, check_verifier_first
from llm2_eval.paths import check_model_path
from llm2_eval.trace import cache_files_from_argv, check_cache_args, check_trace_path
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


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", "", "none"):
        return False
    raise ValueError(f"llm2 model arg {name}={value!r}: expected true or false")


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


_NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
            "min_new_tokens": 0, "min_length": 0}


def _warn_unapplied_processors(model: torch.nn.Module) -> None:
    """Warn when the model's generation_config asks for logits processors that LLM2 decoding does not apply."""
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return
    found = {k: getattr(cfg, k, None) for k in _NEUTRAL if getattr(cfg, k, None) not in (None, _NEUTRAL[k])}
    for k in ("bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "forced_bos_token_id",
              "forced_eos_token_id"):
        if getattr(cfg, k, None):
            found[k] = getattr(cfg, k)
    if found:
        log.warning(
            "llm2: the model's generation_config sets %s; LLM2 decoding does not apply these logits processors, "
            "so beta=0 will not match --model hf token for token", found,
        )


def _batches(order: list[tuple[str, str]], groups: dict[tuple[str, str], list[int]],
             limit: int) -> list[list[tuple[str, str]]]:
    """Request groups in ``order`` cut into batches of at most ``limit`` rows (a group is never split: a batch of
    one group may hold more) and of one set of generation kwargs."""
    batches: list[list[tuple[str, str]]] = []
    for key in order:
        rows = sum(len(groups[k]) for k in batches[-1]) if batches else 0
        if batches and batches[-1][0][1] == key[1] and rows + len(groups[key]) <= max(limit, 1):
            batches[-1].append(key)
        else:
            batches.append([key])
    return batches


@register_model("llm2")
class LLM2LM(HFLM):
    """HFLM whose ``generate_until`` decodes with LLM2 (System 1 LLM + System 2 verifier).

    Model args (``--model_args``), in addition to HFLM's (``pretrained``, ``dtype``, ``device``,
    ``batch_size``, ...):

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
      (``accelerate launch`` / ``torchrun``; on CPUs too, see :meth:`_adopt_cpu_data_parallel`) write one file
      per rank, ``STEM.rankR.SUFFIX``, each stamped with its rank and the run id of rank 0; ``llm2 report``
      merges them (lm-eval's padding requests are marked ``"padding": true`` and not counted).
    - ``cpu_prepack`` (false): on a CPU, reorder the LLM's and the verifier's linear weights once into oneDNN's
      blocked layout and let SDPA read grouped key/value heads without copying them (:mod:`llm2_eval.cpu_kernels`):
      1.3-1.6x faster batched decoding on a 2-core CPU; float32 (bfloat16 on AVX512 CPUs; another dtype is
      refused before loading); results equal to rounding, so a near-tie can pick another token than the default.

    - ``sample_cache`` (none): path of a JSON Lines store of finished sampled generations
      (:mod:`llm2_eval.sample_cache`), so that a sampled (maj@k) run resumes: lm-eval's ``--use_cache`` never
      stores ``do_sample`` requests. Each decoded batch's samples are appended (fsynced) under their prompt,
      generation kwargs and seed; a re-run answers the stored ones and decodes only the rest, with the seeds they
      would have had. A store written with other model args or another base seed is refused; one file per
      data-parallel rank, as the trace.

    Sampling seeds: the k-th request with a given prompt gets the seed ``hash(seed, prompt tokens, k)``, so a
    sample does not depend on the batch size or on which other requests share its batch (nor on which were
    answered from the ``sample_cache``: the seeds of all requests are drawn first).

    Raises:
        ValueError: for a malformed model arg (naming it), or a task generation kwarg this model does not
            support.
        llm2_eval.verifier.TokenizerMismatchError: when the LLM and the verifier tokenizers differ.
        FileNotFoundError: when the LLM or the verifier directory does not exist.

    Model args are checked before any weight loads (:mod:`llm2_eval.model_args`): an unknown key is refused with
    the valid ones, and the verifier's config and tokenizer are checked against the LLM's tokenizer first. Giving
    both ``alpha`` and ``top_k`` logs a warning that the candidates are the tokens passing both.
    """

    def __init__(
        self,
        pretrained: str,
        verifier: str | None = None,
        alpha: float | None = None,
        top_k: int = 0,
        beta: float = 0.25,
        max_candidates: int | None = None,
        seed: int | None = None,
        trace: str | None = None,
        device: str | None = None,
        cpu_prepack: bool | str = False,
        sample_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.decode_defaults = DecodeConfig(
            alpha=None if alpha is None or str(alpha).lower() in ("", "none", "null") else _float("alpha", alpha),
            top_k=_opt_int("top_k", top_k, 0) or 0,
            beta=_float("beta", beta),
            max_candidates=_opt_int("max_candidates", max_candidates, 1),
        )
        seed_value = _opt_int("seed", seed, 0)
        prepack = _bool("cpu_prepack", cpu_prepack)
        if prepack and str(kwargs.get("dtype", "auto")) != "auto":
            from llm2_eval.cpu_kernels import prepack_supported
            from llm2_eval.verifier import resolve_dtype

            why = prepack_supported(resolve_dtype(kwargs["dtype"]))
            if why is not None:
                raise ValueError(f"llm2 model arg cpu_prepack=true with dtype={kwargs['dtype']}: {why}")
        if verifier is not None and str(verifier).lower() in ("", "none", "null"):
            verifier = None
        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # before any weight loads (llm2_eval.model_args): unknown args, a missing LLM, an unusable verifier
        check_model_path(pretrained, "pretrained=")
        check_model_args(pretrained, kwargs)
        if verifier is not None:
            check_verifier_first(pretrained, verifier, kwargs)
        trace = None if trace is None or str(trace).lower() in ("", "none", "null") else trace
        if sample_cache is not None and str(sample_cache).lower() in ("", "none", "null"):
            sample_cache = None
        self._protected = {"pretrained": pretrained, "verifier": verifier,
                           "--use_cache": cache_files_from_argv(sys.argv)}
        if trace is not None:  # a trace never destroys a file llm2 did not write (llm2_eval.trace)
            check_trace_path(trace, {**self._protected, "sample_cache": sample_cache})
        # what decides the answers: stored with lm-eval's response cache and the sample cache, compared on reuse
        self._answer_args = answer_args(
            {"pretrained": pretrained, "verifier": verifier, "alpha": alpha, "top_k": top_k, "beta": beta,
             "max_candidates": max_candidates, "seed": seed, "cpu_prepack": prepack, **kwargs})
        if sample_cache is not None:  # never destroys a file llm2 did not write; other model args refused now
            from llm2_eval.sample_cache import check_store_args, check_store_path, read_store_header

            check_store_path(sample_cache, {**self._protected, "trace": trace})
            header = read_store_header(sample_cache)
            if header is not None:
                check_store_args(sample_cache, header, self._answer_args)
        check_output_path(sys.argv)  # before hours of decoding whose results could not be saved
        if self.decode_defaults.top_k and self.decode_defaults.alpha is not None:
            log.warning(
                "llm2: alpha=%s and top_k=%s are both given: the candidates are the tokens that pass both "
                "(p >= alpha * p_max and among the top_k; llm2_eval.candidates); give one of them for the other "
                "rule alone", alpha, top_k,
            )
        launched = int(os.environ.get("WORLD_SIZE", "1"))  # processes started by accelerate launch / torchrun
        if launched > 1 and not torch.cuda.is_available():  # HFLM's Accelerator joins them over gloo only so
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self._adopt_cpu_data_parallel()
        if launched > 1 and self.world_size == 1 and not kwargs.get("tp_plan"):
            raise ValueError(
                f"llm2: launched as {launched} processes (WORLD_SIZE={launched}) but lm-eval gave this one rank 0 of 1 "
                f"({torch.cuda.device_count()} GPU(s) visible): every process would run the whole evaluation and "
                "write the same files; launch one process per GPU, or on CPUs see docs/scaling.md")
        if self.backend != "causal":
            raise ValueError(f"llm2 needs a decoder-only (causal) LLM; {pretrained} loaded as {self.backend}")
        self.verifier = None
        self.verifier_path = verifier
        if verifier is not None:
            from transformers import AutoTokenizer

            # an adapter directory whose base is this LLM shares its weights (llm2_eval.adapters)
            self.verifier = load_verifier(verifier, dtype=self.model.dtype, device=self.device, llm=self.model)
            ver_tok = tokenizer_source(verifier)  # None: a bare adapter on this LLM's backbone uses its tokenizer
            if ver_tok is not None:
                check_tokenizers_compatible(
                    self.tokenizer, AutoTokenizer.from_pretrained(ver_tok),
                    llm_name=f"LLM ({pretrained})", verifier_name=f"verifier ({verifier})",
                )
            rows = self.verifier.get_input_embeddings().num_embeddings
            if rows < len(self.tokenizer):
                raise ValueError(
                    f"verifier {verifier} has {rows} embedding rows for a {len(self.tokenizer)}-token tokenizer"
                )
        if prepack:
            self._prepack()
        _warn_unapplied_processors(self.model)
        self._seed_base = seed_value if seed_value is not None else int(torch.randint(0, 2**62, ()).item())
        self._prompt_counts: dict[bytes, int] = {}
        self._samples = None  # the sample cache (llm2_eval.sample_cache): finished sampled generations
        if sample_cache is not None:
            from llm2_eval.sample_cache import SampleStore, check_store_path
            from llm2_eval.trace import trace_path_for_rank

            path = trace_path_for_rank(sample_cache, self.rank, self.world_size)  # one file per data-parallel rank
            check_store_path(path, {**self._protected, "trace": trace})
            self._samples = SampleStore(path, self._answer_args, self._seed_base)
            if self._samples.resumed:
                log.info("llm2: sample_cache %s holds %d finished samples: they are not decoded again",
                         path, len(self._samples))
        self._trace = None
        self._trace_resumable = None  # (path, header) of a same-settings trace: continued by a resumed run
        self.trace_stamp: dict | None = None  # the trace's header (llm2_eval.trace); its run id is in the results
        if trace is not None:
            from llm2_eval.trace import new_stamp, open_trace, read_header, same_settings, trace_path_for_rank

            path = trace_path_for_rank(trace, self.rank, self.world_size)  # one file per data-parallel rank
            check_trace_path(path, {**self._protected, "sample_cache": sample_cache})
            self.trace_stamp = new_stamp(
                {"pretrained": pretrained, "verifier": verifier, "alpha": alpha, "top_k": top_k, "beta": beta,
                 "max_candidates": max_candidates, "seed": seed, "trace": trace,
                 "cpu_prepack": prepack, **({"sample_cache": sample_cache} if sample_cache else {}), **kwargs,
                 "device": str(self.device)},  # where the run really ran (lm-eval may pass "cuda:0" on a CPU)
                rank=self.rank, world_size=self.world_size,
            )
            self.trace_stamp.update(self._shared_run_stamp())
            old = read_header(path)
            if old is not None and same_settings(old, self.trace_stamp):
                self._trace_resumable = (path, old)  # decided at first use (lm-eval sets its cache hook later)
            else:
                self._trace = open_trace(path, self.trace_stamp)
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self._eos_ids = sorted(int(t) for t in eos)

    def _adopt_cpu_data_parallel(self) -> None:
        """Split the requests over the processes of a CPU launch (``accelerate launch`` / ``torchrun``).

        lm-eval's HFLM takes the launcher's rank and world size only when it counts more than one GPU; on CPUs
        every process of a 2-process launch runs the whole evaluation as rank 0 (and all write the same files).
        Under such a launch on a machine without GPUs, llm2 sets ``ACCELERATE_USE_CPU`` (unless set) so that
        HFLM's ``Accelerator`` joins the launch's process group (gloo), then takes that group's rank and world size:
        lm-eval shares out the requests and gathers the results over gloo as it does over GPUs.
        """
        acc = getattr(self, "accelerator", None)
        if acc is None or acc.num_processes <= 1 or self.world_size > 1 or self.device.type != "cpu":
            return
        self._rank, self._world_size = int(acc.process_index), int(acc.num_processes)
        if self._rank == 0:
            log.info("llm2: %d CPU processes: data-parallel evaluation (lm-eval splits data only over GPUs itself)",
                     self._world_size)

    def _shared_run_stamp(self) -> dict:
        """The run id and start time of rank 0, for every rank of a data-parallel run (one collective call):
        each rank's trace carries the run's one id, the one lm-eval writes into the results."""
        stamp = {"run_id": self.trace_stamp["run_id"], "start_time": self.trace_stamp["start_time"]}
        if self.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return stamp
        shared = [stamp]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]

    def _prepack(self) -> None:
        from llm2_eval.cpu_kernels import prepack_linears, use_gqa_attention

        if self.device.type != "cpu":  # where HFLM put the model (lm-eval's default cuda:0 falls back to the CPU)
            raise ValueError(f"llm2 model arg cpu_prepack=true needs a CPU model; this one is on {self.device}")
        try:
            n = prepack_linears(self.model)
            if self.verifier is not None:
                n += prepack_linears(self.verifier)
        except ValueError as err:
            raise ValueError(f"llm2 model arg cpu_prepack=true: {err}") from None
        for m in (self.model, self.verifier):
            if m is not None:
                use_gqa_attention(m)
        log.info("llm2: %d linear layers prepacked for oneDNN, grouped-query SDPA (cpu_prepack)", n)

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

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Generate for lm-eval ``generate_until`` requests with LLM2 decoding.

        Identical requests (lm-eval sends ``repeats`` copies of a document's request) are decoded together from
        ONE prefill of their prompt by the LLM and by the verifier (self-consistency without waste). A batch
        holds up to ``batch_size`` sequences, but the copies of one prompt are never split, so a batch may hold
        more rows when ``repeats > batch_size``. Prompts are encoded, truncated and their generations cut at the
        stop strings exactly as HFLM does. With the ``trace`` model arg one JSON line per sequence is written
        (a run resumed with lm-eval's ``--use_cache`` appends to the trace of the run it resumes). With the
        ``sample_cache`` model arg, sampled requests whose every copy is stored are answered from the store (and not
        traced again), the rest decoded and stored batch by batch.

        Returns:
            One generated string per request, in request order.
        """
        import json
        import time

        self._open_trace()

        from lm_eval.models.utils import postprocess_generated_text
        from rich.progress import Progress

        groups: dict[tuple[str, str], list[int]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            groups.setdefault((context, json.dumps(gen_kwargs, sort_keys=True, default=str)), []).append(i)
        lengths = {key: len(self.tok_encode(key[0])) for key in groups}
        order = sorted(groups, key=lambda k: (k[1], -lengths[k], k[0]))  # longest first, as HFLM
        limit = self.batch_size if isinstance(self.batch_size, int) else int(self._detect_batch_size())
        batches = _batches(order, groups, limit)

        # lm-eval's data parallel evens out the ranks by sending one rank's last request again (its results are
        # dropped): copies of one Instance beyond its ``repeats`` are that padding, marked as such in the trace
        seen: dict[int, int] = {}
        padding = []
        for req in requests:
            seen[id(req)] = seen.get(id(req), 0) + 1
            padding.append(seen[id(req)] > max(int(getattr(req, "repeats", 1) or 1), 1))
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str | None] = [None] * len(requests)

        # with a sample cache (llm2_eval.sample_cache): first every sampled row's seed, in the order of the batches
        # of all requests (a request answered from the store keeps the seed it would have had), then the stored
        # samples are taken and the rest batched again
        seeds_of: dict[tuple[str, str], list[int]] = {}
        stored = 0
        if self._samples is not None:
            from llm2_eval.sample_cache import sample_key

            for keys in batches:
                prep = self._prepare_batch(requests, groups, keys, eos)  # encoded again when decoded (memory)
                if prep["seeds"] is not None:
                    for key, n in zip(keys, prep["repeats"]):
                        seeds_of[key], prep["seeds"] = prep["seeds"][:n], prep["seeds"][n:]
            for key, seeds in seeds_of.items():
                texts = [self._samples.get(sample_key(key[0], key[1], sd)) for sd in seeds]
                if all(t is not None for t in texts):
                    for req_index, text in zip(groups[key], texts):
                        results[req_index] = text
                        self.cache_hook.add_partial("generate_until", requests[req_index].args, text)
                    stored += len(texts)
            if stored:
                log.info("llm2: %d of %d requests answered from sample_cache %s", stored, len(requests),
                         self._samples.path)
                todo = [k for k in order if results[groups[k][0]] is None]
                batches = _batches(todo, groups, limit)

        with Progress(disable=disable_tqdm or self.rank != 0, transient=True) as progress:
            bar = progress.add_task("llm2 generate_until", total=len(requests))
            progress.advance(bar, stored)
            for keys in batches:
                prep = self._prepare_batch(requests, groups, keys, eos, seeds=self._samples is None)
                cfg, until, repeats = prep["cfg"], prep["until"], prep["repeats"]
                seeds = prep["seeds"]
                if cfg.do_sample and self._samples is not None:  # drawn above
                    seeds = [sd for k in keys for sd in seeds_of[k]]
                context_enc, attn = prep["context_enc"].to(self.device), prep["attn"].to(self.device)
                t0 = time.perf_counter()
                with torch.autocast(
                    device_type=self.device.type, dtype=self.mixed_precision_dtype,
                    enabled=self.mixed_precision_dtype is not None,
                ):
                    out = generate(
                        self.model, context_enc, attn, cfg, verifier=self.verifier, tokenizer=self.tokenizer,
                        seeds=seeds, repeats=repeats if max(repeats) > 1 else None,
                    )
                seconds = (time.perf_counter() - t0) / len(out.tokens)
                self.last_decode = out
                row = 0
                finished = []
                for key in keys:
                    for copy, req_index in enumerate(groups[key]):
                        toks = out.tokens[row]
                        if isinstance(self.think_end_token, int) and self.think_end_token in toks:
                            toks = toks[len(toks) - toks[::-1].index(self.think_end_token):]
                        text = self.tok_decode(toks)
                        if isinstance(self.think_end_token, int):
                            text = text.lstrip()
                        text = postprocess_generated_text(
                            generation=text, stop=until,
                            think_end_token=self.think_end_token if isinstance(self.think_end_token, str) else None,
                        )
                        results[req_index] = text
                        self.cache_hook.add_partial("generate_until", requests[req_index].args, text)
                        if self._trace is not None:
                            self._write_trace(requests[req_index], copy, out, row, seconds, padding[req_index])
                        if seeds is not None and self._samples is not None:
                            req = requests[req_index]
                            finished.append({"key": sample_key(key[0], key[1], seeds[row]), "text": text,
                                             "task": req.task_name, "doc_id": req.doc_id, "repeat": copy,
                                             "seed": seeds[row]})
                        row += 1
                if finished:  # the whole batch in one write, fsynced: a killed run loses at most one batch
                    self._samples.add(finished)
                progress.advance(bar, sum(repeats))
        return results  # type: ignore[return-value]

    def _prepare_batch(self, requests: list[Instance], groups: dict[tuple[str, str], list[int]],
                       keys: list[tuple[str, str]], eos: str, seeds: bool = True) -> dict[str, Any]:
        """Encode one batch of request groups as HFLM does and build its :class:`DecodeConfig`; with ``seeds``, the
        seeds of its rows when it samples (this advances the per-prompt sample counts, :meth:`_seeds`)."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        gen_kwargs = requests[groups[keys[0]][0]].args[1]
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_gen_toks = kwargs.pop("max_gen_toks")
        max_ctx_len = self.max_length - max_gen_toks
        if max_ctx_len <= 0:
            raise ValueError(
                f"max_gen_toks={max_gen_toks} leaves no room for the prompt in max_length={self.max_length}"
            )
        context_enc, attn = self.tok_batch_encode(
            [k[0] for k in keys], left_truncate_len=max_ctx_len, truncation=self.truncation
        )
        cfg = self.decode_config(kwargs, max_gen_toks, until)
        repeats = [len(groups[k]) for k in keys]
        base = self._seed_base if gen_kwargs.get("seed") is None else int(gen_kwargs["seed"])
        return {"cfg": cfg, "until": until, "repeats": repeats, "context_enc": context_enc, "attn": attn,
                "seeds": self._seeds(context_enc, attn, repeats, base) if seeds and cfg.do_sample else None}

    def _seeds(self, context: torch.Tensor, attention_mask: torch.Tensor, repeats: list[int], base: int) -> list[int]:
        """One seed per output row: ``hash(base, prompt tokens, k)`` for the k-th sample of a prompt."""
        seeds = []
        for row, mask, n in zip(context.tolist(), attention_mask.tolist(), repeats):
            real = [t for t, m in zip(row, mask) if m]
            key = hashlib.blake2b(torch.tensor(real, dtype=torch.int64).numpy().tobytes(), digest_size=16).digest()
            first = self._prompt_counts.get(key, 0)
            self._prompt_counts[key] = first + n
            seeds += [_seed_for(base, real, first + k) for k in range(n)]
        return seeds

    def _open_trace(self) -> None:
        """Settle a trace left pending at start-up (same settings as the run that wrote it): continue it under
        its run id when lm-eval's response cache is on (``--use_cache``) or the ``sample_cache`` held samples (a
        resumed run), else rewrite it."""
        if self._trace_resumable is None:
            return
        from llm2_eval.trace import continue_trace, open_trace

        path, old = self._trace_resumable
        self._trace_resumable = None
        resumed = self._samples is not None and self._samples.resumed
        if getattr(self.cache_hook, "dbdict", None) is not None or resumed:
            self._trace, self.trace_stamp = continue_trace(path), old
            log.info("llm2: continuing trace %s of run %s (a resumed run: its finished requests are cached)", path,
                     old["run_id"])
        else:
            self._trace = open_trace(path, self.trace_stamp)

    def set_cache_hook(self, cache_hook) -> None:
        """lm-eval's response cache (``--use_cache DB``) is attached: refuse a cache written with other model args
        (its answers are another configuration's), and store this run's in a new one
        (:func:`llm2_eval.trace.check_cache_args`)."""
        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            warning = check_cache_args(db, self._answer_args)
            if warning:
                log.warning("llm2: %s", warning)
        super().set_cache_hook(cache_hook)

    def get_model_info(self) -> dict:
        """HFLM's model info (lm-eval writes it into the results' ``config``) plus, with ``trace=``, the trace's
        run id ``llm2_run_id`` and path ``llm2_trace``, so that ``llm2 report`` pairs results with their trace."""
        info = super().get_model_info()
        self._open_trace()
        if self.trace_stamp is not None:
            info["llm2_run_id"] = self.trace_stamp["run_id"]
            info["llm2_trace"] = self._trace.name
        return info

    def _write_trace(self, request: Instance, copy: int, out, row: int, seconds: float, padding: bool = False) -> None:
        import json

        st = out.stats[row]
        line = {
            "run_id": self.trace_stamp["run_id"],
            "task": request.task_name, "doc_id": request.doc_id, "repeat": copy,
            "steps": st.steps,
            "mean_candidates": st.candidates / st.steps if st.steps else 0.0,
            "scored_steps": st.scored_steps, "flips": st.flips,
            "mean_score_margin": st.margin_sum / st.scored_steps if st.scored_steps else 0.0,
            "llm_token_forwards": st.llm_tokens, "verifier_token_forwards": st.verifier_tokens,
            "finish_reason": out.finish_reasons[row], "seconds": round(seconds, 4),
        }
        if padding:  # decoded, but lm-eval drops its result (data-parallel padding): llm2 report skips it
            line["padding"] = True
        line = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in line.items()}
        self._trace.write(json.dumps(line, allow_nan=False) + "\n")
        self._trace.flush()
