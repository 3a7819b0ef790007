"""The report as a plot: accuracy against token forwards per question, one panel per task family."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from llm2_eval.report.row import METHODS, ReportRow

_STYLE = {
    "greedy": ("o", "tab:blue"),
    "LLM2": ("s", "tab:orange"),
    "maj@k": ("^", "tab:green"),
    "LLM2+maj@k": ("D", "tab:red"),
    "sample": ("v", "tab:purple"),
    "LLM2+sample": ("P", "tab:brown"),
}


def plot_accuracy_vs_compute(rows: Sequence[ReportRow], path: str | Path) -> Path:
    """Save a PNG of accuracy (%) against token forwards per question (LLM + verifier), one panel per task
    family, one marker/colour per method, each point labelled with its run name. Estimated compute is drawn
    hollow; an LLM2 run without trace (verifier forwards unknown) is drawn at its LLM forwards, marked ">=".
    Error bars: the accuracy's 95% interval (``ReportRow.accuracy_ci``); with a baseline, labels add the paired
    difference in points (``run (LLM2, Δ+3.0)``).
    The x axis is logarithmic when the largest value is more than 20 times the smallest.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    families = sorted({r.family for r in rows}) or ["(no runs)"]
    fig, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), 4.8), squeeze=False)
    drawn = [_draw_panel(ax, family, [r for r in rows if r.family == family]) for ax, family in zip(axes[0], families)]
    used = [r for panel in drawn for r in panel]
    handles = _legend_handles(used)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    any_interval = any(r.accuracy_ci is not None for r in used)
    fig.suptitle("Accuracy vs compute" + (" (error bars: 95% intervals over questions)" if any_interval else ""))
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def _points(rows: Sequence[ReportRow]) -> list[tuple[float, float, ReportRow, bool]]:
    """``(token forwards per question, accuracy %, row, lower bound)`` of the rows that have both numbers; a row
    whose verifier forwards are unknown is placed at its LLM forwards (a lower bound)."""
    points = []
    for r in rows:
        total = r.total_token_forwards
        x = r.per_question(total if total is not None else r.llm_token_forwards)
        if x is None or r.accuracy is None or x <= 0:
            continue
        points.append((x, 100 * r.accuracy, r, total is None))
    return points


def _draw_panel(ax, family: str, rows: Sequence[ReportRow]) -> list[ReportRow]:
    """One task family's panel: its points, error bars, labels and axes; returns the rows drawn."""
    points = _points(rows)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    log_x = bool(xs) and max(xs) / min(xs) > 20
    if log_x:
        ax.set_xscale("log")

    def pos(x: float) -> float:
        return math.log(x) if log_x else x

    # stagger the labels of points that (nearly) coincide, so that none hides another
    x_span = (pos(max(xs)) - pos(min(xs))) if xs else 0.0
    y_span = (max(ys) - min(ys)) if ys else 0.0
    placed: list[tuple[float, float]] = []
    for x, y, r, lower_bound in points:
        near = sum(abs(pos(x) - px) <= 0.04 * (x_span or 1.0) and abs(y - py) <= 0.04 * (y_span or 1.0)
                   for px, py in placed)
        placed.append((pos(x), y))
        _draw_point(ax, x, y, r, lower_bound, near)
    if xs:
        lo, hi = min(xs), max(xs)
        if log_x:
            ax.set_xlim(lo / 1.6, hi * 2.5)
        else:
            span = (hi - lo) or hi
            ax.set_xlim(max(0.0, lo - 0.15 * span), hi + 0.45 * span)
    else:
        ax.text(0.5, 0.5, "no run with accuracy and compute", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(family)
    ax.set_xlabel("token forwards per question (LLM + verifier)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    return [p[2] for p in points]


def _draw_point(ax, x: float, y: float, r: ReportRow, lower_bound: bool, near: int) -> None:
    """One run's marker (hollow when its compute is estimated), its 95% error bar and its label (moved down by
    ``near`` lines when as many points lie close by)."""
    marker, color = _STYLE.get(r.method, ("x", "black"))
    ax.scatter([x], [y], marker=marker, s=64, linewidths=1.6, edgecolors=color,
               facecolors="none" if r.estimated else color, zorder=3)
    if r.accuracy_ci is not None:
        ax.errorbar([x], [y], yerr=[[max(0.0, y - 100 * r.accuracy_ci.low)], [max(0.0, 100 * r.accuracy_ci.high - y)]],
                    fmt="none", ecolor=color, elinewidth=1.1, capsize=3, alpha=0.8, zorder=2)
    vs = ", baseline" if r.is_baseline else "" if r.paired is None else f", Δ{100 * r.paired.difference:+.1f}"
    text = f"{r.run} ({r.label}{vs})" + (" >=" if lower_bound else "")
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 5 - 11 * near), fontsize=8)


def _legend_handles(drawn: Sequence[ReportRow]) -> list:
    """Legend entries: one per method drawn (in :data:`METHODS` order), and the hollow marker of estimated compute."""
    from matplotlib.lines import Line2D

    used = {r.method for r in drawn}
    handles = [Line2D([], [], marker=_STYLE[m][0], color=_STYLE[m][1], linestyle="", label=m)
               for m in METHODS if m in used]
    if any(r.estimated for r in drawn):
        handles.append(Line2D([], [], marker="o", color="gray", markerfacecolor="none", linestyle="",
                              label="estimated compute"))
    return handles
