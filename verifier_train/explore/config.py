"""The settings of ``llm2 explore``: one dataclass, every default in one place (the CLI options map onto it).

:meth:`ExploreConfig.settings` is the subset that decides the output; it is written on every output line, and a
resumed run must use the same (docs/method.md section 4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm2_eval.candidates import resolve_alpha
from verifier_train.cli_options import option
from verifier_train.explore.inputs import input_identity, parse_positions

#: ``checker(response_text, gold_answer, rollout_tokens) -> bool``: whether a response reaches the gold answer.
#: ``response_text`` is the decoded assistant response (gold prefix + candidate + rollout, special tokens skipped),
#: ``rollout_tokens`` the ids the rollout generated after the candidate (empty for a response ended by the
#: candidate; the sampled solution for ``--gold self``).
Checker = Callable[[str, str, Sequence[int]], bool]

STRATEGIES = ("rollout", "sample", "outcome")
BACKENDS = ("hf", "vllm")
SAMPLE_MODES = ("base", "uniform", "contrast", "expert")
FORMATS = ("auto", "gsm8k", "math")
GOLD_SOURCES = ("dataset", "self")
LABEL_RULES = ("absolute", "relative", "significant")
PROMPT_STYLES = ("question", "task")

# Settings that change the output; a resumed run must use the same ones (see ExploreConfig.settings()).
_RESULT_KEYS = (
    "model", "strategy", "backend", "dtype", "data_format", "prompt", "chat_template", "gold", "self_samples",
    "self_max_tokens", "positions", "include_eot", "alpha", "top_k", "candidates", "rollouts", "label", "tau",
    "margin", "significance", "min_gold_quality", "gold_rollouts", "temperature", "top_p", "max_rollout_tokens",
    "mode", "contrast_model", "gamma", "num_samples", "keep_duplicates", "seed",
)


@dataclass
class ExploreConfig:
    """All settings of ``llm2 explore`` with their defaults (the CLI options map 1:1 onto these fields).

    Attributes:
        model: LLM directory or hub id (its chat template tokenises the solutions).
        data: input JSON Lines file (GSM8K ``question``/``answer``; MATH ``problem``/``solution``[/``answer``]).
        output: output JSON Lines file (per-shard name with ``shard``, see the module docstring).
        strategy: ``"rollout"`` (paper, Eq. 5-6) or ``"sample"`` (released code, no rollouts).
        backend: ``"hf"`` (transformers) or ``"vllm"``.
        data_format: ``"auto"`` (by the keys of each line), ``"gsm8k"`` or ``"math"``.
        prompt: the user message: ``"question"`` (the bare question, as the authors' released data) or ``"task"``
            (the question plus the instruction of the llm2 lm-eval task, :mod:`llm2_eval.prompts`: the verifier
            is then trained on the very contexts it scores when ``gsm8k_llm2`` / ``math500_llm2`` are evaluated).
        chat_template: a Jinja chat-template file to tokenise the conversations with instead of the tokenizer's
            own (:func:`verifier_train.records.use_chat_template`); recorded in the settings (path and sha256), and
            ``llm2 train-verifier`` must then get the same file.
        gold: ``"dataset"`` (the file's solution) or ``"self"`` (the LLM's first correct sampled solution).
        self_samples: k, solutions sampled per question with ``gold="self"``.
        self_max_tokens: token budget of each self-sampled solution.
        self_batch: ``gold="self"``: questions whose solutions are sampled together (one ``rollouts_many`` call:
            vLLM decodes all their sequences in one batch); does not change the output.
        positions: ``"all"``, ``"stride:K"`` or ``"sample:P"`` (P >= 1 integer: that many positions; 0 < P < 1:
            that fraction, at least one), applied to the response positions that have a plausible non-gold
            candidate; see :func:`select_positions`.
        include_eot: also explore the end-of-turn token position.
        alpha: plausibility threshold (candidates have ``p >= alpha * p_max``), docs/method.md section 3 step 2; None =
            0.1 without ``top_k``, no threshold with it (:func:`llm2_eval.candidates.resolve_alpha`; the settings
            record the value in effect).
        top_k: when > 0, at most the top-k tokens: with ``alpha`` too, the tokens that pass both (one rule for
            decoding and exploration, the authors' data-builder rule;
            :func:`llm2_eval.candidates.plausible_candidates`).
        candidates: n, candidates drawn per position (rollout strategy).
        rollouts: m, rollouts per candidate (Eq. 5).
        label: the label rule (:func:`~verifier_train.explore.labels.is_negative`): ``"absolute"`` (paper Eq. 6,
            negative iff ``q(v) < tau``) or ``"relative"`` (negative iff ``q(v) <= q(gold) - margin``; measures
            ``q(gold)`` with the same m rollouts and skips positions where ``q(gold) < min_gold_quality``) or
            ``"significant"`` (negative iff a one-sided Fisher exact test on the rollout counts says ``q(v) <
            q(gold)`` at level ``significance``; skips the same positions, and those where no outcome of m candidate
            rollouts could pass; :mod:`~verifier_train.explore.significance`).
        tau: quality threshold of Eq. 6 (absolute rule).
        margin: how much lower than ``q(gold)`` a negative's quality must be (relative rule).
        significance: level of the one-sided test (significant rule): a negative iff its p-value is ``<=`` this,
            in (0, 1); 0.05 by default.
        min_gold_quality: positions whose ``q(gold)`` is below this are not judged (relative and significant rules).
        gold_rollouts: also measure ``q(gold)`` with m rollouts per explored position (always with ``relative`` and
            ``significant``).
        temperature: rollout (and self-sampling) temperature, default 0.7 (the paper is silent; a common
            self-consistency setting); for ``strategy="sample"`` the temperature of the negative-sampling
            distribution, default 1.0. ``None`` = that strategy's default.
        top_p: nucleus threshold of rollouts.
        max_rollout_tokens: token budget per rollout (512, the released decoding budget).
        mode: sample strategy: ``"base"`` (the LLM), ``"uniform"``, ``"contrast"`` (``l1 + gamma * (l1 - l2)``) or
            ``"expert"`` (the second model alone: negatives a stronger model finds plausible); see
            :func:`~verifier_train.explore.labels.sample_scores`.
        contrast_model: the second model (same tokenizer vocabulary; loaded with transformers on ``device``
            whatever the backend): required by ``contrast`` and ``expert``, optional with ``base``/``uniform``.
            Whenever it is given, the candidate set is restricted to tokens plausible under both models (as the
            authors' builder does). Only the sample strategy uses it.
        gamma: contrast weight in ``l1 + gamma * (l1 - l2)``.
        num_samples: draws per position (sample strategy, with replacement).
        keep_duplicates: sample strategy: a token drawn twice at a position is written as two pairs, so negatives
            are weighted by how often they are drawn (the authors' builder; default); False writes each drawn
            token once (first-draw order).
        seed: global seed; every random choice derives from it and the example id (:func:`derive_seed`).
        start: skip the first ``start`` examples (non-blank lines) of the input.
        limit: then take at most ``limit`` examples (None = all).
        exclude_dev: leave out the questions of the GSM8K dev slice (:mod:`llm2_eval.splits`; read from
            ``$LLM2_DATA_DIR/gsm8k/train.jsonl``), so that settings chosen on ``gsm8k_llm2_dev`` are not tuned on
            the verifier's own training questions.
        shard: ``(i, N)``: keep examples ``j`` with ``j % N == i``.
        on_error: ``"fail"`` (stop at a bad input line, naming ``file:line``) or ``"skip"`` (count it in the summary).
        dtype: ``"auto"``, ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        batch_rows: hf backend: maximum rollouts decoded together (16-32 suits a CPU; larger on GPUs).
        threads: CPU threads for torch (``torch.set_num_threads``, process-wide); 0 = torch's default. On a CPU
            shared with other jobs, 1 thread avoids OpenMP oversubscription stalls.
        cpu_prepack: hf backend on a CPU: prepack the model's linear weights for oneDNN
            (:mod:`llm2_eval.cpu_kernels`; ~1.6x faster batched generation here, float32). Equal to float32
            rounding, so not a setting a resumed run must match.
        tensor_parallel_size: vLLM tensor parallelism.
        vllm_args: further ``vllm.LLM`` keyword arguments.
        vllm_logprobs: vLLM: top-k prompt logprobs used for candidate sets.
        max_context: context limit in tokens (None = the model's ``max_position_embeddings``).
        progress: show the rich progress bar.
        checker: answer checker (default by format: GSM8K numbers / MATH math-verify); tests inject stubs.
    """

    model: str = option(help="LLM directory or hub id (System 1).")
    data: str = option(help="Input JSON Lines (GSM8K or MATH format).", path=True)
    output: str = option(help="Output JSON Lines (appended; resumable).", path=True)
    strategy: str = option(
        "rollout", choices=STRATEGIES,
        help="rollout: paper Eq. 5-6; sample: released code, no rollouts; outcome: the model's own samples with "
        "their outcome, for --objective outcome (needs --gold self).")
    backend: str = option("hf", choices=BACKENDS)
    data_format: str = option("auto", choices=FORMATS, name="--format")
    prompt: str = option(
        "question", choices=PROMPT_STYLES,
        help="User message: the bare question, or the question + the llm2 task's instruction (what gsm8k_llm2 / "
        "math500_llm2 send).")
    chat_template: str | None = option(
        None, path=True,
        help="Jinja chat-template file to tokenise with (default: the tokenizer's own); give the same one to "
        "train-verifier.")
    gold: str = option("dataset", choices=GOLD_SOURCES,
                       help="dataset: the file's solution; self: the LLM's first correct sampled solution.")
    self_samples: int = option(4)
    self_max_tokens: int = option(512)
    self_batch: int = option(16, help="--gold self: questions sampled together (one batch for vLLM).")
    positions: str = option("all", help="all | stride:K | sample:P")
    include_eot: bool = option(False, help="Also explore the end-of-turn token position.")
    alpha: float | None = option(
        None, help="Candidates have p >= alpha * p_max (default 0.1; no threshold with --top-k alone).")
    top_k: int = option(
        0, help="At most the top-k tokens; with --alpha too, the tokens that pass both (as decoding does).")
    candidates: int = option(2, help="n per position.")
    rollouts: int = option(4, help="m per candidate.")
    label: str = option(
        "absolute", choices=LABEL_RULES,
        help="absolute: negative iff q(v) < tau (Eq. 6); relative: negative iff q(v) <= q(gold) - margin; "
        "significant: negative iff a one-sided Fisher exact test on the rollout counts says q(v) < q(gold) at "
        "--significance.")
    tau: float = option(0.5, help="Negative iff q < tau (Eq. 6).")
    margin: float = option(0.25, help="relative: how far below q(gold) a negative's quality must be.")
    significance: float = option(
        0.05, help="significant: level of the one-sided test (negative iff p <= this; a one-rollout difference "
        "never is, and at 4 rollouts only 0/4 vs 4/4 passes 0.05).")
    min_gold_quality: float = option(
        0.25, help="relative, significant: positions with q(gold) below this are not judged (their candidates are "
        "not rolled out).")
    gold_rollouts: bool = option(False, help="Also measure q(gold) (always on with --label relative or significant).")
    temperature: float | None = option(
        None, help="Rollout temperature (default 0.7) / sample-strategy temperature (default 1.0).")
    top_p: float = option(1.0)
    max_rollout_tokens: int = option(512)
    mode: str = option(
        "base", choices=SAMPLE_MODES,
        help="sample: negatives drawn from the LLM (base), uniformly, from l1 + gamma * (l1 - l2) (contrast) or "
        "from the second model (expert).")
    contrast_model: str | None = option(
        None, help="Second model (same vocabulary), needed by contrast/expert; with any mode, candidates must then "
        "be plausible under both models.")
    gamma: float = option(1.0)
    num_samples: int = option(2)
    keep_duplicates: bool = option(
        True, help="sample: a token drawn twice is two pairs (the authors' builder), or written once.")
    seed: int = option(0)
    start: int = option(0, help="Skip the first N examples.")
    limit: int | None = option(None, help="Explore at most N examples (after --start).")
    exclude_dev: bool = option(
        False, help="Leave out the GSM8K dev slice (the last 200 train questions; task gsm8k_llm2_dev).")
    shard: tuple[int, int] = option(
        (0, 1), text="0/1", help="i/N: examples j with j mod N == i, per-shard output.")
    on_error: str = option("fail", choices=("fail", "skip"))
    dtype: str = option("auto")
    device: str = option("auto")
    batch_rows: int = option(32, help="hf: rollouts decoded together.")
    threads: int = option(0, help="CPU threads for torch (0 = default; 1 on a busy shared CPU).")
    cpu_prepack: bool = option(False, help="hf backend on CPU: oneDNN-prepacked linear weights (faster; float32).")
    tensor_parallel_size: int = option(1)
    vllm_args: dict[str, Any] = option(  # noqa: RUF009 (option() returns a dataclasses.field)
        factory=dict, multiple=True, name="--vllm-arg", help="KEY=VALUE passed to vllm.LLM (repeatable).")
    vllm_logprobs: int = option(20)
    max_context: int | None = option(None, help="Context limit (default: the model's).")
    progress: bool = option(True)
    checker: Checker | None = None

    ROLLOUT_TEMPERATURE = 0.7
    SAMPLE_TEMPERATURE = 1.0

    def __post_init__(self) -> None:
        choices = {
            "strategy": STRATEGIES, "backend": BACKENDS, "mode": SAMPLE_MODES, "data_format": FORMATS,
            "gold": GOLD_SOURCES, "on_error": ("fail", "skip"), "label": LABEL_RULES, "prompt": PROMPT_STYLES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        if self.alpha is not None and not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(f"alpha={self.alpha!r}: must be in (0, 1]")
        if self.cpu_prepack and self.backend != "hf":
            raise ValueError(f"cpu_prepack: for the hf backend only (backend={self.backend!r} has its own kernels)")
        if int(self.threads) < 0:
            raise ValueError(f"threads={self.threads!r}: must be >= 0")
        for name in ("candidates", "rollouts", "num_samples", "self_samples", "self_max_tokens", "self_batch",
                     "max_rollout_tokens", "batch_rows", "tensor_parallel_size", "vllm_logprobs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if int(self.top_k) < 0 or int(self.start) < 0 or (self.limit is not None and int(self.limit) < 0):
            raise ValueError("top_k, start and limit must be >= 0")
        for name in ("tau", "margin", "min_gold_quality"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be in [0, 1]")
        if not 0.0 < float(self.significance) < 1.0:
            raise ValueError(f"significance={self.significance!r}: must be in (0, 1)")
        if self.temperature is not None and not float(self.temperature) > 0:
            raise ValueError(f"temperature={self.temperature!r}: must be > 0")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        i, n = (int(v) for v in self.shard)
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard={self.shard!r}: need 0 <= i < N")
        self.shard = (i, n)
        if self.strategy == "sample" and self.mode in ("contrast", "expert") and not self.contrast_model:
            raise ValueError(f"mode {self.mode!r} needs a second model (--contrast-model)")
        if self.strategy == "outcome" and self.gold != "self":
            raise ValueError("strategy outcome samples the model's own solutions: pass --gold self")
        if self.strategy != "sample" and self.contrast_model:
            raise ValueError("contrast_model: only --strategy sample uses a second model")
        parse_positions(self.positions)

    @property
    def resolved_temperature(self) -> float:
        """The temperature in effect (the field, or the strategy's default)."""
        if self.temperature is not None:
            return float(self.temperature)
        return self.SAMPLE_TEMPERATURE if self.strategy == "sample" else self.ROLLOUT_TEMPERATURE

    @property
    def measures_gold(self) -> bool:
        """Whether rollouts also measure ``q(gold)`` (``--gold-rollouts``, always for the relative and significant
        rules)."""
        return bool(self.gold_rollouts) or self.label in ("relative", "significant")

    def settings(self) -> dict[str, Any]:
        """The settings that determine the output (written on every line; a resumed run must match them), with
        the input's identity under ``"input"`` (:func:`~verifier_train.explore.inputs.input_identity`: a resume
        must read the same content; the path may differ)."""
        d = {k: getattr(self, k) for k in _RESULT_KEYS}
        d["temperature"] = self.resolved_temperature
        d["alpha"] = resolve_alpha(self.alpha, self.top_k)  # the value in effect (0.1 when neither is given)
        if self.strategy == "rollout":
            for k in ("mode", "contrast_model", "gamma", "num_samples", "keep_duplicates"):
                d.pop(k)
            d["gold_rollouts"] = self.measures_gold
            # each rule writes only its own keys (the absolute rule, the default, writes no "label"), so outputs
            # written before a rule existed keep resuming
            unused = {"absolute": ("label", "margin", "significance", "min_gold_quality"),
                      "relative": ("tau", "significance"), "significant": ("tau", "margin")}[self.label]
            for k in unused:
                d.pop(k)
        elif self.strategy == "outcome":  # samples only: no positions, candidates, rollouts or label rule
            for k in ("positions", "include_eot", "alpha", "top_k", "candidates", "rollouts", "label", "tau", "margin",
                      "significance", "min_gold_quality", "gold_rollouts", "max_rollout_tokens", "mode",
                      "contrast_model", "gamma", "num_samples", "keep_duplicates"):
                d.pop(k)
        else:
            for k in ("candidates", "rollouts", "label", "tau", "margin", "significance", "min_gold_quality",
                      "gold_rollouts", "top_p", "max_rollout_tokens"):
                d.pop(k)
            if self.mode != "contrast":
                d.pop("gamma")
            if not self.contrast_model:
                d.pop("contrast_model")
        if self.prompt == "question":  # the default prompt is not written (outputs without the key resume)
            d.pop("prompt")
        if self.chat_template:
            p = Path(self.chat_template)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            d["chat_template"] = {"path": str(self.chat_template), "sha256": digest}
        else:
            d.pop("chat_template")
        if self.gold == "dataset":
            d.pop("self_samples")
            d.pop("self_max_tokens")
        d["input"] = dict(input_identity(self.data))
        return d

