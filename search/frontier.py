"""The efficient frontier and its files: frontier.csv, frontier.json, frontier.png, best.json."""
from __future__ import annotations

import csv
import json
import math
import os
import textwrap
from pathlib import Path
from typing import Sequence

from search.problem import Candidate, Formulation, pareto_front

CSV_COLUMNS = ["arch", "estimated_accuracy", "predicted_ms", "predicted_low_ms", "predicted_high_ms",
               "raw_predicted_ms", "measured_ms", "dropped", "generation", "params", "memory_mb", "encoding"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def frontier_points(cands: Sequence[Candidate]) -> list[Candidate]:
    """The frontier on the best latency known (measured where verified), plus every verified
    finalist (kept, with its measurement and the reason it was dropped, if it was)."""
    front = pareto_front(cands, use_measured=True)
    keys = {c.key for c in front}
    extra = [c for c in cands if c.measured_ms is not None and c.key not in keys]
    return sorted(front + extra, key=lambda c: c.latency_ms)


def write_frontier(out: Path, cands: Sequence[Candidate], meta: dict) -> list[Candidate]:
    pts = frontier_points(cands)
    rows = [c.to_dict() for c in pts]
    with open(out / "frontier.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            r = dict(r)
            r["encoding"] = " ".join(f"{x:g}" for x in r["encoding"])
            r["measured_ms"] = "" if r["measured_ms"] is None else r["measured_ms"]
            r["dropped"] = r["dropped"] or ""
            r["params"] = "" if r["params"] is None else r["params"]
            r["memory_mb"] = "" if r["memory_mb"] is None else r["memory_mb"]
            w.writerow({k: r[k] for k in CSV_COLUMNS})
    os.replace(out / "frontier.csv.tmp", out / "frontier.csv")
    _atomic_write(out / "frontier.json", json.dumps({**meta, "frontier": rows}, indent=2))
    return pts


def plot_frontier(path: Path, cands: Sequence[Candidate], formulation: Formulation,
                  best: Candidate | None, title: str, accuracy_label: str,
                  baseline: tuple[str, Candidate] | None = None, known: Sequence[tuple] = ()) -> None:
    """The candidates, the frontier, the verified finalists and the choice; with ``baseline``
    (name, candidate) the baseline and the chosen network's speed-up over it, and ``known``
    ((name, predicted ms, published top-1, dataset), ...) as ticks on the latency axis."""
    # lazy: loads matplotlib (slow to import) only when this runs
    import matplotlib
    matplotlib.use("Agg")
    # lazy: loads matplotlib (slow to import) only when this runs
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    xs = [c.predicted_ms for c in cands]
    ys = [c.accuracy for c in cands]
    ax.scatter(xs, ys, s=9, c="#9aa5b1", alpha=0.6, label=f"candidates ({len(cands)})", zorder=1)
    front = pareto_front(cands, use_measured=True)
    if front:
        ax.step([c.latency_ms for c in front], [c.accuracy for c in front], where="post",
                color="#1f77b4", lw=1.6, label=f"frontier ({len(front)})", zorder=2)
        ax.scatter([c.latency_ms for c in front], [c.accuracy for c in front], s=18, color="#1f77b4", zorder=3)
    verified = [c for c in cands if c.measured_ms is not None]
    for c, ms in ((c, c.measured_ms) for c in verified):
        if ms is None:  # verified ones have a measurement (the type does not say so)
            continue
        col = "#d62728" if c.dropped else "#2ca02c"
        ax.annotate("", xy=(ms, c.accuracy), xytext=(c.predicted_ms, c.accuracy),
                    arrowprops=dict(arrowstyle="->", color=col, lw=1.3), zorder=4)
        ax.scatter([ms], [c.accuracy], marker="D", s=36, color=col, zorder=5)
    # one legend entry per colour, each drawn with its own colour (the first verified point could be a
    # dropped one, and its red then labelled "verified")
    if any(not c.dropped for c in verified):
        ax.scatter([], [], marker="D", color="#2ca02c", label="verified: predicted → measured")
    if any(c.dropped for c in verified):
        ax.scatter([], [], marker="D", color="#d62728", label="dropped (measured over budget)")
    if formulation.latency_budget_ms is not None:
        ax.axvline(formulation.latency_budget_ms, color="#ff7f0e", ls="--", lw=1.2,
                   label=f"budget {formulation.latency_budget_ms:g} ms")
    if formulation.min_accuracy is not None:
        ax.axhline(formulation.min_accuracy, color="#ff7f0e", ls="--", lw=1.2,
                   label=f"min accuracy {formulation.min_accuracy:g}")
    if best is not None:
        ax.scatter([best.latency_ms], [best.accuracy], marker="*", s=220, color="gold",
                   edgecolor="black", zorder=6, label="chosen")
    if baseline is not None:
        name, b = baseline
        ax.scatter([b.latency_ms], [b.accuracy], marker="s", s=70, color="black", zorder=6,
                   label=f"baseline {name} ({'measured' if b.measured_ms is not None else 'predicted'})")
        if best is not None and best.key != b.key:
            how = "measured" if b.measured_ms is not None and best.measured_ms is not None else "predicted"
            ax.annotate(f"{b.latency_ms / best.latency_ms:.2f}x faster ({how})", xy=(best.latency_ms, best.accuracy),
                        xytext=(b.latency_ms, b.accuracy), fontsize=8, ha="left", va="top",
                        arrowprops=dict(arrowstyle="->", color="black", lw=1.0, ls=":"), zorder=6)
    if known:
        # lazy: loads matplotlib (slow to import) only when this runs
        import matplotlib.transforms as mtransforms
        trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        for i, (name, ms, top1, dataset) in enumerate(known):
            ax.plot([ms, ms], [0, 0.05], color="#8c564b", lw=1.2, transform=trans, zorder=2,
                    label="known models at this resolution (predicted ms; published top-1)" if i == 0 else None)
            ax.text(ms, 0.06 + 0.05 * (i % 3), f"{name} {top1:g}%", transform=trans, fontsize=6.5, rotation=0,
                    ha="center", color="#8c564b")
    ax.set_xlabel("latency (ms): predicted for candidates, measured for verified finalists")
    ax.set_ylabel(accuracy_label)
    ax.set_title("\n".join(textwrap.wrap(title, 95)), fontsize=10)  # a long constraint ran off the figure
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best" if known else "lower right")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_best(out: Path, best: Candidate | None, space_name: str, meta: dict) -> None:
    if best is None:
        data = {"space": space_name, "arch": None, **meta}
    else:
        data = {"space": space_name, "arch": best.key,
                "estimated_accuracy": best.accuracy,
                "predicted_ms": best.predicted_ms,
                "predicted_interval_ms": [best.low_ms, best.high_ms],
                "raw_predicted_ms": best.raw_predicted_ms,
                "measured_ms": best.measured_ms,
                "verified": best.measured_ms is not None,
                **meta}
    _atomic_write(out / "best.json", json.dumps(data, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


__all__ = ["CSV_COLUMNS", "frontier_points", "plot_frontier", "write_best", "write_frontier"]
