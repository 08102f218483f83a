"""Benchmark of the Ray paths (issue 17's targets) on a private local Ray cluster.

    python -m scripts.bench_ray [--configs 40] [--cells 1000] [--json out.json]

Three measurements, each on a fresh `ray.init` cluster of this machine's cores:

- overhead: the same profile (same seed, so the same configurations, fixed-work stopping rule)
  through the single-process path and through one Ray device actor on this machine; per
  configuration, from the profiler's `start` event to its `end` (cluster and actor start-up
  excluded: they happen once). Target: Ray at most 5% slower.
- throughput scaling: the same profile through two device actors (one per core, each runner
  one thread) vs one; configurations per minute. Target: at least 1.8x.
- evaluation scaling: proxy scores (the search's default ensemble, on the digits batch the
  search uses) of `--cells` random NB201 cells as Ray tasks on two workers vs one, after the
  workers are warm. Target: at least 1.8x.

The scaling figures need both cores quiet: run it under the exclusive CPU lock, without
`taskset` (which would put both workers on one core).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click

# every configuration does the same work whichever path measures it: 0.15 s of timed runs (the
# confidence-interval rule is off), so per-configuration times compare
FIXED_WORK = {"max_s": 0.15, "warmup_runs": 5, "warmup_s": 0.02, "ci_target": 0.0, "max_runs": 100000}
# Each runner's first sentinel baseline stays (both paths take it); the periodic checks and the
# drift re-measurement go: on this VM a speed-level switch re-measures configurations, and two runs
# of the same path measured 0.22 and 1.12 s per configuration (the span measured the drift rule).
NO_DRIFT = {"sentinel_every": 10**9, "sentinel_every_s": float("inf"), "drift_threshold": 1e9}
KINDS = ["conv", "pool", "softmax", "elementwise", "layernorm", "activation", "linear"]


def _profile(ray_mod, slots: int | None, configs: int, seed: int, passes: int) -> dict:
    """One profile; `slots` device actors on a private cluster (None: the single-process path)."""
    from profiling.fleet import device_resource
    from profiling.profiler import Profiler
    marks: dict[str, float] = {}

    def progress(event, **info):
        if event in ("start", "end"):
            marks[event] = time.perf_counter()

    if slots is not None:
        ray_mod.init(num_cpus=2, resources={device_resource("local-cpu"): slots}, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as d:
            s = Profiler("local-cpu", Path(d) / "t.parquet", kinds=KINDS, max_configs=configs, networks=0,
                         stop_rule=FIXED_WORK, seed=seed, passes=passes, progress=progress,
                         ray_address=None if slots is None else "", **NO_DRIFT).run()
    finally:
        if slots is not None:
            ray_mod.shutdown()
    span = marks["end"] - marks["start"]
    return {"path": "single process" if slots is None else f"ray, {slots} device actor(s)", "rows": s.rows_new,
            "seconds": round(span, 2), "s_per_config": round(span / s.rows_new, 4),
            "configs_per_min": round(60 * s.rows_new / span, 1), "hosts": s.hosts}


def _evaluation(ray_mod, cells: int, workers: int, chunk: int) -> dict:
    import numpy as np
    from search import wiring
    from search.accuracy.estimator import FeatureJob, compute_features
    from search.accuracy.tasks import RayPool
    from search.run import DEFAULT_PROXIES
    data = wiring.load_data("digits", seed=0)
    space = wiring.make_space("nb201", data)
    x, y = data.train.batch(min(64, len(data.train)), seed=0)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(cells)]
    job = FeatureJob(space, x, y, list(DEFAULT_PROXIES), 0)
    ray_mod.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        pool = RayPool("", max_workers=workers, chunk=chunk)
        list(pool.map(compute_features, archs[:2 * workers * chunk], job))  # start every worker (imports) first
        t = time.perf_counter()
        n = sum(1 for _ in pool.map(compute_features, archs, job))
        span = time.perf_counter() - t
    finally:
        ray_mod.shutdown()
    return {"workers": workers, "cells": n, "seconds": round(span, 2), "cells_per_s": round(n / span, 2)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--configs", type=click.IntRange(min=4), default=40, show_default=True,
              help="Configurations per profile (overhead and throughput).")
@click.option("--cells", type=click.IntRange(min=10), default=1000, show_default=True,
              help="NB201 cells scored per evaluation run.")
@click.option("--chunk", type=click.IntRange(min=1), default=10, show_default=True, help="Cells per Ray task.")
@click.option("--passes", type=click.IntRange(min=1), default=1, show_default=True,
              help="The profiler's interleaved passes per configuration (1: one after the other).")
@click.option("--only", type=click.Choice(["overhead", "throughput", "evaluation"]), multiple=True,
              help="Run only these parts (repeat); default: all three.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the figures here.")
def main(configs, cells, chunk, passes, only, seed, json_out):
    """Ray overhead and scaling figures (issue 17); see the module docstring."""
    try:
        import ray
    except ImportError:
        click.echo("error: Ray is not installed: pip install 'hwnas[distributed]'", err=True)
        sys.exit(1)
    parts = set(only or ("overhead", "throughput", "evaluation"))
    out: dict = {"ray": ray.__version__, "configs": configs, "cells": cells}

    def show(name, row):
        click.echo(f"{name}: {json.dumps(row)}", nl=True)
        out.setdefault(name, []).append(row)
        if json_out:  # after every part, so a run cut short keeps what it measured
            Path(json_out).write_text(json.dumps(out, indent=2))

    if parts & {"overhead", "throughput"}:
        _profile(ray, None, 4, seed + 1, passes)  # warm-up: first-time imports and caches of this process
        single = _profile(ray, None, configs, seed, passes) if "overhead" in parts else None
        one = _profile(ray, 1, configs, seed, passes)
        if single:
            show("profile", single)
        show("profile", one)
        if single:
            out["overhead_pct"] = round(100 * (one["s_per_config"] / single["s_per_config"] - 1), 1)
            click.echo(f"overhead of Ray per configuration: {out['overhead_pct']:+.1f}% (target <= +5%)")
        if "throughput" in parts:
            two = _profile(ray, 2, configs, seed, passes)
            show("profile", two)
            out["throughput_scaling"] = round(two["configs_per_min"] / one["configs_per_min"], 2)
            click.echo(f"throughput, two device actors vs one: {out['throughput_scaling']:.2f}x (target >= 1.8x)")
    if "evaluation" in parts:
        e1 = _evaluation(ray, cells, 1, chunk)
        show("evaluation", e1)
        e2 = _evaluation(ray, cells, 2, chunk)
        show("evaluation", e2)
        out["evaluation_scaling"] = round(e2["cells_per_s"] / e1["cells_per_s"], 2)
        click.echo(f"proxy scoring, two workers vs one: {out['evaluation_scaling']:.2f}x (target >= 1.8x)")
    if json_out:
        Path(json_out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
