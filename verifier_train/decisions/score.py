"""Score verifiers on a decision benchmark (``llm2 decisions score``; built by :mod:`verifier_train.decisions.build`).

At a decision point with candidates ``v`` (log-probabilities ``z_v``, values ``q(v)`` = right rollouts / rollouts),
LLM2 with weight ``beta`` picks ``argmax_v z_v + beta * s(v)`` over the plausible set ``p >= alpha * p_max``
(paper Eq. 3; the log-probabilities differ from the logits by a constant per point, so the choice is the same).
Per beta this module reports, over the points:

- **decision gain** ``q(LLM2's choice) - q(argmax z)``: how much more often the continuation reaches the right
  answer after LLM2's choice than after the LLM's own; its mean with a percentile-bootstrap 95% interval over
  *questions* (the points of a question stay together: a ratio estimator, sum of gains / points, per resample);
- **greedy-continuation gain**: the same with the outcome of the greedy continuation of each candidate (what LLM2
  writes after a flip when nothing else flips) instead of ``q``;
- **changed**: the share of points where LLM2's choice differs from the LLM's;
- the **held-out-beta gain**: beta chosen for each question on all the other questions (leave one question out), so
  that choosing beta on the benchmark does not inflate the gain (:func:`held_out_beta_gain`).

And, independent of beta: the **oracle gain** (``max q - q(argmax z)``: always the best candidate), also over the
wider stored candidate set (``wide_alpha``). It picks and is scored with the same rollouts, so it includes the noise
it selects on: in expectation an upper bound of LLM2's ceiling at this alpha for this model. The **split-half
oracle** (:func:`split_half_oracle`, on all points only) picks with half of each candidate's rollouts and is scored
with the other half: an unbiased gain of an oracle that knows half the rollouts, in expectation a lower bound of the
ceiling. **Pairwise accuracy** on candidate pairs of a point whose values differ significantly (two-sided Fisher
exact test on the rollout counts at level 0.05; ties in score count one half), with its Wilson interval. Every
number is also given on the points that **matter**: those with at least one significantly different pair among
their plausible candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from llm2_eval.jsonl import iter_jsonl
from llm2_eval.report.stats import wilson_interval
from llm2_eval.loading import resolve_dtype
from llm2_eval.verifier import load_verifier
from verifier_train.decisions.build import KIND, DecisionsError
from verifier_train.explore.significance import fisher_two_sided
from verifier_train.packing import PackedCollator, additive_mask, pack_solution
from verifier_train.train.loss import pair_scores

#: level of the two-sided Fisher test that makes a candidate pair "significantly different"
SIGNIFICANCE = 0.05


@dataclass
class Benchmark:
    """A loaded decision benchmark: ``settings`` (header), ``questions`` by id, ``points`` in file order."""

    path: str
    settings: dict[str, Any]
    questions: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)


def load_benchmark(path: str | Path) -> Benchmark:
    """Read a benchmark file.

    Raises:
        DecisionsError: a missing file, a file that is not a decision benchmark, or no point (file:line).
    """
    p = Path(path)
    if not p.is_file():
        raise DecisionsError(f"--benchmark {p}: no such file")
    bench = None
    for line, obj in iter_jsonl(p):
        if bench is None:
            if obj.get("kind") != KIND:
                raise DecisionsError(f"{p}:{line}: not a decision benchmark (no {KIND} header)")
            bench = Benchmark(str(p), obj.get("settings") or {})
        elif obj.get("type") == "question":
            bench.questions[obj["id"]] = obj
        elif obj.get("type") == "point":
            if obj.get("question") not in bench.questions:
                raise DecisionsError(f"{p}:{line}: point {obj.get('id')} of an unknown question")
            bench.points.append(obj)
    if bench is None or not bench.points:
        raise DecisionsError(f"{p}: holds no decision point yet (build it first)")
    return bench


def _q(c: dict[str, Any]) -> float:
    return c["correct"] / c["rollouts"] if c["rollouts"] else 0.0


def plausible(cands: Sequence[dict[str, Any]], alpha: float) -> list[int]:
    """Indices of the candidates with ``p >= alpha * p_max`` (the stored log-probabilities)."""
    top = max(c["logprob"] for c in cands)
    return [i for i, c in enumerate(cands) if c["logprob"] >= top + math.log(alpha) - 1e-9]


def significant_pairs(cands: Sequence[dict[str, Any]], among: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of ``among`` with ``q(i) > q(j)`` significantly (:func:`fisher_two_sided` < 0.05)."""
    out = []
    for x, i in enumerate(among):
        for j in among[x + 1:]:
            ci, cj = cands[i], cands[j]
            if fisher_two_sided(ci["correct"], ci["rollouts"], cj["correct"], cj["rollouts"]) < SIGNIFICANCE:
                out.append((i, j) if _q(ci) > _q(cj) else (j, i))
    return out


def split_half_oracle(points: Sequence[dict[str, Any]], alpha: float, splits: int = 20,
                      seed: int = 0) -> dict[str, float]:
    """Per point, the oracle gain without selection bias: each plausible candidate's ``n`` rollouts are split at
    random into halves of ``n // 2`` and ``n - n // 2`` (given ``c`` right of ``n``, the right ones in the first half
    follow the hypergeometric law), the candidate with the best value in the first half is picked (ties to the LLM's
    own token) and its gain over the LLM's token is read in the second half; averaged over ``splits`` seeded splits.
    In expectation this is the gain of an oracle that knows ``n // 2`` rollouts per candidate, so a lower bound of
    the true-value oracle's gain (the plain oracle, scored on the rollouts it picks with, is an upper bound). It is
    unbiased over a set of points chosen without the rollouts (all points), not over points selected by a test on
    them (the points that matter).

    Returns:
        ``{point id: mean gain}`` in units of q (0 for a point with a plausible candidate of fewer than 2 rollouts).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for p in points:
        cands = p["candidates"]
        narrow = plausible(cands, alpha)
        base = max(narrow, key=lambda i: cands[i]["logprob"])
        n = np.array([cands[i]["rollouts"] for i in narrow])
        c = np.array([cands[i]["correct"] for i in narrow])
        if (n < 2).any():
            out[p["id"]] = 0.0
            continue
        gains = []
        for _ in range(splits):
            first = rng.hypergeometric(c, n - c, n // 2)
            qa, qb = first / (n // 2), (c - first) / (n - n // 2)
            best = max(range(len(narrow)), key=lambda k: (qa[k], narrow[k] == base))
            gains.append(float(qb[best] - qb[narrow.index(base)]))
        out[p["id"]] = float(np.mean(gains))
    return out


def _ratio_interval(per_q: dict[str, list[float]], seed: int, resamples: int = 10_000) -> list[float]:
    """Percentile-bootstrap 95% interval of ``sum(values) / count`` resampling questions with replacement."""
    sums = np.array([sum(v) for v in per_q.values()], dtype=np.float64)
    counts = np.array([len(v) for v in per_q.values()], dtype=np.float64)
    if counts.sum() == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(resamples, len(sums)))
    c = counts[idx].sum(axis=1)
    stats = sums[idx].sum(axis=1) / np.where(c > 0, c, 1)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return [round(float(lo), 4), round(float(hi), 4)]


def _summary(values: dict[str, list[float]], seed: int) -> dict[str, Any]:
    n = sum(len(v) for v in values.values())
    mean = sum(sum(v) for v in values.values()) / n if n else float("nan")
    return {"mean": round(mean, 4), "ci95": _ratio_interval(values, seed), "points": n,
            "questions": sum(1 for v in values.values() if v)}


def evaluate(bench: Benchmark, scores: dict[str, list[float]] | None, betas: Sequence[float],
             seed: int = 0) -> dict[str, Any]:
    """The report of one verifier's ``scores`` (point id -> one score per stored candidate), or of the LLM alone
    (``scores`` None: the oracle and the benchmark's own numbers). See the module docstring for each number.

    Returns:
        ``{"points", "questions", "points_that_matter", "all": {...}, "matter": {...}}``; each part holds
        ``"oracle"``, ``"oracle_wide"``, ``"base_q"`` and, for the LLM alone under ``"all"``, ``"oracle_split"``
        (:func:`split_half_oracle`; not under ``"matter"``, whose points are chosen with the same rollouts); for a
        verifier ``"pairs"``, ``"betas": {beta: {...}}`` and, with a non-empty ``betas``, ``"best_beta"`` and
        ``"held_out_beta"``. ``"matter"`` is restricted to the points that matter.
    """
    alpha = float(bench.settings.get("alpha", 0.1))
    info = []  # (question, cands, narrow, base, matters)
    for p in bench.points:
        cands = p["candidates"]
        narrow = plausible(cands, alpha)
        base = max(narrow, key=lambda i: cands[i]["logprob"])
        info.append((p["question"], p["id"], cands, narrow, base, bool(significant_pairs(cands, narrow))))

    def collect(fn: Callable, only_matter: bool) -> dict[str, list[float]]:
        per_q: dict[str, list[float]] = {q: [] for q in bench.questions}
        for qid, pid, cands, narrow, base, matters in info:
            if only_matter and not matters:
                continue
            per_q[qid].append(fn(pid, cands, narrow, base))
        return per_q

    report: dict[str, Any] = {"points": len(info), "questions": len({i[0] for i in info}),
                              "points_that_matter": sum(1 for i in info if i[5])}
    split = split_half_oracle(bench.points, alpha, seed=seed) if scores is None else {}
    for tag, only in (("all", False), ("matter", True)):
        part: dict[str, Any] = {
            "oracle": _summary(collect(lambda pid, c, n, b: max(_q(c[i]) for i in n) - _q(c[b]), only), seed),
            "oracle_wide": _summary(collect(lambda pid, c, n, b: max(_q(x) for x in c) - _q(c[b]), only), seed),
            "base_q": _summary(collect(lambda pid, c, n, b: _q(c[b]), only), seed),
        }
        if scores is None and not only:
            part["oracle_split"] = _summary(collect(lambda pid, c, n, b: split[pid], only), seed)
        if scores is not None:
            part["pairs"] = _pair_accuracy(info, scores, only)
            part["betas"] = {}
            per_beta: dict[str, dict[str, list[float]]] = {}
            for beta in betas:
                def choice(pid, c, n, b, beta=beta):
                    s = scores[pid]
                    return max(n, key=lambda i: (c[i]["logprob"] + beta * s[i], i == b))
                per_beta[str(beta)] = collect(lambda pid, c, n, b: _q(c[choice(pid, c, n, b)]) - _q(c[b]), only)
                part["betas"][str(beta)] = {
                    "gain": _summary(per_beta[str(beta)], seed),
                    "greedy_gain": _summary(collect(
                        lambda pid, c, n, b: float(c[choice(pid, c, n, b)]["greedy_correct"]) - float(c[b]["greedy_correct"]),
                        only), seed),
                    "changed": _summary(collect(lambda pid, c, n, b: float(choice(pid, c, n, b) != b), only), seed)["mean"],
                }
            if part["betas"]:
                part["best_beta"] = max(part["betas"], key=lambda k: part["betas"][k]["gain"]["mean"])
                part["held_out_beta"] = held_out_beta_gain(per_beta, seed)
        report[tag] = part
    return report


def held_out_beta_gain(per_beta: dict[str, dict[str, list[float]]], seed: int = 0) -> dict[str, Any]:
    """The decision gain when beta is chosen without looking at the question it is applied to: for each question,
    the beta of the grid with the best mean gain over all *other* questions (leave one question out; ties go to the
    earlier beta of the grid), then that beta's gains on this question. Unlike the best beta's own gain, which is
    a maximum over the grid on the same points and so biased upwards, this estimates what choosing beta on
    held-out data yields (its bootstrap interval resamples questions but not the choice itself).

    Args:
        per_beta: ``{beta: {question: [gain per point]}}`` (the same questions and points under every beta).

    Returns:
        ``{"gain": {"mean", "ci95", "points", "questions"}, "chosen": {beta: questions it was chosen for}}``.
    """
    grid = list(per_beta)
    sums = {b: sum(sum(v) for v in per_beta[b].values()) for b in grid}
    total = sum(len(v) for v in per_beta[grid[0]].values())
    chosen: dict[str, list[float]] = {}
    counts = dict.fromkeys(grid, 0)
    for q, values in per_beta[grid[0]].items():
        if not values:
            chosen[q] = []
            continue
        rest = total - len(values)
        best = max(grid, key=lambda b: ((sums[b] - sum(per_beta[b][q])) / rest if rest else 0.0, -grid.index(b)))
        chosen[q] = per_beta[best][q]
        counts[best] += 1
    return {"gain": _summary(chosen, seed), "chosen": counts}


def _pair_accuracy(info: Sequence[tuple], scores: dict[str, list[float]], only_matter: bool) -> dict[str, Any]:
    right, n = 0.0, 0
    for _, pid, cands, _narrow, _, matters in info:
        if only_matter and not matters:
            continue
        for better, worse in significant_pairs(cands, list(range(len(cands)))):
            d = scores[pid][better] - scores[pid][worse]
            right += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
            n += 1
    if not n:
        return {"accuracy": None, "pairs": 0}
    ci = wilson_interval(right, n)
    return {"accuracy": round(right / n, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)], "pairs": n}


def _packed_reads(bench: Benchmark, read: Callable, batch: int) -> dict[str, list[Any]]:
    """``{point id: [read value per stored candidate]}``: all candidates of all points of one question go into ONE
    packed sequence (:func:`verifier_train.packing.pack_solution`: each candidate at the position id of the token it
    replaces, attending to the prefix and itself); ``read(collated batch) -> (at gold slots [B, P, ...], at negative
    slots [B, P, ...])``."""
    by_q: dict[str, list[dict]] = {}
    for p in bench.points:
        by_q.setdefault(p["question"], []).append(p)
    work = []
    for qid, pts in by_q.items():
        ids = bench.questions[qid]["token_ids"]
        samples, where = [], []
        for p in pts:
            for k, c in enumerate(p["candidates"]):
                if c["token"] != ids[p["pos"]]:
                    samples.append([p["pos"], ids[p["pos"]], c["token"]])
                    where.append((p, k))
        work.append((pack_solution(ids, samples), samples, where, pts))
    collate = PackedCollator()
    out: dict[str, list[Any]] = {p["id"]: [None] * len(p["candidates"]) for p in bench.points}
    with torch.inference_mode():
        for lo in range(0, len(work), batch):
            chunk = work[lo:lo + batch]
            gold, neg = read(collate([w[0] for w in chunk]))
            for row, (packed, samples, where, pts) in enumerate(chunk):
                own = {}
                order = sorted(range(len(samples)), key=lambda i: samples[i][0])  # pack order (stable by pos)
                for slot, i in enumerate(order):
                    p, k = where[i]
                    out[p["id"]][k] = neg[row, slot]
                    own[p["id"]] = gold[row, slot]
                for p in pts:
                    ids = bench.questions[p["question"]]["token_ids"]
                    for k, c in enumerate(p["candidates"]):
                        if c["token"] == ids[p["pos"]]:
                            out[p["id"]][k] = own[p["id"]]
    return out


def verifier_scores_on(bench: Benchmark, verifier: Any, *, batch: int = 4) -> dict[str, list[float]]:
    """A verifier's score of every stored candidate: ``{point id: [s(v) per candidate]}``, one packed forward per
    question (:func:`_packed_reads`).

    Args:
        bench: the benchmark.
        verifier: a loaded verifier (``logits[..., 0]`` are scores; :func:`llm2_eval.verifier.load_verifier`).
        batch: questions per forward.
    """
    device = next(verifier.parameters()).device
    reads = _packed_reads(bench, lambda b: pair_scores(verifier, {k: v.to(device) for k, v in b.items()}), batch)
    return {pid: [float(x) for x in v] for pid, v in reads.items()}


def candidate_hidden_states(bench: Benchmark, llm: Any, *, batch: int = 4) -> dict[str, Any]:
    """The LLM's last hidden state (after the final norm) at every stored candidate, ``{point id: [n, H]}``: what
    any head verifier on this LLM reads (:mod:`llm2_eval.head_verifier`), computed once for several heads."""
    backbone = getattr(llm, llm.base_model_prefix)
    dev, dtype = next(backbone.parameters()).device, next(backbone.parameters()).dtype

    def read(b):
        h = backbone(input_ids=b["input_ids"].to(dev), attention_mask=additive_mask(b["allowed"], dtype).to(dev),
                     position_ids=b["position_ids"].to(dev)).last_hidden_state.float().cpu()
        pick = lambda idx: torch.stack([h[r, idx[r]] for r in range(len(h))])  # noqa: E731
        return pick(b["gold_index"]), pick(b["neg_index"])

    return {pid: torch.stack(v) for pid, v in _packed_reads(bench, read, batch).items()}


def score_verifiers(bench: Benchmark, verifiers: Sequence[str], *, betas: Sequence[float], model: str | None = None,
                    dtype: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Load each verifier, score it on ``bench`` and evaluate it (:func:`evaluate`); ``"llm"`` holds the
    LLM-only numbers (oracle gains, the benchmark's size).

    Raises:
        DecisionsError: a verifier that cannot be loaded (its message, one line).
    """
    report: dict[str, Any] = {"benchmark": bench.path, "settings": bench.settings,
                              "llm": evaluate(bench, None, betas, seed), "verifiers": {}}
    llm = None
    if model:
        llm = AutoModelForCausalLM.from_pretrained(model, dtype=resolve_dtype(dtype)).eval()
    for v in verifiers:
        try:
            ver = load_verifier(v, dtype=dtype if dtype != "auto" else None, llm=llm)
        except (OSError, ValueError) as err:
            raise DecisionsError(f"--verifier {v}: {str(err).splitlines()[0]}") from err
        report["verifiers"][v] = evaluate(bench, verifier_scores_on(bench, ver), betas, seed)
        del ver
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`score_verifiers`' report (gains in points of q, i.e. x100)."""
    llm = report["llm"]
    lines = [f"decision benchmark {report['benchmark']}: {llm['points']} points of {llm['questions']} questions "
             f"({llm['points_that_matter']} that matter)"]
    for tag in ("all", "matter"):
        o, w, h = llm[tag]["oracle"], llm[tag]["oracle_wide"], llm[tag].get("oracle_split")
        split = f"split-half {100 * h['mean']:+.1f} {_ci(h)}, " if h else ""
        lines.append(f"  [{tag}] oracle gain {100 * o['mean']:+.1f} {_ci(o)}, wide {100 * w['mean']:+.1f} {_ci(w)}, "
                     f"{split}q(LLM's choice) {100 * llm[tag]['base_q']['mean']:.1f}")
    for name, r in report["verifiers"].items():
        lines.append(f"verifier {name}")
        for tag in ("all", "matter"):
            part = r[tag]
            pa = part["pairs"]
            acc = f"{pa['accuracy']:.3f} [{pa['ci95'][0]:.3f}, {pa['ci95'][1]:.3f}] on {pa['pairs']} pairs" \
                if pa["accuracy"] is not None else "no significant pair"
            lines.append(f"  [{tag}] pairwise accuracy {acc}; best beta {part.get('best_beta')}")
            if "held_out_beta" in part:
                h = part["held_out_beta"]["gain"]
                lines.append(f"    beta chosen on the other questions: gain {100 * h['mean']:+.2f} {_ci(h)}")
            for beta, m in part["betas"].items():
                lines.append(f"    beta {beta:>5}: gain {100 * m['gain']['mean']:+.2f} {_ci(m['gain'])}  greedy-continuation "
                             f"{100 * m['greedy_gain']['mean']:+.2f} {_ci(m['greedy_gain'])}  changed {100 * m['changed']:.1f}%")
    return "\n".join(lines)


def _ci(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo == lo else "[n/a]"
