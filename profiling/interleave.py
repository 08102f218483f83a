"""Interleaved measurement: a batch of models timed round-robin, a short slice each per pass.

    from profiling.interleave import measure_interleaved      # also profiling.measure.measure_interleaved
    answers = measure_interleaved(conn, jobs, passes=8, slice_s=0.25)

A machine that changes speed under the measurement (a VM that switches speed level for seconds
at a time, a phone or a Jetson under DVFS) puts a configuration measured to its own confidence
interval, one after another, in whatever level held at that moment. Interleaved, each job of a
batch is timed for a short slice in every pass, and its value is the median of its pass medians:
a slow spell moves one pass of every job a little instead of a few jobs a lot.
"""
from __future__ import annotations

import itertools
import os
import statistics
from typing import Any, Callable, Sequence

from .errors import ProfilingError
from .device_runner import median_ci

# Interleaving for whole models: 8 passes of at least 0.25 s (and 3 runs) each. Issue 13's
# measurement on the 2-core AMD EPYC VM (no AVX-512): two such measurements of 64 real models
# agreed within ±10% for 94% of them, one model after another (3 s each) for 45%.
MODEL_PASSES, MODEL_SLICE_S = 8, 0.25
SLICE_MIN_RUNS = 3
_batch_ids = itertools.count()


def slice_rule(slice_s: float, min_runs: int = SLICE_MIN_RUNS, first: bool = True) -> dict[str, Any]:
    """The runner stopping rule of one interleaved slice: `slice_s` seconds and at least `min_runs`
    timed runs, no confidence-interval stop (the passes make the estimate). The first pass warms the
    session up as a single measurement would; later passes run it once untimed to refill caches."""
    return {"warmup_runs": 5 if first else 1, "warmup_s": 0.05 if first else 0.0, "min_runs": min_runs,
            "hard_min_runs": min_runs, "min_s": slice_s, "max_s": slice_s, "max_runs": 1_000_000,
            "ci_target": -1.0, "round": 1_000_000}


def combine_passes(passes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One job's statistics from its per-pass statistics: the median of the pass medians (p10, p90
    likewise), the mean of the pass means, the runs summed, `ci_rel` the relative half-width of the
    95% order-statistics interval of the pass medians, and the pass medians themselves (`pass_ms`)."""
    meds = [float(p["median_ms"]) for p in passes]
    med = statistics.median(meds)
    lo, hi = median_ci(sorted(meds))
    return {"median_ms": med,
            "p10_ms": statistics.median(float(p.get("p10_ms", p["median_ms"])) for p in passes),
            "p90_ms": statistics.median(float(p.get("p90_ms", p["median_ms"])) for p in passes),
            "mean_ms": statistics.fmean(float(p.get("mean_ms", p["median_ms"])) for p in passes),
            "min_ms": min(float(p.get("min_ms", p["median_ms"])) for p in passes),
            "runs": sum(int(p.get("runs", 0)) for p in passes),
            "ci_rel": max(med - lo, hi - med) / med if med > 0 else float("inf"),
            "passes": len(passes), "pass_ms": meds}


def measure_interleaved(conn, jobs: Sequence[dict[str, Any]], *, passes: int = MODEL_PASSES,
                        slice_s: float | Sequence[float] = MODEL_SLICE_S, min_runs: int = SLICE_MIN_RUNS,
                        on_pass: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Measure a batch of runner jobs interleaved: `passes` round-robin passes over the batch, each
    job timed for `slice_s` seconds (one value, or one per job) and at least `min_runs` runs per pass.

    `conn` is a started runner (`connect`, `profiling.transport.local_runner`); `jobs` are runner
    `measure` payloads (`model_job`, or the profiler's) with their `session`. Each pass starts one
    job later than the one before, so no job always follows the same neighbour. Returns one answer
    per job, in order, shaped like the runner's own: `{"ok": True, "id", "stats"}` with the
    statistics of `combine_passes` (`stats["pass_ms"]` has the pass medians), or `{"ok": False,
    "error"}` for a job the runner could not run (it is dropped from the later passes). The
    sessions live in the runner for the batch only. `on_pass(done, passes)` follows each pass.
    """
    if passes < 1:
        raise ProfilingError(f"passes must be at least 1, not {passes}")
    slices = [float(slice_s)] * len(jobs) if isinstance(slice_s, (int, float)) else [float(x) for x in slice_s]
    if len(slices) != len(jobs) or any(not x > 0 for x in slices):
        raise ProfilingError("slice_s must be one positive number or one per job")
    batch = next(_batch_ids)
    keys = [f"interleave-{os.getpid()}-{batch}-{i}" for i in range(len(jobs))]
    seen: list[list[dict[str, Any]]] = [[] for _ in jobs]
    failed: dict[int, dict[str, Any]] = {}
    n = len(jobs)
    try:
        for p in range(passes):
            for step in range(n):
                i = (p + step) % n
                if i in failed:
                    continue
                job = jobs[i]
                if p == 0:
                    msg = dict(job, cache_key=keys[i], stop=slice_rule(slices[i], min_runs, first=True))
                else:  # the runner has the session: send only the key
                    msg = {"id": job.get("id"), "cache_key": keys[i], "stop": slice_rule(slices[i], min_runs, first=False)}
                    if "delay_ms" in job:
                        msg["delay_ms"] = job["delay_ms"]
                ans = conn.measure(msg)
                if not ans.get("ok"):
                    failed[i] = {"ok": False, "id": job.get("id"), "error": ans.get("error")}
                    continue
                seen[i].append(ans["stats"])
            if on_pass:
                on_pass(p + 1, passes)
    finally:
        try:
            conn.forget(keys)
        except ProfilingError:
            pass  # a runner that died has nothing to forget
    return [failed[i] if i in failed else {"ok": True, "id": jobs[i].get("id"), "stats": combine_passes(seen[i])}
            for i in range(n)]


__all__ = ["measure_interleaved", "combine_passes", "slice_rule", "MODEL_PASSES", "MODEL_SLICE_S", "SLICE_MIN_RUNS"]
