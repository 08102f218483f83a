"""The known models on a target: predicted (or measured) latency against published top-1.

    rows = known_model_rows(predictor)                        # predicted, every registry model
    rows = known_model_rows(predictor, device=RunnerDevice(target))   # and measured
    plot_known_frontier(rows, "known_models.png", "local-cpu")

A model is *dominated* when another model with a top-1 on the same dataset is at least as
accurate and at least as fast (strictly better in one): the chart a user looks at before
choosing where to start.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from search.spaces.known import KnownModel, list_known
from search.memory import skeleton_memory
from search.spaces.skeleton import build_network, skeleton_specs
from search.spaces.base import export_model_onnx
import torch


@dataclass
class KnownRow:
    name: str
    family: str
    top1: float
    dataset: str
    source: str
    resolution: int
    params: int                   # inference graph (BatchNorm folded)
    memory_mb: float              # peak activations + weights, batch 1, float32
    predicted_ms: float | None = None
    predicted_low_ms: float | None = None
    predicted_high_ms: float | None = None
    measured_ms: float | None = None
    dominated: bool = False

    @property
    def latency_ms(self) -> float | None:
        return self.measured_ms if self.measured_ms is not None else self.predicted_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "latency_ms": self.latency_ms}


def known_model_rows(predictor=None, device=None, models: Sequence[KnownModel] | None = None,
                     resolution: int | None = None, num_classes: int | None = None, in_channels: int | None = None,
                     log: Callable[[str], None] | None = None) -> list[KnownRow]:
    """One row per model: its published figures, params and memory, the predictor's latency (when
    given) and the device's measured latency (when ``device`` is given: anything with
    ``measure_onnx(bytes) -> ms``, e.g. `search.verify.RunnerDevice`). Sizes are the models'
    published ones unless ``resolution``/``num_classes``/``in_channels`` are given."""
    models = list(models) if models is not None else list_known()
    sks = [km.skeleton(num_classes, in_channels, resolution) for km in models]
    rows = []
    for km, sk in zip(models, sks):
        mem = skeleton_memory(sk)
        rows.append(KnownRow(km.name, km.family, km.top1, km.dataset, km.source, sk.resolution, mem.params,
                             round(mem.total_mb, 3)))
    if predictor is not None:
        med, lo, hi = predictor.predict_specs([skeleton_specs(sk) for sk in sks])
        for r, m, l, h in zip(rows, med, lo, hi):
            r.predicted_ms, r.predicted_low_ms, r.predicted_high_ms = float(m), float(l), float(h)
    if device is not None:
        for i, (r, sk) in enumerate(zip(rows, sks)):
            torch.manual_seed(0)
            onnx_bytes = export_model_onnx(build_network(sk), (sk.in_channels, sk.resolution, sk.resolution))
            r.measured_ms = float(device.measure_onnx(onnx_bytes))
            if log:
                log(f"measured {r.name} ({i + 1}/{len(rows)}): {r.measured_ms:.3f} ms")
    mark_dominated(rows)
    return rows


def mark_dominated(rows: Sequence[KnownRow]) -> None:
    for r in rows:
        r.dominated = r.latency_ms is not None and any(
            o is not r and o.dataset == r.dataset and o.latency_ms is not None
            and o.top1 >= r.top1 and o.latency_ms <= r.latency_ms
            and (o.top1 > r.top1 or o.latency_ms < r.latency_ms) for o in rows)


def plot_known_frontier(rows: Sequence[KnownRow], path: str | Path, title: str) -> None:
    """Latency (log axis) against published top-1, one panel per dataset; frontier models joined,
    dominated ones hollow and grey."""
    # lazy: loads matplotlib (slow to import) only when this runs
    import matplotlib
    matplotlib.use("Agg")
    # lazy: loads matplotlib (slow to import) only when this runs
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    datasets = sorted({r.dataset for r in rows if r.latency_ms is not None})
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6.5 * max(1, len(datasets)), 4.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        pts = [r for r in rows if r.dataset == ds and r.latency_ms is not None]
        front = sorted((r for r in pts if not r.dominated), key=lambda r: r.latency_ms or 0.0)  # all set (pts)
        ax.plot([r.latency_ms for r in front], [r.top1 for r in front], "-", color="tab:blue", lw=1, zorder=1)
        for r in pts:
            style = dict(facecolors="none", edgecolors="grey") if r.dominated else dict(color="tab:blue")
            ax.scatter([r.latency_ms], [r.top1], s=36, zorder=2, **style)
            ax.annotate(r.name, (r.latency_ms, r.top1), fontsize=7, xytext=(4, 3), textcoords="offset points",
                        color="grey" if r.dominated else "black")
        measured = all(r.measured_ms is not None for r in pts)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{'measured' if measured else 'predicted'} latency (ms, batch 1)")
        ax.set_ylabel(f"published top-1 on {ds} (%)")
        ax.set_title(f"{ds} models at {', '.join(sorted({str(r.resolution) for r in pts}))} px "
                     f"(hollow: dominated)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["KnownRow", "known_model_rows", "mark_dominated", "plot_known_frontier"]
