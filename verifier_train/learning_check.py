"""The end-to-end learning check: flawed LLM -> ``llm2 explore`` -> ``llm2 train-verifier`` -> LLM2 decoding.

In the synthetic world of :mod:`verifier_train.synthetic` the right token of every decision is known, so this
module can say whether the whole loop learned: accuracy with the trained verifier against greedy decoding on
held-out problems, where the verifier changed the LLM's choice (:func:`right_tokens`), and a control trained with
the preference reversed (:func:`reversed_preference`) that must end below greedy. ``tests/test_learning.py``
asserts it; ``benchmarks/learning.py`` prints the table.

Example::

    python benchmarks/learning.py --workdir /tmp/llm2-learning
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm2_eval.answers import gsm8k_gold, gsm8k_is_correct
from llm2_eval.decoding import DecodeConfig, generate
from llm2_eval.verifier import load_verifier
from verifier_train.explore import ExploreConfig, explore
from verifier_train.records import chat_token_ids
from verifier_train.synthetic import LLMTraining, World, make_problems, train_flawed_llm, write_jsonl
from verifier_train.train import TrainConfig, VerifierTrainer, train_verifier


@dataclass
class DecodeResult:
    """Accuracy and verifier activity of one decoding run over the held-out problems.

    Attributes:
        accuracy: share of problems whose final answer (``llm2_eval.answers``) equals the gold answer.
        correct: per problem, whether it was solved.
        flips: steps where the verifier changed the LLM's choice (the trace's ``flips``), summed over problems.
        flips_fixing: flips at a digit of a sum where the LLM's top token was wrong and the chosen token is right
            (:func:`right_tokens`; e.g. a dropped carry restored).
        flips_breaking: flips at a digit of a sum where the LLM's top token was right and the chosen one is wrong.
        scored_steps: steps where the verifier scored 2+ candidates.
        texts: the generated responses.
    """

    accuracy: float
    correct: list[bool]
    flips: int = 0
    flips_fixing: int = 0
    flips_breaking: int = 0
    scored_steps: int = 0
    texts: list[str] = field(default_factory=list)

    @property
    def flips_at_errors(self) -> float | None:
        """Share of flips that corrected a wrong digit of a sum (None without flips)."""
        return self.flips_fixing / self.flips if self.flips else None


def _read_number(toks: Sequence[str], end: int) -> tuple[int, int] | None:
    """``(value, first index)`` of the number whose last token is ``toks[end]`` (``3`` ``##4`` -> 34), or None."""
    j, digits = end, ""
    while j >= 0 and toks[j].startswith("##") and toks[j][2:].isdigit():
        digits = toks[j][2:] + digits
        j -= 1
    if j < 0 or not toks[j].isdigit():
        return None
    return int(toks[j] + digits), j


def right_tokens(tok: Any, prompt: Sequence[int], generated: Sequence[int]) -> dict[int, int]:
    """``{step: right token id}`` for the generated digits of a sum, given the operands as written: after
    ``x + b =`` the right tens digit is that of ``x + b``, and after ``x + b = T`` the right ones digit is
    ``##((x + b) mod 10)`` (whatever ``T`` was chosen). Other steps have no entry."""
    toks = tok.convert_ids_to_tokens(list(prompt) + list(generated))
    out = {}
    for step in range(len(generated)):
        i = len(prompt) + step
        eq = i - 1 if toks[i - 1] == "=" else i - 2 if i >= 2 and toks[i - 2] == "=" and toks[i - 1].isdigit() else -1
        if eq < 4 or toks[eq - 2] != "+" or not toks[eq - 1].isdigit():
            continue
        x = _read_number(toks, eq - 3)
        if x is None:
            continue
        total = x[0] + int(toks[eq - 1])
        right = str(total // 10) if eq == i - 1 else f"##{total % 10}"
        out[step] = tok.convert_tokens_to_ids(right)
    return out


def decode_problems(
    llm: Any, tok: Any, problems: Sequence[dict[str, Any]], *, verifier: Any = None, beta: float = 0.0,
    alpha: float = 0.1, max_new_tokens: int = 40, batch_size: int = 100,
) -> DecodeResult:
    """Greedy LLM2 decoding (paper Eq. 1, :func:`llm2_eval.decoding.generate`) of the problems' chat prompts.

    Flips are re-derived from the outputs (for greedy decoding a flip is exactly a step whose token is not the
    LLM's argmax) with one teacher-forced LLM forward, checked against the decoder's own flip count, and sorted
    into fixing / breaking decisions at the digits of sums (:func:`right_tokens`).

    Raises:
        RuntimeError: when the re-derived flips disagree with the decoder's counters (a bookkeeping bug).
    """
    cfg = DecodeConfig(alpha=alpha, beta=beta, max_new_tokens=max_new_tokens, eos_token_ids=[tok.eos_token_id])
    res = DecodeResult(accuracy=0.0, correct=[])
    for b0 in range(0, len(problems), batch_size):
        chunk = problems[b0 : b0 + batch_size]
        prompts = [chat_token_ids(tok, [{"role": "user", "content": p["question"]}], add_generation_prompt=True)
                   for p in chunk]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(prompts):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        out = generate(llm, ids, mask, cfg, verifier=verifier)
        for prob, prompt, gen, st in zip(chunk, prompts, out.tokens, out.stats):
            text = tok.decode(gen, skip_special_tokens=True)
            res.texts.append(text)
            res.correct.append(bool(gsm8k_is_correct(text, gsm8k_gold(prob["answer"]))))
            res.flips += st.flips
            res.scored_steps += st.scored_steps
            if not st.flips:
                continue
            with torch.no_grad():
                logits = llm(torch.tensor([list(prompt) + list(gen)])).logits[0, len(prompt) - 1 : -1]
            top = logits.argmax(-1).tolist()
            flipped = [s for s, (t, g) in enumerate(zip(top, gen)) if t != g]
            if len(flipped) != st.flips:
                raise RuntimeError(f"flip count mismatch: decoder {st.flips}, re-derived {len(flipped)}")
            right = right_tokens(tok, prompt, gen)
            for s in flipped:
                if s in right and gen[s] == right[s] and top[s] != right[s]:
                    res.flips_fixing += 1
                elif s in right and top[s] == right[s]:
                    res.flips_breaking += 1
    res.accuracy = sum(res.correct) / max(len(res.correct), 1)
    return res


# ---------------------------------------------------------------------------------------------- the whole loop


@contextmanager
def reversed_preference():
    """Control for the learning check: while active, verifier training prefers the *negative* token.

    It swaps ``(s_gold, s_neg)`` where the verifier trainer reads them, so the pairwise loss (paper Eq. 4) and the
    held-out pair accuracy see the roles exchanged; nothing else changes. A loop that learns must then end below
    greedy. Not for real training.
    """
    module = sys.modules[VerifierTrainer.__module__]
    original = module.pair_scores

    def swapped(*args: Any, **kwargs: Any):
        s_gold, s_neg = original(*args, **kwargs)
        return s_neg, s_gold

    module.pair_scores = swapped
    try:
        yield
    finally:
        module.pair_scores = original


def flipped_outcomes(src: str | Path, dst: str | Path) -> Path:
    """A copy of an outcome file (``llm2 explore --strategy outcome``) with every outcome reversed (right <-> wrong):
    the reversed control of the outcome-label learning check."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                for o in rec.get("outcomes", []):
                    o["correct"] = 1 - int(o["correct"])
                g.write(json.dumps(rec) + "\n")
    return Path(dst)


@dataclass
class CheckConfig:
    """Settings of :func:`run_learning_check` (what the test and ``benchmarks/learning.py`` run).

    Attributes:
        train_problems: problems explored (``llm2 explore --strategy rollout``), seed 1.
        test_problems: held-out problems decoded (seed 2; none shares start and addends with a training one).
        alpha: plausibility mask of decoding and exploration.
        beta: verifier weight of LLM2 decoding.
        rollouts, candidates, tau: exploration settings (paper Eq. 5-6).
        lr, epochs, global_batch: verifier training.
        reversed_control: also train and decode a verifier with the preference reversed.
        labels: ``"rollout"`` (rollout triplets, pairwise loss, full verifier) or ``"outcome"`` (``--strategy
            outcome`` samples, ``--objective outcome``; the reversed control trains on flipped outcomes).
        outcome_samples: samples per training problem (``labels="outcome"``).
        outcome_trainable: ``"full"`` (lr, global_batch x 4 samples, ``outcome_epochs``) or ``"head"`` (the LLM's
            own frozen backbone + ``head``, ``head_epochs``, ``head_lr``).
    """

    train_problems: int = 600
    test_problems: int = 200
    alpha: float = 0.1
    beta: float = 1.0
    rollouts: int = 2
    candidates: int = 2
    tau: float = 0.5
    lr: float = 2e-3
    epochs: float = 20.0
    global_batch: int = 16
    reversed_control: bool = True
    labels: str = "rollout"
    outcome_samples: int = 8
    outcome_trainable: str = "full"
    outcome_epochs: float = 20.0
    outcome_beta: float = 8.0
    head: str = "mlp"
    head_epochs: float = 30.0
    head_lr: float = 3e-3
    world: World = field(default_factory=World)
    llm: LLMTraining = field(default_factory=LLMTraining)


def run_learning_check(workdir: str | Path, cfg: CheckConfig | None = None, log: Any = None) -> dict[str, Any]:
    """The whole LLM2 loop in the synthetic world: flawed LLM -> ``explore`` -> ``train_verifier`` -> decoding.

    Stages (each timed): train the flawed LLM (reused when ``workdir/llm`` exists), write the problems, explore the
    training problems with rollouts (:func:`verifier_train.explore.explore`), train the verifier
    (:func:`verifier_train.train.train_verifier`), decode the held-out problems greedily (beta 0) and with LLM2;
    with ``reversed_control`` the same again with the preference reversed (:func:`reversed_preference`).

    Returns:
        ``{"greedy", "llm2", "reversed"}`` (:class:`DecodeResult` as dicts, without texts), ``"pairs"``,
        ``"heldout_pair_accuracy"`` (share of held-out pairs with ``s(gold) > s(neg)``; also
        ``"reversed_heldout_pair_accuracy"``, low when the reversal took), ``"explore"`` (summary),
        ``"seconds"`` per stage, ``"paths"``.
    """
    cfg = cfg or CheckConfig()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    llm_dir = work / "llm"
    if not (llm_dir / "config.json").exists():
        train_flawed_llm(llm_dir, cfg.world, cfg.llm)
    seconds["llm"] = time.perf_counter() - t
    say(f"flawed LLM ready ({seconds['llm']:.1f} s)")
    test = _write_problems(cfg, work)

    t = time.perf_counter()
    summary, triplets = _explore(cfg, work, llm_dir)
    seconds["explore"] = time.perf_counter() - t
    say(f"explored {summary['examples']} problems: {summary['negatives']} negatives of {summary['candidates']} "
        f"candidates ({seconds['explore']:.1f} s)")

    tok = AutoTokenizer.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    result: dict[str, Any] = {"explore": {k: summary[k] for k in (
        "examples", "positions", "candidates", "negatives", "rollouts", "mean_q")}, "pairs": summary["negatives"]}
    t = time.perf_counter()
    result["greedy"] = decode_problems(llm, tok, test, alpha=cfg.alpha)
    seconds["decode_greedy"] = time.perf_counter() - t
    say(f"greedy {result['greedy'].accuracy:.3f}")

    variants = [("llm2", False)] + ([("reversed", True)] if cfg.reversed_control else [])
    for name, reverse in variants:
        out = work / f"verifier_{name}"
        t = time.perf_counter()
        acc = _train_variant(cfg, work, llm_dir, triplets, out, reverse)
        seconds[f"train_{name}"] = time.perf_counter() - t
        result[("reversed_" if reverse else "") + "heldout_pair_accuracy"] = acc
        verifier = load_verifier(out, dtype=torch.float32, llm=llm).eval()
        t = time.perf_counter()
        beta = cfg.outcome_beta if cfg.labels == "outcome" else cfg.beta
        result[name] = decode_problems(llm, tok, test, verifier=verifier, beta=beta, alpha=cfg.alpha)
        seconds[f"decode_{name}"] = time.perf_counter() - t
        say(f"{name}: accuracy {result[name].accuracy:.3f}, held-out pair accuracy {acc}, "
            f"flips {result[name].flips} (fixing {result[name].flips_fixing}, breaking {result[name].flips_breaking})")
    for name in ("greedy", *(v for v, _ in variants)):
        d = asdict(result[name])
        d.pop("texts")
        d["correct"] = sum(d["correct"])
        d["problems"] = len(test)
        result[name] = d
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    result["paths"] = {"workdir": str(work), "llm": str(llm_dir), "triplets": str(triplets)}
    return result


def _write_problems(cfg: CheckConfig, work: Path) -> list[dict[str, Any]]:
    """Write ``train.jsonl`` (seed 1) and ``test.jsonl`` (seed 2, none sharing start and addends with a training
    problem) into ``work``; the test problems."""
    train = make_problems(cfg.train_problems, seed=1, world=cfg.world)
    seen = {(p["start"], tuple(p["addends"])) for p in train}
    test = [p for p in make_problems(cfg.test_problems * 3, seed=2, world=cfg.world)
            if (p["start"], tuple(p["addends"])) not in seen][: cfg.test_problems]
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "test.jsonl", test)
    return test


def _explore(cfg: CheckConfig, work: Path, llm_dir: Path) -> tuple[dict[str, Any], Path]:
    """Explore the training problems (:func:`verifier_train.explore.explore`): rollout triplets, or with
    ``labels="outcome"`` self-sampled outcomes; the summary (``negatives`` and ``candidates`` for both) and file."""
    triplets = work / ("outcomes.jsonl" if cfg.labels == "outcome" else "triplets.jsonl")
    if cfg.labels == "outcome":
        summary = explore(ExploreConfig(
            model=str(llm_dir), data=str(work / "train.jsonl"), output=str(triplets), strategy="outcome", gold="self",
            self_samples=cfg.outcome_samples, self_max_tokens=32, self_batch=64, dtype="float32", device="cpu",
            batch_rows=64, progress=False,
        ))
        summary.update(negatives=summary["self_samples"] - summary["outcome_right"], candidates=summary["self_samples"])
    else:
        summary = explore(ExploreConfig(
            model=str(llm_dir), data=str(work / "train.jsonl"), output=str(triplets), strategy="rollout",
            positions="all", alpha=cfg.alpha, candidates=cfg.candidates, rollouts=cfg.rollouts, tau=cfg.tau,
            max_rollout_tokens=32, dtype="float32", device="cpu", batch_rows=64, progress=False,
        ))
    return summary, triplets


def _train_variant(cfg: CheckConfig, work: Path, llm_dir: Path, triplets: Path, out: Path,
                   reverse: bool) -> float | None:
    """Train the verifier of one variant into ``out`` (:func:`verifier_train.train.train_verifier`); with
    ``reverse``, on flipped outcomes or with the preference reversed (:func:`reversed_preference`). Returns the
    held-out accuracy as seen with the right preference (head end accuracy, or pair accuracy; None when the run
    reports neither)."""
    if cfg.labels == "outcome":
        data = flipped_outcomes(triplets, work / "outcomes_reversed.jsonl") if reverse else triplets
        if cfg.outcome_trainable == "head":
            tc = TrainConfig(
                model=str(llm_dir), data=[str(data)], output=str(out), trainable="head", objective="outcome",
                head=cfg.head, epochs=cfg.head_epochs, head_lr=cfg.head_lr, head_batch=512, bf16=False,
                eval_fraction=0.1, eval_steps=10_000, progress=False, overwrite=True,
                feature_cache=str(work / "features"),
            )
        else:
            tc = TrainConfig(
                model=str(llm_dir), data=[str(data)], output=str(out), objective="outcome", lr=cfg.lr,
                epochs=cfg.outcome_epochs, global_batch=cfg.global_batch * 4, micro_batch=cfg.global_batch * 4,
                bf16=False, gradient_checkpointing=False, eval_fraction=0.1, eval_steps=10_000,
                logging_steps=10_000, warmup_ratio=0.1, max_length=512, progress=False, overwrite=True,
                save_steps=10_000,
            )
        acc = train_verifier(tc).metrics.get("eval_end_accuracy")  # head runs only; the full run reports eval_loss
    else:
        tc = TrainConfig(
            model=str(llm_dir), data=[str(triplets)], output=str(out), lr=cfg.lr, epochs=cfg.epochs,
            global_batch=cfg.global_batch, micro_batch=cfg.global_batch, bf16=False, gradient_checkpointing=False,
            eval_fraction=0.1, eval_steps=10_000, logging_steps=10_000, warmup_ratio=0.1, max_length=512,
            progress=False, overwrite=True, save_steps=10_000,
        )
        with reversed_preference() if reverse else nullcontext():
            acc = train_verifier(tc).metrics.get("eval_pair_accuracy")
    if reverse and acc is not None:  # the trainer saw swapped roles: back to the right preference
        acc = 1.0 - acc
    return acc
