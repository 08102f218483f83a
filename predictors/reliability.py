"""How far to trust a prediction of an ONNX model: fallbacks and extrapolation widen its interval.

A prediction is the sum of kernel predictions, corrected at the graph level; its 80% interval
is the graph correction's conformal interval. Two parts of a model are predicted with less
knowledge than that interval assumes, and widen it here:

- **Unknown ops** (outside the kernel vocabulary) are estimated by the roofline fallback
  (`t0 + bytes * a + flops * b`). Fitted on the table's own kernels, the roofline's 80% log
  interval is about [-0.23, +1.72] (it underestimates most kernels, some by 5x and more:
  measured on the shipped AMD table, [-0.24, +2.36] on the Intel one). Each unknown op's
  estimate adds its own interval to the model's: est * (1 - e^q0) below, est * (e^q1 - 1) above.
- **Extrapolated kernels**, whose FLOPs or bytes lie outside the range of their kind in the
  table, add their kind's kernel interval stretched by how far outside they lie (one more
  interval width per factor e beyond the range).

The additions are summed (the errors of one model's fallbacks are not independent: one op
type recurs), scaled by the graph correction (prediction / kernel sum) and added to the graph
interval. A prediction whose fallback estimates hold more than `UNRELIABLE_SHARE` of its kernel
sum is marked unreliable, in words, and every unknown op is named with its share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: share of a model's kernel sum held by fallback estimates above which a prediction is unreliable
UNRELIABLE_SHARE = 0.30
#: the roofline fallback's 80% log interval when a predictor file does not record its own
#: (files written before it did): the shipped AMD table's, rounded out (Intel's upper end is 2.36)
DEFAULT_FALLBACK_LOG_INTERVAL = (-0.25, 2.0)


@dataclass
class Reliability:
    """What a prediction rests on: shares of its kernel sum and the interval's widening."""
    fallback_share: float
    extrapolated_share: float
    low_extra_ms: float
    high_extra_ms: float
    unreliable: bool
    note: str
    unknown_by_type: dict[str, dict[str, Any]] = field(default_factory=dict)


def extrapolation(log_flops: float, log_bytes: float, rng: list[float] | None) -> float:
    """How far (in natural-log units) a kernel's FLOPs or bytes lie outside its kind's table range
    `rng` = [min log FLOPs, max log FLOPs, min log bytes, max log bytes]; 0 inside or without a range."""
    if not rng:
        return 0.0
    f0, f1, b0, b1 = rng
    return float(max(0.0, f0 - log_flops, log_flops - f1, b0 - log_bytes, log_bytes - b1))


def assess(kernel_sum_ms: float, unknown: list[dict[str, Any]],
           fallback_log_interval: tuple[float, float] | list[float] | None, extrapolated: list[tuple[float, float, float, float]],
           unreliable_share: float = UNRELIABLE_SHARE) -> Reliability:
    """The widening and the verdict for one model.

    unknown: the unknown ops (dicts with `op_type` and `estimate_ms`); their `share` of the kernel
    sum is written into each. extrapolated: (ms, distance, kernel q0, kernel q1) per kernel outside
    its kind's range."""
    total = max(float(kernel_sum_ms), 1e-12)
    q0, q1 = fallback_log_interval or DEFAULT_FALLBACK_LOG_INTERVAL
    fb = 0.0
    by_type: dict[str, dict[str, Any]] = {}
    for u in unknown:
        est = float(u["estimate_ms"])
        u["share"] = est / total
        fb += est
        t = by_type.setdefault(u["op_type"], {"count": 0, "estimate_ms": 0.0})
        t["count"] += 1
        t["estimate_ms"] += est
    for t in by_type.values():
        t["share"] = t["estimate_ms"] / total
    low = fb * (1 - math.exp(q0))
    high = fb * (math.exp(q1) - 1)
    ext = 0.0
    for ms, dist, k0, k1 in extrapolated:
        ext += ms
        stretch = 1.0 + dist
        low += ms * (1 - math.exp(min(k0, 0.0) * stretch))
        high += ms * (math.exp(max(k1, 0.0) * stretch) - 1)
    fshare, eshare = fb / total, ext / total
    unreliable = fshare > unreliable_share
    parts = []
    if unknown:
        worst = sorted(by_type.items(), key=lambda kv: -kv[1]["estimate_ms"])
        ops = ", ".join(f"{op} x{v['count']} {v['share']:.0%}" for op, v in worst[:5])
        parts.append(f"{fshare:.0%} of the kernel time is estimated by the roofline fallback for "
                     f"{len(unknown)} op(s) outside the kernel vocabulary ({ops})")
    if extrapolated:
        parts.append(f"{eshare:.0%} comes from {len(extrapolated)} kernel(s) outside the table's range")
    note = "; ".join(parts)
    if unreliable:
        note = (f"UNRELIABLE: {note}: more than {unreliable_share:.0%} rests on fallbacks; profile these ops "
                "(profile-device) or treat the figure as a rough guess")
    return Reliability(fshare, eshare, low, high, unreliable, note, by_type)


def kind_ranges(stats: np.ndarray, kinds: list[str]) -> dict[str, list[float]]:
    """Per kind, [min log FLOPs, max log FLOPs, min log bytes, max log bytes] of table rows
    (`stats` columns as `features.spec_stats`: FLOPs first, bytes third)."""
    out = {}
    kinds_arr = np.asarray(kinds)
    lf, lb = np.log(np.maximum(stats[:, 0], 1.0)), np.log(np.maximum(stats[:, 2], 1.0))
    for k in sorted(set(kinds)):
        m = kinds_arr == k
        out[k] = [float(lf[m].min()), float(lf[m].max()), float(lb[m].min()), float(lb[m].max())]
    return out


__all__ = ["assess", "extrapolation", "kind_ranges", "Reliability", "UNRELIABLE_SHARE",
           "DEFAULT_FALLBACK_LOG_INTERVAL"]
