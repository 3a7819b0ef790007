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
import sys
import time
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from rich.progress import Progress
from transformers import AutoTokenizer

from llm2_eval.adapters import tokenizer_source
from llm2_eval.candidates import context_seed
from llm2_eval.cpu_kernels import prepack_linears, use_gqa_attention
from llm2_eval.data_parallel import check_launch, cpu_launch_rank, join_cpu_launch, shared_run_stamp
from llm2_eval.decoding import DecodeConfig, DecodeOutput, generate
from llm2_eval.model_args import (
    LLM2Args,
    answer_args,
    check_model_args,
    check_output_path,
    check_verifier_first,
    parse_llm2_args,
    request_decode_config,
)
from llm2_eval.loading import eos_token_ids
from llm2_eval.paths import check_model_path
from llm2_eval.request_batches import EncodedBatch, Key, Plan, cut_batches, group_requests, padding_flags
from llm2_eval.sample_cache import SampleStore, check_store, check_store_path, sample_key
from llm2_eval.trace import (
    TraceWriter,
    cache_files_from_argv,
    check_cache_args,
    check_trace_path,
    new_stamp,
    trace_path_for_rank,
)
from llm2_eval.verifier import check_tokenizers_compatible, load_verifier

log = logging.getLogger(__name__)


def _log_like_lm_eval() -> None:
    """Send the ``llm2_eval`` loggers' records through lm-eval's handlers at lm-eval's level (``--verbosity``,
    ``LMEVAL_LOG_LEVEL``): lm-eval attaches its handler to its own ``lm_eval`` logger only, so without this the
    model's info lines (sample cache, trace, prepacking) are dropped. Nothing changes when the ``llm2_eval`` logger
    already has handlers (an application configured it) or lm-eval has none (used as a library)."""
    ours, theirs = logging.getLogger("llm2_eval"), logging.getLogger("lm_eval")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(theirs.getEffectiveLevel())
    ours.propagate = False


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


@register_model("llm2")
class LLM2LM(HFLM):
    """HFLM whose ``generate_until`` decodes with LLM2 (System 1 LLM + System 2 verifier).

    Model args (``--model_args``), in addition to HFLM's (``pretrained``, ``dtype``, ``device``, ``batch_size``,
    ...): ``verifier``, ``alpha``, ``top_k``, ``beta``, ``max_candidates``, ``seed``, ``trace``, ``cpu_prepack``
    and ``sample_cache``, described in :mod:`llm2_eval.model_args`; the steps of ``__init__`` follow lm-eval's
    HFLM: parse (:func:`~llm2_eval.model_args.parse_llm2_args`), check before loading, load the LLM (HFLM), load
    the verifier, open the sample cache and the trace (:class:`llm2_eval.trace.TraceWriter`).

    Sampling seeds: the k-th request with a given prompt gets the seed ``hash(seed, prompt tokens, k)``, so a
    sample does not depend on the batch size or on which other requests share its batch (nor on which were
    answered from the ``sample_cache``: the seeds of all requests are drawn first).

    Raises:
        ValueError: for a malformed model arg (naming it), or a task generation kwarg this model does not
            support.
        llm2_eval.verifier.TokenizerMismatchError: when the LLM and the verifier tokenizers differ.
        FileNotFoundError: when the LLM or the verifier directory does not exist.

    Model args are checked before any weight loads (:mod:`llm2_eval.model_args`). Giving both ``alpha`` and
    ``top_k`` logs a warning that the candidates are the tokens passing both.
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
        _log_like_lm_eval()
        args = parse_llm2_args(pretrained, verifier, alpha, top_k, beta, max_candidates, seed, trace, device,
                               cpu_prepack, sample_cache, dtype=kwargs.get("dtype", "auto"))
        self.decode_defaults = args.decode
        self._check_before_loading(pretrained, args, kwargs)
        launched = join_cpu_launch()  # llm2_eval.data_parallel
        super().__init__(pretrained=pretrained, device=args.device, **kwargs)
        self._check_loaded_llm(pretrained, launched, kwargs)
        self.verifier = self._create_verifier(pretrained, args.verifier)
        self.verifier_path = args.verifier
        if args.cpu_prepack:
            self._prepack()
        _warn_unapplied_processors(self.model)
        self._seed_base = args.seed if args.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self._prompt_counts: dict[bytes, int] = {}
        self._samples = self._create_sample_cache(args)  # finished generations (llm2_eval.sample_cache)
        self._trace = self._create_trace(args, kwargs)
        self._eos_ids = self._eos_token_ids()

    def _check_before_loading(self, pretrained: Any, args: LLM2Args, kwargs: dict[str, Any]) -> None:
        """Everything that needs no weights, before any weight loads: a missing LLM, an unknown model arg and an
        unusable verifier (:mod:`llm2_eval.model_args`); a ``trace`` or ``sample_cache`` path that would destroy a
        file llm2 did not write, or a sample cache of other model args; an ``--output_path`` where nothing can be
        written. Sets the inputs no output may replace and the model args that decide the answers (stored with
        lm-eval's response cache and the sample cache, compared on reuse)."""
        check_model_path(pretrained, "pretrained=")
        check_model_args(pretrained, kwargs)
        if args.verifier is not None:
            check_verifier_first(pretrained, args.verifier, kwargs)
        self._protected = {"pretrained": pretrained, "verifier": args.verifier,
                           "--use_cache": cache_files_from_argv(sys.argv)}
        if args.trace is not None:
            check_trace_path(args.trace, {**self._protected, "sample_cache": args.sample_cache})
        self._answer_args = answer_args({**args.given, **kwargs})
        if args.sample_cache is not None:
            check_store(args.sample_cache, {**self._protected, "trace": args.trace}, self._answer_args)
        check_output_path(sys.argv)  # before hours of decoding whose results could not be saved
        if args.decode.top_k and args.decode.alpha is not None:
            log.warning(
                "llm2: alpha=%s and top_k=%s are both given: the candidates are the tokens that pass both "
                "(p >= alpha * p_max and among the top_k; llm2_eval.candidates); give one of them for the other "
                "rule alone", args.given["alpha"], args.given["top_k"],
            )

    def _check_loaded_llm(self, pretrained: Any, launched: int, kwargs: dict[str, Any]) -> None:
        """After HFLM loaded the LLM: take the rank of a CPU launch, refuse a launch whose processes would each run
        the whole evaluation, and an LLM that is not decoder-only.

        Raises:
            ValueError: naming the launch or the LLM's backend.
        """
        self._adopt_cpu_data_parallel()
        check_launch(launched, self.world_size, kwargs)
        if self.backend != "causal":
            raise ValueError(f"llm2 needs a decoder-only (causal) LLM; {pretrained} loaded as {self.backend}")

    def _create_verifier(self, pretrained: Any, verifier: str | None) -> torch.nn.Module | None:
        """Load the verifier in the LLM's dtype and device (an adapter directory whose base is this LLM shares its
        weights, :mod:`llm2_eval.adapters`) and check it against the loaded tokenizer; None without a verifier.

        Raises:
            llm2_eval.verifier.TokenizerMismatchError: the tokenizers' vocabularies differ.
            ValueError: fewer embedding rows than the tokenizer has tokens.
        """
        if verifier is None:
            return None
        model = load_verifier(verifier, dtype=self.model.dtype, device=self.device, llm=self.model)
        ver_tok = tokenizer_source(verifier)  # None: a bare adapter on this LLM's backbone uses its tokenizer
        if ver_tok is not None:
            check_tokenizers_compatible(
                self.tokenizer, AutoTokenizer.from_pretrained(ver_tok),
                llm_name=f"LLM ({pretrained})", verifier_name=f"verifier ({verifier})",
            )
        rows = model.get_input_embeddings().num_embeddings
        if rows < len(self.tokenizer):
            raise ValueError(f"verifier {verifier} has {rows} embedding rows for a {len(self.tokenizer)}-token tokenizer")
        return model

    def _create_sample_cache(self, args: LLM2Args) -> SampleStore | None:
        """This rank's sample cache (one file per data-parallel rank, :mod:`llm2_eval.sample_cache`), or None."""
        if args.sample_cache is None:
            return None
        path = trace_path_for_rank(args.sample_cache, self.rank, self.world_size)
        check_store_path(path, {**self._protected, "trace": args.trace})
        store = SampleStore(path, self._answer_args, self._seed_base)
        if store.resumed:
            log.info("llm2: sample_cache %s holds %d finished generations: they are not decoded again", path,
                     len(store))
        return store

    def _create_trace(self, args: LLM2Args, kwargs: dict[str, Any]) -> TraceWriter | None:
        """This rank's trace (:class:`llm2_eval.trace.TraceWriter`, one file per data-parallel rank), stamped with
        the model args, the device the run really uses (lm-eval may pass ``cuda:0`` on a CPU) and rank 0's run id;
        None without ``trace=``."""
        if args.trace is None:
            return None
        stamp = new_stamp(
            {**args.given, "trace": args.trace, **({"sample_cache": args.sample_cache} if args.sample_cache else {}),
             **kwargs, "device": str(self.device)},
            rank=self.rank, world_size=self.world_size,
        )
        stamp.update(shared_run_stamp(stamp, self.world_size))
        path = trace_path_for_rank(args.trace, self.rank, self.world_size)
        return TraceWriter(path, stamp, {**self._protected, "sample_cache": args.sample_cache})

    @property
    def trace_stamp(self) -> dict | None:
        """The header of the trace being written (:mod:`llm2_eval.trace`; its run id is in the results), or None."""
        return None if self._trace is None else self._trace.stamp

    def _eos_token_ids(self) -> list[int]:
        """The ids that end a sequence: the model's ``generation_config.eos_token_id`` (one or a list) and the
        tokenizer's ``eos_token_id``."""
        return list(eos_token_ids(getattr(self.model, "generation_config", None), self.tokenizer))

    def _adopt_cpu_data_parallel(self) -> None:
        """Split the requests over the processes of a CPU launch (``accelerate launch`` / ``torchrun``), which
        HFLM runs as one process each: take the launch's rank and world size (:mod:`llm2_eval.data_parallel`)."""
        ranks = cpu_launch_rank(getattr(self, "accelerator", None), self.world_size, self.device)
        if ranks is None:
            return
        self._rank, self._world_size = ranks
        if self._rank == 0:
            log.info("llm2: %d CPU processes: data-parallel evaluation (lm-eval splits data only over GPUs itself)",
                     self._world_size)

    def _prepack(self) -> None:
        """Prepack the LLM's and the verifier's linear weights for oneDNN and give SDPA grouped key/value heads
        (``cpu_prepack``, :mod:`llm2_eval.cpu_kernels`).

        Raises:
            ValueError: a model that is not on a CPU, or weights that cannot be prepacked.
        """
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
        """The :class:`DecodeConfig` of one request batch: model-arg defaults + the task's generation kwargs
        (:func:`llm2_eval.model_args.request_decode_config`, which raises ValueError for unsupported ones)."""
        return request_decode_config(self.decode_defaults, gen_kwargs, max_new_tokens, stop, self._eos_ids)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Generate for lm-eval ``generate_until`` requests with LLM2 decoding.

        Identical requests (lm-eval sends ``repeats`` copies of a document's request) are decoded together from
        ONE prefill of their prompt by the LLM and by the verifier (self-consistency without waste). A batch
        holds up to ``batch_size`` sequences, but the copies of one prompt are never split, so a batch may hold
        more rows when ``repeats > batch_size``. Prompts are encoded, truncated and their generations cut at the
        stop strings exactly as HFLM does. With the ``trace`` model arg one JSON line per sequence is written
        (a run resumed with lm-eval's ``--use_cache`` appends to the trace of the run it resumes). With the
        ``sample_cache`` model arg, requests whose every copy is stored (sampled, or greedy) are answered from the
        store (and not traced again), the rest decoded and stored batch by batch.

        Steps: plan the batches (:meth:`_plan`), answer what the sample cache holds
        (:meth:`_answer_from_sample_cache`), then per batch decode (:meth:`_decode_batch`) and post-process
        (:meth:`_finish_batch`).

        Returns:
            One generated string per request, in request order.
        """
        self._start_trace()
        plan = self._plan(requests)
        results: list[str | None] = [None] * len(requests)
        stored = self._answer_from_sample_cache(requests, plan, results) if self._samples is not None else 0
        with Progress(disable=disable_tqdm or self.rank != 0, transient=True) as progress:
            bar = progress.add_task("llm2 generate_until", total=len(requests))
            progress.advance(bar, stored)
            for keys in plan.batches:
                batch, out, seconds = self._decode_batch(requests, plan, keys)
                self._finish_batch(requests, plan, keys, batch, out, seconds, results)
                progress.advance(bar, sum(batch.repeats))
        return results  # type: ignore[return-value]

    def _plan(self, requests: list[Instance]) -> Plan:
        """Group identical requests, order the groups longest prompt first (as HFLM), cut them into batches and
        mark lm-eval's data-parallel padding (:mod:`llm2_eval.request_batches`)."""
        groups = group_requests(requests)
        lengths = {key: len(self.tok_encode(key[0])) for key in groups}
        order = sorted(groups, key=lambda k: (k[1], -lengths[k], k[0]))
        limit = self.batch_size if isinstance(self.batch_size, int) else int(self._detect_batch_size())
        return Plan(groups=groups, order=order, batches=cut_batches(order, groups, limit), limit=limit,
                    padding=padding_flags(requests), eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False))

    def _answer_from_sample_cache(self, requests: list[Instance], plan: Plan, results: list[str | None]) -> int:
        """Answer the requests the sample cache holds (:mod:`llm2_eval.sample_cache`), sampled and greedy.

        First every sampled row's seed is drawn, in the order of the batches of all requests (into
        ``plan.seeds``: a request answered from the store keeps the seed it would have had), then each group whose
        every copy is stored (a greedy group: its one text) is answered (results and lm-eval's cache hook) and the
        rest is batched again.

        Returns:
            The number of requests answered.
        """
        for keys in plan.batches:
            batch = self._prepare_batch(requests, plan, keys)  # encoded again when decoded (memory)
            seeds = batch.seeds
            if seeds is not None:
                for key, n in zip(keys, batch.repeats):
                    plan.seeds[key], seeds = seeds[:n], seeds[n:]
        stored = 0
        for key in plan.order:  # a greedy group (no seeds) has one text for all its copies
            seeds = plan.seeds.get(key)
            texts = ([self._samples.get(sample_key(key[0], key[1], sd)) for sd in seeds] if seeds is not None
                     else [self._samples.get(sample_key(key[0], key[1], None))] * len(plan.groups[key]))
            if all(t is not None for t in texts):
                for req_index, text in zip(plan.groups[key], texts):
                    results[req_index] = text
                    self.cache_hook.add_partial("generate_until", requests[req_index].args, text)
                stored += len(texts)
        if stored:
            log.info("llm2: %d of %d requests answered from sample_cache %s", stored, len(requests), self._samples.path)
            todo = [k for k in plan.order if results[plan.groups[k][0]] is None]
            plan.batches = cut_batches(todo, plan.groups, plan.limit)
        return stored

    def _decode_batch(self, requests: list[Instance], plan: Plan,
                      keys: list[Key]) -> tuple[EncodedBatch, DecodeOutput, float]:
        """Encode one batch and decode it (paper Eq. 1, :func:`llm2_eval.decoding.generate`) under HFLM's
        mixed-precision autocast, each group's copies from one prefill; also the seconds per output row."""
        batch = self._prepare_batch(requests, plan, keys, seeds=self._samples is None)
        if batch.cfg.do_sample and self._samples is not None:  # drawn before decoding (_answer_from_sample_cache)
            batch.seeds = [sd for k in keys for sd in plan.seeds[k]]
        context_enc, attn = batch.context_enc.to(self.device), batch.attn.to(self.device)
        t0 = time.perf_counter()
        with torch.autocast(
            device_type=self.device.type, dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            out = generate(
                self.model, context_enc, attn, batch.cfg, verifier=self.verifier, tokenizer=self.tokenizer,
                seeds=batch.seeds, repeats=batch.repeats if max(batch.repeats) > 1 else None,
            )
        self.last_decode = out
        return batch, out, (time.perf_counter() - t0) / len(out.tokens)

    def _finish_batch(self, requests: list[Instance], plan: Plan, keys: list[Key], batch: EncodedBatch,
                      out: DecodeOutput, seconds: float, results: list[str | None]) -> None:
        """Post-process one decoded batch: each row's text (:meth:`_postprocess`) into ``results`` and lm-eval's
        cache hook, its trace line, and the batch's samples into the sample cache in one fsynced write (a killed
        run loses at most one batch)."""
        row = 0
        finished = []
        for key in keys:
            for copy, req_index in enumerate(plan.groups[key]):
                req = requests[req_index]
                text = self._postprocess(out.tokens[row], batch.until)
                results[req_index] = text
                self.cache_hook.add_partial("generate_until", req.args, text)
                if self._trace is not None:
                    self._trace.write(req.task_name, req.doc_id, copy, out.stats[row], out.finish_reasons[row],
                                      seconds, plan.padding[req_index])
                if self._samples is not None and (batch.seeds is not None or copy == 0):
                    seed = batch.seeds[row] if batch.seeds is not None else None  # greedy: one text per group
                    line = {"key": sample_key(key[0], key[1], seed), "text": text, "task": req.task_name,
                            "doc_id": req.doc_id, "repeat": copy, "seed": seed}
                    if seed is not None and req.args[1].get("seed") is not None:
                        line["seed_base"] = None  # seeded by the task: not the run's base (_prepare_batch)
                    finished.append(line)
                row += 1
        if finished:
            self._samples.add(finished)

    def _postprocess(self, toks: list[int], until: list[str]) -> str:
        """A generated row's text as HFLM makes it: after the end-of-thinking token when there is one, decoded,
        cut at the stop strings (lm-eval's ``postprocess_generated_text``)."""
        if isinstance(self.think_end_token, int) and self.think_end_token in toks:
            toks = toks[len(toks) - toks[::-1].index(self.think_end_token):]
        text = self.tok_decode(toks)
        if isinstance(self.think_end_token, int):
            text = text.lstrip()
        return postprocess_generated_text(
            generation=text, stop=until,
            think_end_token=self.think_end_token if isinstance(self.think_end_token, str) else None,
        )

    def _prepare_batch(self, requests: list[Instance], plan: Plan, keys: list[Key], seeds: bool = True) -> EncodedBatch:
        """Encode one batch of request groups as HFLM does and build its :class:`DecodeConfig`; with ``seeds``, the
        seeds of its rows when it samples (this advances the per-prompt sample counts, :meth:`_seeds`).

        Raises:
            ValueError: ``max_gen_toks`` leaves no room for the prompt in ``max_length``.
        """
        gen_kwargs = requests[plan.groups[keys[0]][0]].args[1]
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=plan.eos)
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
        repeats = [len(plan.groups[k]) for k in keys]
        base = self._seed_base if gen_kwargs.get("seed") is None else int(gen_kwargs["seed"])
        return EncodedBatch(cfg=cfg, until=until, repeats=repeats, context_enc=context_enc, attn=attn,
                      seeds=self._seeds(context_enc, attn, repeats, base) if seeds and cfg.do_sample else None)

    def _seeds(self, context: torch.Tensor, attention_mask: torch.Tensor, repeats: list[int], base: int) -> list[int]:
        """One seed per output row: ``hash(base, prompt tokens, k)`` for the k-th sample of a prompt."""
        seeds = []
        for row, mask, n in zip(context.tolist(), attention_mask.tolist(), repeats):
            real = [t for t, m in zip(row, mask) if m]
            key = hashlib.blake2b(torch.tensor(real, dtype=torch.int64).numpy().tobytes(), digest_size=16).digest()
            first = self._prompt_counts.get(key, 0)
            self._prompt_counts[key] = first + n
            seeds += [context_seed(base, real, first + k) for k in range(n)]
        return seeds

    def _start_trace(self) -> None:
        """Settle a trace left pending at start-up (same settings as the run that wrote it,
        :meth:`llm2_eval.trace.TraceWriter.start`): a resumed run continues it: lm-eval's response cache is on
        (``--use_cache``) or the ``sample_cache`` held samples."""
        if self._trace is not None:
            resumed = self._samples is not None and self._samples.resumed
            self._trace.start(resumed=getattr(self.cache_hook, "dbdict", None) is not None or resumed)

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
        self._start_trace()
        if self._trace is not None:
            info.update(self._trace.run_info())
        return info
